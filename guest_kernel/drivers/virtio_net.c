/*
 * virtio_net.c - 2.6.24's drivers/net/virtio_net.c without a network stack around it.
 *
 * Probe: the MAC field (without one, 2.6.24 made up a random address; we make up a fixed
 * locally administered one, to stay deterministic), then the receive and transmit queues, and
 * then what virtnet_open did: fill the receive ring with buffers - an 8-byte header and 1514
 * bytes of frame, both device-writable, in one chain - and kick it once.
 *
 * Receive follows NAPI: the rx interrupt's callback returns false, so NO_INTERRUPT stays set
 * while we take frames off the used ring; each buffer goes straight back on the ring.  When the
 * ring is empty, vring_enable_cb turns interrupts back on - or reports that a frame slipped in
 * meanwhile - and only then do we halt.  Transmit copies the frame behind a zero header (no
 * offloads were negotiated) into one of a few transmit buffers; buffers the Host has returned
 * are reclaimed before each send, and a send with none free waits for the tx interrupt.
 */
#include "virtio_net.h"
#include "lguest_bus.h"
#include "errno.h"
#include "irq.h"

#define MAX_NETDEVS	8
#define TX_BUFS		16
#define MAX_RX_BUFS	64
#define NETBUF_SIZE	2048	/* two per page, neither crossing a page boundary */

struct netbuf {
	struct virtio_net_hdr hdr;
	u8 data[MAX_PACKET_LEN];
};
_Static_assert(sizeof(struct netbuf) <= NETBUF_SIZE, "netbuf fits its slot");

struct netdev_priv {
	struct netbuf *tx_free[TX_BUFS];
	unsigned int tx_nfree;
};

static struct virtio_net netdevs[MAX_NETDEVS];
static struct netdev_priv privs[MAX_NETDEVS];
static unsigned int nr_netdevs;

unsigned int virtnet_count(void)
{
	return nr_netdevs;
}

struct virtio_net *virtnet_get(unsigned int n)
{
	return n < nr_netdevs ? &netdevs[n] : NULL;
}

static struct netbuf *netbuf_alloc(void)
{
	static u8 *page;
	static u32 used = PAGE_SIZE;

	if (used == PAGE_SIZE) {
		page = early_alloc_page();
		used = 0;
	}
	used += NETBUF_SIZE;
	return (struct netbuf *)(page + used - NETBUF_SIZE);
}

static int post_rx(struct virtio_net *vi, struct netbuf *b)
{
	struct vbuf sg[2] = { { &b->hdr, sizeof(b->hdr) }, { b->data, MAX_PACKET_LEN } };

	return vring_add_buf(vi->rvq, sg, 0, 2, b);
}

/* skb_recv_done: stop rx interrupts until the poll loop has emptied the ring. */
static bool skb_recv_done(struct virtqueue *rvq)
{
	(void)rvq;
	return false;
}

/* skb_xmit_done: nothing to do here; senders reclaim buffers themselves. */
static bool skb_xmit_done(struct virtqueue *svq)
{
	(void)svq;
	return true;
}

static void tx_reclaim(struct virtio_net *vi)
{
	struct netdev_priv *p = &privs[vi - netdevs];
	unsigned long flags = irq_save();
	struct netbuf *b;
	u32 len;

	while ((b = vring_get_buf(vi->svq, &len)) != NULL)
		if (p->tx_nfree < TX_BUFS)
			p->tx_free[p->tx_nfree++] = b;
	irq_restore(flags);
}

int virtnet_send(struct virtio_net *vi, const void *frame, u32 len)
{
	struct netdev_priv *p = &privs[vi - netdevs];
	struct vbuf sg[2];
	struct netbuf *b;
	unsigned long flags;
	int err;

	if (len < ETH_HLEN || len > MAX_PACKET_LEN)
		return -EINVAL;
	tx_reclaim(vi);
	if (!p->tx_nfree) {
		if (!wait_event_timeout(vring_more_used(vi->svq), VIRTNET_TX_TIMEOUT))
			return -ETIMEDOUT;
		tx_reclaim(vi);
		if (!p->tx_nfree)
			return -EIO;	/* the ring is broken */
	}
	b = p->tx_free[--p->tx_nfree];
	memset(&b->hdr, 0, sizeof(b->hdr));
	memcpy(b->data, frame, len);
	sg[0] = (struct vbuf){ &b->hdr, sizeof(b->hdr) };
	sg[1] = (struct vbuf){ b->data, len };
	flags = irq_save();
	err = vring_add_buf(vi->svq, sg, 2, 0, b);
	if (!err)
		vring_kick(vi->svq);
	irq_restore(flags);
	if (err) {
		p->tx_free[p->tx_nfree++] = b;
		return err;
	}
	vi->tx_frames++;
	return 0;
}

static bool tx_all_back(struct virtio_net *vi)
{
	tx_reclaim(vi);
	return privs[vi - netdevs].tx_nfree == TX_BUFS;
}

int virtnet_tx_drain(struct virtio_net *vi, u32 timeout)
{
	return wait_event_timeout(tx_all_back(vi), timeout) ? 0 : -ETIMEDOUT;
}

int virtnet_recv(struct virtio_net *vi, void *frame, u32 max, u32 timeout)
{
	u32 deadline = READ_ONCE(jiffies) + timeout;

	for (;;) {
		unsigned long flags = irq_save();
		struct netbuf *b;
		u32 len;
		int got = -1;

		b = vring_get_buf(vi->rvq, &len);
		irq_restore(flags);
		if (b) {
			if (len < sizeof(b->hdr) + ETH_HLEN || len > sizeof(*b)) {
				vi->rx_short++;	/* 2.6.24: "short packet", dropped */
			} else {
				got = len - sizeof(b->hdr);
				memcpy(frame, b->data, MIN((u32)got, max));
				vi->rx_frames++;
			}
			flags = irq_save();
			if (post_rx(vi, b) == 0)
				vring_kick(vi->rvq);
			else
				vi->num_rx--;
			irq_restore(flags);
			if (got >= 0)
				return got;
			continue;
		}
		if (time_reached(deadline))
			return -ETIMEDOUT;
		/* Ring empty: re-enable the interrupt (false: a frame slipped in) and sleep. */
		wait_event_timeout(!vring_enable_cb(vi->rvq), deadline - READ_ONCE(jiffies));
	}
}

void format_mac(char *buf, size_t size, const u8 *mac)
{
	snprintf(buf, size, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3],
		 mac[4], mac[5]);
}

static int virtnet_probe(struct lguest_device *dev)
{
	struct virtio_net *vi;
	struct netdev_priv *p;
	unsigned int len, i, want;
	char mac[18];
	void *token;

	if (nr_netdevs == MAX_NETDEVS)
		return -ENOSPC;
	vi = &netdevs[nr_netdevs];
	p = &privs[nr_netdevs];
	vi->dev = dev;
	snprintf(vi->name, sizeof(vi->name), "eth%u", nr_netdevs);

	token = lg_find(dev, VIRTIO_CONFIG_NET_MAC_F, &len);
	if (token && len == ETH_ALEN) {
		lg_get(dev, token, vi->mac, ETH_ALEN);
	} else {
		static const u8 fallback[ETH_ALEN] = { 0x02, 0, 0, 0, 0, 0 };

		memcpy(vi->mac, fallback, ETH_ALEN);
		vi->mac[5] = nr_netdevs + 1;
	}
	vi->rvq = lg_find_vq(dev, "net.rx", skb_recv_done);
	if (!vi->rvq)
		return -ENOENT;
	vi->svq = lg_find_vq(dev, "net.tx", skb_xmit_done);
	if (!vi->svq) {
		lg_del_vq(vi->rvq);
		return -ENOENT;
	}
	vi->rvq->priv = vi->svq->priv = vi;
	for (p->tx_nfree = 0; p->tx_nfree < TX_BUFS; p->tx_nfree++)
		p->tx_free[p->tx_nfree] = netbuf_alloc();

	/* virtnet_open: fill the receive ring, then one kick. */
	want = MIN(vi->rvq->vring.num / 2, (unsigned int)MAX_RX_BUFS);
	for (i = 0; i < want && post_rx(vi, netbuf_alloc()) == 0; i++)
		vi->num_rx++;
	vring_kick(vi->rvq);
	if (!vi->num_rx) {
		printk("virtio_net %s: no receive buffer fits the ring\n", vi->name);
		lg_del_vq(vi->svq);
		lg_del_vq(vi->rvq);
		return -ENOMEM;
	}
	format_mac(mac, sizeof(mac), vi->mac);
	printk("virtio_net %s: MAC %s%s, %u receive buffers\n", vi->name, mac,
	       token && len == ETH_ALEN ? "" : " (no MAC field)", vi->num_rx);
	nr_netdevs++;
	return 0;
}

const struct virtio_driver virtio_net_driver = {
	.name = "virtio_net",
	.device_type = VIRTIO_ID_NET,
	.probe = virtnet_probe,
};
