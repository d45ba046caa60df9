/*
 * virtio_console.c - 2.6.24's drivers/char/virtio_console.c for our console writer.
 *
 * Queue 0 is input, queue 1 output, both created without callbacks: NO_INTERRUPT is set on
 * both for good, output is synchronous and input is polled (ABI §12.1).
 *   - Output: each chunk the console writer hands us (at most 16 bytes, console.c) becomes one
 *     device-readable buffer; we kick and spin until the Host returns it, so the chunk may live
 *     on the caller's stack.  Probing switches the console from early_put_chars (NOTIFY on a
 *     plain address) to this path, and the first line through the vring says so.
 *   - Input: one page-sized device-writable buffer is posted (and the queue kicked, which is
 *     what tells the Launcher to read stdin).  When it comes back with len bytes we hand them
 *     out and post it again once all are consumed.  A buffer returned with 0 bytes is taken
 *     as the Host's end of input; 2.6.24 simply re-posted it, and so do we.
 */
#include "virtio_console.h"
#include "lguest_bus.h"
#include "errno.h"
#include "hcall.h"

/* How long output may wait for the Host to return a buffer before we give up on the vring.
 * The Launcher returns it before the guest runs on, so one check normally suffices. */
#define OUTPUT_SPIN_LIMIT	1000000

static struct virtqueue *in_vq, *out_vq;
static char *inbuf;		/* the one input page */
static char *in;		/* unread part of the returned input buffer */
static u32 in_len;
static bool input_ended;

bool virtcons_ready(void)
{
	return out_vq != NULL;
}

bool virtcons_input_ended(void)
{
	return input_ended;
}

static void add_inbuf(void)
{
	struct vbuf sg = { inbuf, PAGE_SIZE };

	if (vring_add_buf(in_vq, &sg, 0, 1, inbuf) == 0)
		vring_kick(in_vq);
}

static int put_chars(u32 vtermno, const char *buf, int count)
{
	struct vbuf sg = { (void *)buf, (u32)count };
	unsigned long flags = irq_save();
	u32 len, spins = 0;
	bool returned = false;

	(void)vtermno;
	if (vring_add_buf(out_vq, &sg, 1, 0, out_vq) == 0) {
		vring_kick(out_vq);
		while (!(returned = vring_get_buf(out_vq, &len) != NULL) &&
		       ++spins < OUTPUT_SPIN_LIMIT)
			barrier();
	}
	irq_restore(flags);
	if (!returned) {
		console_register(early_put_chars);
		printk("virtio console: output buffer not returned, back to the early console\n");
		return early_put_chars(vtermno, buf, count);
	}
	return count;
}

int virtcons_get_chars(char *buf, int count)
{
	unsigned long flags;
	u32 n;

	if (!in_vq || count <= 0)
		return 0;
	flags = irq_save();
	if (!in_len) {
		in = vring_get_buf(in_vq, &in_len);
		if (!in) {
			irq_restore(flags);
			return 0;
		}
		if (in_len == 0)
			input_ended = true;
		if (in_len > PAGE_SIZE)
			in_len = PAGE_SIZE;	/* the Host cannot have written more */
	}
	n = MIN((u32)count, in_len);
	memcpy(buf, in, n);
	in += n;
	in_len -= n;
	if (in_len == 0)
		add_inbuf();
	irq_restore(flags);
	return n;
}

static int virtcons_probe(struct lguest_device *dev)
{
	if (out_vq)
		return -EBUSY;	/* hvc0 is taken */
	in_vq = lg_find_vq(dev, "console.in", NULL);
	if (!in_vq)
		return -ENOENT;
	out_vq = lg_find_vq(dev, "console.out", NULL);
	if (!out_vq) {
		lg_del_vq(in_vq);
		in_vq = NULL;
		return -ENOENT;
	}
	inbuf = early_alloc_page();
	console_register(put_chars);
	printk("virtio console: switched to vring\n");
	add_inbuf();
	return 0;
}

const struct virtio_driver virtio_console_driver = {
	.name = "virtio_console",
	.device_type = VIRTIO_ID_CONSOLE,
	.probe = virtcons_probe,
};
