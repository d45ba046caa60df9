/*
 * devtest.h - what the device programs (console_echo, blk_*, net_*) share: reading their
 * numeric and MAC-address options from the command line, CRC-32, and the test frame format
 * the network programs exchange.
 *
 * Options are "key=value" words on the command line; numbers are decimal or 0x-hex, and a
 * missing or malformed option takes its default (printed by each program, so a run says
 * what it did).
 */
#ifndef GUEST_DEVTEST_H
#define GUEST_DEVTEST_H

#include "kernel.h"

u64 cmdline_u64(const char *key, u64 dflt);
u32 cmdline_u32(const char *key, u32 dflt);
/* "aa:bb:cc:dd:ee:ff"; false (mac untouched) when absent or malformed. */
bool cmdline_mac(const char *key, u8 mac[6]);

/* CRC-32 as zlib.crc32 computes it (reflected 0xEDB88320, pre- and post-inverted):
 * crc = crc32_update(0, data, len) for one buffer; feed the result back to continue. */
u32 crc32_update(u32 crc, const void *data, size_t len);

/*
 * The test frame: Ethernet header (dst, src, type 0x88B5 - IEEE "local experimental"), then
 * "LGEMU", a kind byte, the sequence number (u32 big-endian), and filler byte j = (j + 13 *
 * seq) & 0xFF up to the frame's length: 1514 bytes when seq % 4 == 1, otherwise
 * 60 + (97 * seq) % 1400.  A stop frame is 60 bytes.  tests/test_devices_e2e.py builds the
 * same bytes.
 */
#define TEST_ETHERTYPE		0x88B5
#define TEST_FRAME_HLEN		24	/* Ethernet header + magic + kind + seq */
#define FRAME_PING		'P'	/* net_ping → net_echo, reflected back */
#define FRAME_STOP		'S'	/* net_ping → net_echo: reflect this one, then stop */
#define FRAME_DATA		'D'	/* net_send */

u32 test_frame_len(u8 kind, u32 seq);
u32 test_frame(u8 *frame, const u8 dst[6], const u8 src[6], u8 kind, u32 seq);
/* Is this one of our frames?  Then its kind and sequence number. */
bool test_frame_parse(const u8 *frame, u32 len, u8 *kind, u32 *seq);

#endif /* GUEST_DEVTEST_H */
