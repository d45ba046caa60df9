/*
 * virtio_ring.c - the guest half of a 2.6.24 vring (drivers/virtio/virtio_ring.c), ABI §11.3.
 *
 * Free descriptors form a list threaded through desc.next, starting at free_head; the ring
 * memory itself is never cleared (the Launcher hands out zeroed pages).  Adding a buffer takes
 * out+in descriptors off the list, fills them (all device-readable first, then device-
 * writable), and writes the head into the next avail.ring slot.  Kicking publishes the new
 * avail.idx and notifies the Host unless it set NO_NOTIFY.  The Host returns chains through
 * the used ring; taking one puts its descriptors back on the free list.
 *
 * The Host is trusted to follow the protocol, but a used entry naming a descriptor that is not
 * a head in flight, or a used index that jumps by more than the ring size, marks the queue
 * broken (2.6.24's BAD_RING) rather than corrupting the free list.
 *
 * One CPU and a strongly ordered x86: the memory barriers of Linux are compiler barriers here.
 */
#include "virtio_ring.h"
#include "errno.h"

#define BAD_RING(vq, fmt, ...)							\
	do {									\
		printk("virtio_ring %s: " fmt "\n", (vq)->name, ##__VA_ARGS__);	\
		(vq)->broken = true;						\
	} while (0)

/* Each virtqueue takes one page: the struct, then its token array. */
_Static_assert(sizeof(struct virtqueue) + VRING_MAX_NUM * sizeof(void *) <= PAGE_SIZE,
	       "a virtqueue and its tokens fit a page");

static void *free_vq_pages;	/* pages of deleted virtqueues, linked through their first word */

static void *vq_page_alloc(void)
{
	void *page = free_vq_pages;

	if (!page)
		return early_alloc_page();
	free_vq_pages = *(void **)page;
	memset(page, 0, PAGE_SIZE);
	return page;
}

struct virtqueue *vring_new_virtqueue(unsigned int num, void *pages, const char *name,
				      void (*notify)(struct virtqueue *), vq_callback_t callback)
{
	struct virtqueue *vq;
	unsigned int i;

	if (num == 0 || (num & (num - 1)) || num > VRING_MAX_NUM)
		return NULL;
	vq = vq_page_alloc();
	vq->data = (void **)(vq + 1);
	vring_init(&vq->vring, num, pages);
	vq->notify = notify;
	vq->callback = callback;
	vq->name = name;
	vq->num_free = num;
	vq->free_head = 0;
	if (!callback)
		vq->vring.avail->flags |= VRING_AVAIL_F_NO_INTERRUPT;
	for (i = 0; i < num - 1; i++)
		vq->vring.desc[i].next = i + 1;
	return vq;
}

void vring_del_virtqueue(struct virtqueue *vq)
{
	*(void **)vq = free_vq_pages;
	free_vq_pages = vq;
}

int vring_add_buf(struct virtqueue *vq, const struct vbuf *sg, unsigned int out,
		  unsigned int in, void *data)
{
	struct vring_desc *desc = vq->vring.desc;
	unsigned int i, n, head, prev = 0, slot;

	if (!data || out + in == 0 || out + in > vq->vring.num)
		panic("virtio_ring %s: bad add_buf (%u out, %u in, token %p)", vq->name, out, in,
		      data);
	if (vq->num_free < out + in) {
		/* As 2.6.24: notify even under NO_NOTIFY, so the Host frees some room. */
		if (out)
			vq->notify(vq);
		return -ENOSPC;
	}
	vq->num_free -= out + in;
	head = i = vq->free_head;
	for (n = 0; n < out + in; n++) {
		desc[i].flags = VRING_DESC_F_NEXT | (n >= out ? VRING_DESC_F_WRITE : 0);
		desc[i].addr = __pa(sg[n].addr);
		desc[i].len = sg[n].len;
		prev = i;
		i = desc[i].next;
	}
	desc[prev].flags &= ~VRING_DESC_F_NEXT;
	vq->free_head = i;
	vq->data[head] = data;
	/* The slot becomes visible to the Host only when kick moves avail.idx past it. */
	slot = (vq->vring.avail->idx + vq->num_added++) & (vq->vring.num - 1);
	vq->vring.avail->ring[slot] = head;
	return 0;
}

void vring_kick(struct virtqueue *vq)
{
	barrier();	/* descriptors and ring slots before the index that publishes them */
	WRITE_ONCE(vq->vring.avail->idx, vq->vring.avail->idx + vq->num_added);
	vq->num_added = 0;
	barrier();
	if (!(READ_ONCE(vq->vring.used->flags) & VRING_USED_F_NO_NOTIFY))
		vq->notify(vq);
}

/* Put a returned chain's descriptors back on the free list. */
static void detach_buf(struct virtqueue *vq, unsigned int head)
{
	struct vring_desc *desc = vq->vring.desc;
	unsigned int i = head, n = 1;

	vq->data[head] = NULL;
	while (desc[i].flags & VRING_DESC_F_NEXT) {
		i = desc[i].next;
		if (i >= vq->vring.num || ++n > vq->vring.num) {
			BAD_RING(vq, "chain from head %u is corrupt", head);
			return;
		}
	}
	desc[i].next = vq->free_head;
	vq->free_head = head;
	vq->num_free += n;
}

bool vring_more_used(const struct virtqueue *vq)
{
	return READ_ONCE(vq->vring.used->idx) != vq->last_used_idx;
}

void *vring_get_buf(struct virtqueue *vq, u32 *len)
{
	const struct vring_used_elem *e;
	u16 used_idx;
	u32 id;
	void *token;

	if (vq->broken || !vring_more_used(vq))
		return NULL;
	used_idx = READ_ONCE(vq->vring.used->idx);
	if ((u16)(used_idx - vq->last_used_idx) > vq->vring.num) {
		BAD_RING(vq, "used index jumped from %u to %u", vq->last_used_idx, used_idx);
		return NULL;
	}
	barrier();	/* the entry after the index that announced it */
	e = &vq->vring.used->ring[vq->last_used_idx & (vq->vring.num - 1)];
	id = READ_ONCE(e->id);
	*len = READ_ONCE(e->len);
	if (id >= vq->vring.num) {
		BAD_RING(vq, "id %u out of range", id);
		return NULL;
	}
	token = vq->data[id];
	if (!token) {
		BAD_RING(vq, "id %u is not a head", id);
		return NULL;
	}
	detach_buf(vq, id);
	vq->last_used_idx++;
	return token;
}

void vring_disable_cb(struct virtqueue *vq)
{
	vq->vring.avail->flags |= VRING_AVAIL_F_NO_INTERRUPT;
}

bool vring_enable_cb(struct virtqueue *vq)
{
	vq->vring.avail->flags &= ~VRING_AVAIL_F_NO_INTERRUPT;
	barrier();
	if (vring_more_used(vq)) {
		/* Something came in between: the caller must look again, not wait. */
		vq->vring.avail->flags |= VRING_AVAIL_F_NO_INTERRUPT;
		return false;
	}
	return true;
}

void vring_interrupt(unsigned int irq, void *dev)
{
	struct virtqueue *vq = dev;

	(void)irq;
	if (!vring_more_used(vq) || vq->broken)
		return;	/* a shared line: not ours */
	if (vq->callback && !vq->callback(vq))
		vq->vring.avail->flags |= VRING_AVAIL_F_NO_INTERRUPT;
}
