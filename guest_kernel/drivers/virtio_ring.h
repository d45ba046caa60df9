/*
 * virtio_ring.h - the 2.6.24 vring (ABI §11) and the virtqueue operations drivers use.
 *
 * A vring of `num` entries (a power of 2) lives in the pages the Launcher reserved for it:
 * the descriptor table at 0, the available ring (guest → Host) right after it, and the used
 * ring (Host → guest) on the next page boundary.  No event-index fields, no indirect
 * descriptors: this is the ring before either existed.
 */
#ifndef DRIVERS_VIRTIO_RING_H
#define DRIVERS_VIRTIO_RING_H

#include "kernel.h"

#define VRING_DESC_F_NEXT		1	/* the chain continues at .next */
#define VRING_DESC_F_WRITE		2	/* the device writes this buffer */
#define VRING_USED_F_NO_NOTIFY		1	/* Host: don't kick me */
#define VRING_AVAIL_F_NO_INTERRUPT	1	/* guest: don't interrupt me */

struct vring_desc {
	u64 addr;	/* guest-physical */
	u32 len;
	u16 flags;
	u16 next;
};

struct vring_avail {
	u16 flags;
	u16 idx;	/* free-running */
	u16 ring[];
};

struct vring_used_elem {
	u32 id;		/* head of the returned chain */
	u32 len;	/* bytes written into its WRITE buffers */
};

struct vring_used {
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[];
};

_Static_assert(sizeof(struct vring_desc) == 16, "vring_desc is 16 bytes");
_Static_assert(sizeof(struct vring_used_elem) == 8, "vring_used_elem is 8 bytes");
_Static_assert(offsetof(struct vring_avail, ring) == 4, "avail.ring at 4");
_Static_assert(offsetof(struct vring_used, ring) == 4, "used.ring at 4");

struct vring {
	unsigned int num;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
};

/* ABI §11.2: bytes a ring of num entries occupies (page-aligned used ring). */
static inline u32 vring_size(unsigned int num)
{
	return PAGE_ALIGN(16 * num + 4 + 2 * num) + 4 + 8 * num;
}

static inline void vring_init(struct vring *vr, unsigned int num, void *pages)
{
	vr->num = num;
	vr->desc = pages;
	vr->avail = (struct vring_avail *)((u8 *)pages + 16 * num);
	vr->used = (struct vring_used *)((u8 *)pages + PAGE_ALIGN(16 * num + 4 + 2 * num));
}

/* The largest ring we accept: one page holds a virtqueue and its token array. */
#define VRING_MAX_NUM	512

/* One buffer of a request, as a kernel virtual address in the RAM mapping (scatterlist). */
struct vbuf {
	void *addr;
	u32 len;
};

struct virtqueue;
/* Called from the queue's interrupt when used buffers arrived; false = "no more interrupts
 * for now" (NO_INTERRUPT stays set until the driver calls vring_enable_cb). */
typedef bool (*vq_callback_t)(struct virtqueue *vq);

struct virtqueue {
	struct vring vring;
	vq_callback_t callback;
	void (*notify)(struct virtqueue *vq);	/* the bus's kick */
	void *priv;				/* the driver's */
	void *bus_priv;				/* the bus's (config, mapping) */
	const char *name;
	unsigned int num_free;			/* descriptors on the free list */
	unsigned int free_head;			/* free list, threaded through desc.next */
	unsigned int num_added;			/* heads added since the last kick */
	u16 last_used_idx;			/* our cursor into used.ring */
	bool broken;				/* the Host broke a rule: stop using the ring */
	void **data;				/* token per head, NULL = not in flight */
};

/*
 * A virtqueue over the ring at `pages` (already mapped).  Queues without a callback get
 * NO_INTERRUPT permanently, as 2.6.24's console queues.  NULL if num is not a power of 2 or
 * out of memory.
 */
struct virtqueue *vring_new_virtqueue(unsigned int num, void *pages, const char *name,
				      void (*notify)(struct virtqueue *), vq_callback_t callback);
void vring_del_virtqueue(struct virtqueue *vq);

/* Queue a chain of `out` device-readable then `in` device-writable buffers, with a non-NULL
 * token returned by vring_get_buf.  0, or -ENOSPC (after kicking, so the Host makes room). */
int vring_add_buf(struct virtqueue *vq, const struct vbuf *sg, unsigned int out,
		  unsigned int in, void *data);
/* Publish what was added (avail.idx) and notify the Host unless it said NO_NOTIFY. */
void vring_kick(struct virtqueue *vq);
/* The next used chain's token and the bytes the Host wrote; NULL if none (or broken). */
void *vring_get_buf(struct virtqueue *vq, u32 *len);
/* Are there used chains we have not taken? */
bool vring_more_used(const struct virtqueue *vq);
/* NO_INTERRUPT on / off; enable returns false if used chains arrived meanwhile. */
void vring_disable_cb(struct virtqueue *vq);
bool vring_enable_cb(struct virtqueue *vq);
/* The interrupt handler every queue's IRQ runs (dev is the virtqueue). */
void vring_interrupt(unsigned int irq, void *dev);

#endif /* DRIVERS_VIRTIO_RING_H */
