/*
 * net_test.c - "lgemu.test=net_echo", "net_ping" and "net_send": the virtio network driver
 * against the Host's network back ends (ABI §12.3).  All use eth0; frames are devtest.h's.
 *
 * net_echo   An echo responder: every frame received is sent back with its source address as
 *            the destination and eth0's address as the source (for a frame addressed to us,
 *            the two addresses swapped).  It prints "net_echo: eth0 <mac> ready" first, and
 *            stops after reflecting a stop frame ("PASS net_echo.stop"), or with a FAIL line
 *            after net.idle=TICKS (default 1000: 10 s of guest time) without a frame.
 * net_ping   Sends net.count=N ping frames (default 4) to net.peer=MAC (default broadcast),
 *            one at a time, and waits up to net.timeout=TICKS (default 100) for each echo,
 *            resending up to net.tries=N times (default 5): the peer may not be listening yet.
 *            An echo must come back to our address, carry the same sequence number and bytes,
 *            and come from the peer when the peer is not broadcast.  "PASS net_ping.echoes"
 *            when all came back, else FAIL with the count.  Then, unless net.stop=0, a stop
 *            frame, so a net_echo peer powers down too.
 * net_send   Sends net.count=N data frames (default 4) to net.peer and waits until the Host
 *            has returned every transmit buffer: for back ends that only record (pcap).
 */
#include "ktest.h"
#include "tests.h"
#include "devtest.h"
#include "../drivers/errno.h"
#include "../drivers/irq.h"
#include "../drivers/lguest_bus.h"
#include "../drivers/virtio_net.h"

static const u8 broadcast[ETH_ALEN] = { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF };
static u8 tx_frame[MAX_PACKET_LEN], rx_frame[MAX_PACKET_LEN];

static struct virtio_net *bring_up(const char *program)
{
	struct virtio_net *vi;

	ktest_begin(program);
	lguest_devices_init();
	vi = virtnet_get(0);
	if (!vi)
		fail(program, "no network device");
	return vi;
}

static void send_or_fail(struct virtio_net *vi, const char *name, u32 len)
{
	int err = virtnet_send(vi, tx_frame, len);

	if (err)
		fail(name, "send of %u bytes: error %d", len, err);
}

void test_net_echo(void)
{
	u32 idle = cmdline_u32("net.idle", 1000), echoed = 0, seq;
	struct virtio_net *vi = bring_up("net_echo");
	char mac[18];
	u8 kind;

	if (!vi)
		goto out;
	format_mac(mac, sizeof(mac), vi->mac);
	printk("net_echo: %s %s ready\n", vi->name, mac);
	for (;;) {
		int len = virtnet_recv(vi, rx_frame, sizeof(rx_frame), idle);

		if (len < 0) {
			fail("net_echo.stop", "no frame for %u ticks after %u echoed", idle, echoed);
			break;
		}
		memcpy(tx_frame, rx_frame, len);
		memcpy(tx_frame, rx_frame + ETH_ALEN, ETH_ALEN);
		memcpy(tx_frame + ETH_ALEN, vi->mac, ETH_ALEN);
		send_or_fail(vi, "net_echo.send", len);
		echoed++;
		if (test_frame_parse(rx_frame, len, &kind, &seq) && kind == FRAME_STOP) {
			printk("net_echo: stop frame after %u frames\n", echoed);
			pass("net_echo.stop");
			break;
		}
	}
	virtnet_tx_drain(vi, VIRTNET_TX_TIMEOUT);
	printk("net_echo: %u frames echoed, %u short frames dropped\n", echoed, vi->rx_short);
out:
	ktest_end();
}

/* Wait up to `timeout` ticks for the echo of tx_frame (kind, seq, len); count the others. */
static bool wait_echo(struct virtio_net *vi, const u8 *peer, u8 kind, u32 seq, u32 len,
		      u32 timeout, u32 *others)
{
	u32 deadline = jiffies + timeout;

	while (!time_reached(deadline)) {
		int got = virtnet_recv(vi, rx_frame, sizeof(rx_frame), deadline - jiffies);
		u8 k;
		u32 s;

		if (got < 0)
			break;
		if ((u32)got == len && test_frame_parse(rx_frame, got, &k, &s) && k == kind &&
		    s == seq && !memcmp(rx_frame, vi->mac, ETH_ALEN) &&
		    (!memcmp(peer, broadcast, ETH_ALEN) || !memcmp(rx_frame + ETH_ALEN, peer,
								     ETH_ALEN)) &&
		    !memcmp(rx_frame + 2 * ETH_ALEN, tx_frame + 2 * ETH_ALEN,
			    len - 2 * ETH_ALEN))
			return true;
		(*others)++;
	}
	return false;
}

/* Send the frame until its echo comes back or the tries run out; the try it took, or 0. */
static u32 ping_one(struct virtio_net *vi, const u8 *peer, u8 kind, u32 seq, u32 timeout,
		    u32 tries, u32 *sent, u32 *others)
{
	u32 len = test_frame(tx_frame, peer, vi->mac, kind, seq), t;

	for (t = 1; t <= tries; t++) {
		if (virtnet_send(vi, tx_frame, len))
			return 0;
		(*sent)++;
		if (wait_echo(vi, peer, kind, seq, len, timeout, others))
			return t;
	}
	return 0;
}

void test_net_ping(void)
{
	u32 count = cmdline_u32("net.count", 4), timeout = cmdline_u32("net.timeout", 100);
	u32 tries = cmdline_u32("net.tries", 5), stop = cmdline_u32("net.stop", 1);
	u32 seq, echoed = 0, sent = 0, others = 0, t;
	struct virtio_net *vi = bring_up("net_ping");
	char mac[18], peer_text[18];
	u8 peer[ETH_ALEN];

	if (!vi)
		goto out;
	memcpy(peer, broadcast, ETH_ALEN);
	cmdline_mac("net.peer", peer);
	format_mac(mac, sizeof(mac), vi->mac);
	format_mac(peer_text, sizeof(peer_text), peer);
	printk("net_ping: %s %s -> %s, %u frames\n", vi->name, mac, peer_text, count);
	for (seq = 0; seq < count; seq++) {
		t = ping_one(vi, peer, FRAME_PING, seq, timeout, tries, &sent, &others);
		if (t) {
			echoed++;
			printk("net_ping: seq %u: %u bytes echoed\n", seq,
			       test_frame_len(FRAME_PING, seq));
		} else {
			printk("net_ping: seq %u: no echo\n", seq);
		}
	}
	check(echoed == count, "net_ping.echoes", "%u of %u frames echoed", echoed, count);
	if (stop) {
		t = ping_one(vi, peer, FRAME_STOP, count, timeout, tries, &sent, &others);
		printk("net_ping: stop frame %s\n", t ? "echoed: the peer stopped" : "not echoed");
	}
	virtnet_tx_drain(vi, VIRTNET_TX_TIMEOUT);
	printk("net_ping: %u of %u frames echoed (%u sent, %u other frames)\n", echoed, count, sent,
	       others);
out:
	ktest_end();
}

void test_net_send(void)
{
	u32 count = cmdline_u32("net.count", 4), seq;
	struct virtio_net *vi = bring_up("net_send");
	u8 peer[ETH_ALEN];
	int err = 0;

	if (!vi)
		goto out;
	memcpy(peer, broadcast, ETH_ALEN);
	cmdline_mac("net.peer", peer);
	for (seq = 0; seq < count && !err; seq++)
		err = virtnet_send(vi, tx_frame, test_frame(tx_frame, peer, vi->mac, FRAME_DATA,
							    seq));
	if (!err)
		err = virtnet_tx_drain(vi, VIRTNET_TX_TIMEOUT);
	check(!err, "net_send.sent", "frame %u: error %d", seq - 1, err);
	printk("net_send: %u frames sent\n", (u32)vi->tx_frames);
out:
	ktest_end();
}
