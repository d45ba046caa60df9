/*
 * devtest.c - helpers for the device programs (devtest.h).
 */
#include "devtest.h"

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

u64 cmdline_u64(const char *key, u64 dflt)
{
	const char *v;
	size_t len, i = 0;
	unsigned int base = 10;
	u64 n = 0;

	if (!cmdline_get(key, &v, &len) || len == 0)
		return dflt;
	if (len > 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
		base = 16;
		i = 2;
	}
	for (; i < len; i++) {
		int d = hex_digit(v[i]);

		if (d < 0 || (unsigned int)d >= base)
			return dflt;
		n = n * base + d;
	}
	return n;
}

u32 cmdline_u32(const char *key, u32 dflt)
{
	u64 n = cmdline_u64(key, dflt);

	return n > 0xFFFFFFFFULL ? dflt : (u32)n;
}

bool cmdline_mac(const char *key, u8 mac[6])
{
	const char *v;
	size_t len;
	u8 out[6];
	unsigned int i;

	if (!cmdline_get(key, &v, &len) || len != 17)
		return false;
	for (i = 0; i < 6; i++) {
		int hi = hex_digit(v[3 * i]), lo = hex_digit(v[3 * i + 1]);

		if (hi < 0 || lo < 0 || (i < 5 && v[3 * i + 2] != ':'))
			return false;
		out[i] = hi << 4 | lo;
	}
	memcpy(mac, out, 6);
	return true;
}

u32 crc32_update(u32 crc, const void *data, size_t len)
{
	static u32 table[256];
	const u8 *p = data;

	if (!table[1]) {
		u32 i, k, c;

		for (i = 0; i < 256; i++) {
			for (c = i, k = 0; k < 8; k++)
				c = c & 1 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
			table[i] = c;
		}
	}
	crc = ~crc;
	while (len--)
		crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
	return ~crc;
}

u32 test_frame_len(u8 kind, u32 seq)
{
	if (kind == FRAME_STOP)
		return 60;
	return seq % 4 == 1 ? 1514 : 60 + (97 * seq) % 1400;
}

u32 test_frame(u8 *frame, const u8 dst[6], const u8 src[6], u8 kind, u32 seq)
{
	u32 len = test_frame_len(kind, seq), j;

	memcpy(frame, dst, 6);
	memcpy(frame + 6, src, 6);
	frame[12] = TEST_ETHERTYPE >> 8;
	frame[13] = TEST_ETHERTYPE & 0xFF;
	memcpy(frame + 14, "LGEMU", 5);
	frame[19] = kind;
	frame[20] = seq >> 24;
	frame[21] = seq >> 16;
	frame[22] = seq >> 8;
	frame[23] = seq;
	for (j = TEST_FRAME_HLEN; j < len; j++)
		frame[j] = (j + 13 * seq) & 0xFF;
	return len;
}

bool test_frame_parse(const u8 *frame, u32 len, u8 *kind, u32 *seq)
{
	if (len < TEST_FRAME_HLEN || frame[12] != (TEST_ETHERTYPE >> 8) ||
	    frame[13] != (TEST_ETHERTYPE & 0xFF) || memcmp(frame + 14, "LGEMU", 5))
		return false;
	*kind = frame[19];
	*seq = (u32)frame[20] << 24 | (u32)frame[21] << 16 | (u32)frame[22] << 8 | frame[23];
	return true;
}
