/*
 * virtio_net.h - network devices on the lguest bus (ABI §12.3): eth0, eth1, ... in device-page
 * order.  Queue 0 receives, queue 1 transmits; every frame travels behind an 8-byte
 * virtio_net_hdr (2.6.24's, without hdr_len).
 */
#ifndef DRIVERS_VIRTIO_NET_H
#define DRIVERS_VIRTIO_NET_H

#include "kernel.h"

#define VIRTIO_CONFIG_NET_F	0x40	/* feature bitmap (we accept none) */
#define VIRTIO_CONFIG_NET_MAC_F	0x41	/* 6 bytes */

#define ETH_ALEN		6
#define ETH_HLEN		14
#define ETH_DATA_LEN		1500
#define MAX_PACKET_LEN		(ETH_HLEN + ETH_DATA_LEN)	/* 1514: what an rx buffer holds */

/* Ticks a transmit may wait for a free buffer (5 s of guest time). */
#define VIRTNET_TX_TIMEOUT	500

struct virtio_net_hdr {
	u8 flags;		/* NEEDS_CSUM = 1 */
	u8 gso_type;		/* NONE = 0 */
	u16 gso_size;
	u16 csum_start;
	u16 csum_offset;
};
_Static_assert(sizeof(struct virtio_net_hdr) == 8, "virtio_net_hdr is 8 bytes in 2.6.24");

struct virtio_net {
	struct lguest_device *dev;
	struct virtqueue *rvq, *svq;
	char name[6];		/* "eth0" */
	u8 mac[ETH_ALEN];
	unsigned int num_rx;	/* receive buffers posted */
	u32 rx_frames, rx_short, tx_frames;
};

unsigned int virtnet_count(void);
struct virtio_net *virtnet_get(unsigned int n);

/* Queue one Ethernet frame (ETH_HLEN ... MAX_PACKET_LEN bytes) and kick.  0, -EINVAL for a
 * bad length, -ETIMEDOUT if no transmit buffer came back in time. */
int virtnet_send(struct virtio_net *vi, const void *frame, u32 len);

/* Wait up to `timeout` ticks for a received frame; copies at most `max` bytes of it to
 * `frame` and returns its length, or -ETIMEDOUT.  Short frames (< ETH_HLEN) are dropped. */
int virtnet_recv(struct virtio_net *vi, void *frame, u32 max, u32 timeout);

/* Wait until the Host has returned every transmitted frame: 0 or -ETIMEDOUT. */
int virtnet_tx_drain(struct virtio_net *vi, u32 timeout);

/* "aa:bb:cc:dd:ee:ff" (buf: at least 18 bytes). */
void format_mac(char *buf, size_t size, const u8 *mac);

#endif /* DRIVERS_VIRTIO_NET_H */
