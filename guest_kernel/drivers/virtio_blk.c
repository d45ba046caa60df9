/*
 * virtio_blk.c - 2.6.24's drivers/block/virtio_blk.c without the block layer around it.
 *
 * Probe (in 2.6.24's order): the one virtqueue, the BARRIER feature, CAPACITY (required: a
 * missing or wrong-sized field fails the device), then the optional SIZE_MAX and SEG_MAX.
 * Requests are built as virtio_blk's do_req built them - out header, data segments, status
 * byte - and completed from the queue's interrupt (blk_done), which takes every used chain.
 * Callers wait for completion by halting (wait_event_timeout), so a request never spins.
 */
#include "virtio_blk.h"
#include "lguest_bus.h"
#include "errno.h"
#include "irq.h"

#define MAX_DISKS	26	/* vda .. vdz */

static struct virtio_blk disks[MAX_DISKS];
static unsigned int nr_disks;
static u64 next_id;

unsigned int virtblk_count(void)
{
	return nr_disks;
}

struct virtio_blk *virtblk_get(unsigned int n)
{
	return n < nr_disks ? &disks[n] : NULL;
}

struct virtio_blk *virtblk_by_name(const char *name, size_t len)
{
	unsigned int i;

	for (i = 0; i < nr_disks; i++)
		if (strlen(disks[i].name) == len && !memcmp(disks[i].name, name, len))
			return &disks[i];
	return NULL;
}

const char *virtblk_status_name(u8 status)
{
	switch (status) {
	case VIRTIO_BLK_S_OK:
		return "OK";
	case VIRTIO_BLK_S_IOERR:
		return "IOERR";
	case VIRTIO_BLK_S_UNSUPP:
		return "UNSUPP";
	default:
		return "unknown";
	}
}

/* The queue's callback, from its interrupt: every returned request is done. */
static bool blk_done(struct virtqueue *vq)
{
	struct virtio_blk *vb = vq->priv;
	struct virtblk_req *req;
	u32 len;

	while ((req = vring_get_buf(vq, &len)) != NULL) {
		req->len = len;
		req->done = true;
		vb->in_flight--;
	}
	return true;
}

int virtblk_submit(struct virtio_blk *vb, struct virtblk_req *req, u32 type, u64 sector,
		   void *data, u32 bytes)
{
	struct vbuf sg[VIRTBLK_MAX_SEGS + 2];
	u32 seg_limit = vb->size_max && vb->size_max < PAGE_SIZE ? vb->size_max : PAGE_SIZE;
	unsigned int n = 0, out, in;
	u8 *p = data;
	unsigned long flags;
	int err;

	req->out.type = type;
	req->out.ioprio = 0;
	req->out.sector = sector;
	req->out.id = ++next_id;
	req->status = 0xFF;	/* not a status the Host may write: shows if it wrote none */
	req->done = false;
	req->len = 0;
	sg[n++] = (struct vbuf){ &req->out, sizeof(req->out) };
	while (bytes) {
		/* A segment never crosses a page: physically contiguous for any allocator. */
		u32 room = PAGE_SIZE - ((u32)p & (PAGE_SIZE - 1));
		u32 len = MIN(MIN(bytes, room), seg_limit);

		if (n - 1 == MIN(vb->seg_max, (u32)VIRTBLK_MAX_SEGS))
			return -EINVAL;
		sg[n++] = (struct vbuf){ p, len };
		p += len;
		bytes -= len;
	}
	sg[n++] = (struct vbuf){ &req->status, 1 };
	/* Writes and packet commands send their data; reads receive it before the status. */
	if ((type & ~VIRTIO_BLK_T_BARRIER) == VIRTIO_BLK_T_IN) {
		out = 1;
		in = n - 1;
	} else {
		out = n - 1;
		in = 1;
	}
	flags = irq_save();
	err = vring_add_buf(vb->vq, sg, out, in, req);
	if (!err) {
		vb->in_flight++;
		vring_kick(vb->vq);
	}
	irq_restore(flags);
	return err;
}

int virtblk_wait(struct virtio_blk *vb, struct virtblk_req *req, u32 timeout)
{
	(void)vb;
	return wait_event_timeout(req->done, timeout) ? 0 : -ETIMEDOUT;
}

int virtblk_request(struct virtio_blk *vb, struct virtblk_req *req, u32 type, u64 sector,
		    void *data, u32 bytes)
{
	int err = virtblk_submit(vb, req, type, sector, data, bytes);

	return err ? err : virtblk_wait(vb, req, VIRTBLK_TIMEOUT);
}

static int virtblk_probe(struct lguest_device *dev)
{
	struct virtio_blk *vb;
	unsigned int len;
	void *token;
	u32 v;
	int err;

	if (nr_disks == MAX_DISKS)
		return -ENOSPC;
	vb = &disks[nr_disks];
	vb->dev = dev;
	vb->name[0] = 'v';
	vb->name[1] = 'd';
	vb->name[2] = 'a' + nr_disks;
	vb->vq = lg_find_vq(dev, vb->name, blk_done);
	if (!vb->vq)
		return -ENOENT;
	vb->vq->priv = vb;

	token = lg_find(dev, VIRTIO_CONFIG_BLK_F, &len);
	vb->barrier = virtio_use_bit(dev, token, len, VIRTIO_BLK_F_BARRIER);

	err = virtio_config_buf(dev, VIRTIO_CONFIG_BLK_F_CAPACITY, &vb->capacity,
				sizeof(vb->capacity));
	if (err) {
		printk("virtio_blk: device %u: %s CAPACITY field\n", dev->index,
		       err == -ENOENT ? "no" : "bad");
		lg_del_vq(vb->vq);
		return err;
	}
	vb->size_max = 0;
	if (!virtio_config_buf(dev, VIRTIO_CONFIG_BLK_F_SIZE_MAX, &v, sizeof(v)))
		vb->size_max = v;
	vb->seg_max = VIRTBLK_MAX_SEGS;
	if (!virtio_config_buf(dev, VIRTIO_CONFIG_BLK_F_SEG_MAX, &v, sizeof(v)) && v)
		vb->seg_max = v;
	printk("virtio_blk %s: %llu sectors (%llu bytes), seg_max %u%s\n", vb->name,
	       vb->capacity, vb->capacity * SECTOR_SIZE, vb->seg_max,
	       vb->barrier ? ", barriers" : "");
	nr_disks++;
	return 0;
}

const struct virtio_driver virtio_blk_driver = {
	.name = "virtio_blk",
	.device_type = VIRTIO_ID_BLOCK,
	.probe = virtblk_probe,
};
