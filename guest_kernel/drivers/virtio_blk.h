/*
 * virtio_blk.h - block devices on the lguest bus (ABI §12.2): vda, vdb, ... in device-page order.
 *
 * A request is one chain: the 24-byte out header (type, ioprio, sector, id), the data buffers
 * (device-readable for a write, device-writable for a read), and a 1-byte device-writable
 * status.  The Host returns it with used.len = bytes it wrote (status byte included).
 */
#ifndef DRIVERS_VIRTIO_BLK_H
#define DRIVERS_VIRTIO_BLK_H

#include "kernel.h"

#define SECTOR_SIZE		512

#define VIRTIO_BLK_T_IN		0		/* read */
#define VIRTIO_BLK_T_OUT	1		/* write */
#define VIRTIO_BLK_T_SCSI_CMD	2		/* packet command */
#define VIRTIO_BLK_T_BARRIER	0x80000000	/* flag: order around this request */

#define VIRTIO_BLK_S_OK		0
#define VIRTIO_BLK_S_IOERR	1
#define VIRTIO_BLK_S_UNSUPP	2

/* ABI §10.2: block config fields. */
#define VIRTIO_CONFIG_BLK_F		0x40	/* feature bitmap */
#define VIRTIO_CONFIG_BLK_F_CAPACITY	0x41	/* u64 sectors */
#define VIRTIO_CONFIG_BLK_F_SIZE_MAX	0x42	/* u32 bytes per segment */
#define VIRTIO_CONFIG_BLK_F_SEG_MAX	0x43	/* u32 segments per request */
#define VIRTIO_BLK_F_BARRIER		1

/* Data segments per request we ever build (and the default without SEG_MAX). */
#define VIRTBLK_MAX_SEGS	32
/* Ticks a request may take before we give up on it (5 s of guest time). */
#define VIRTBLK_TIMEOUT		500

struct virtio_blk_outhdr {
	u32 type;
	u32 ioprio;
	u64 sector;
	u64 id;
};
_Static_assert(sizeof(struct virtio_blk_outhdr) == 24, "virtio_blk_outhdr is 24 bytes");

struct virtio_blk {
	struct lguest_device *dev;
	struct virtqueue *vq;
	char name[4];		/* "vda" */
	u64 capacity;		/* sectors */
	u32 seg_max;		/* data segments per request (SEG_MAX; we use at most
				 * VIRTBLK_MAX_SEGS) */
	u32 size_max;		/* bytes per segment, 0 = a page */
	bool barrier;		/* BARRIER feature accepted */
	u32 in_flight;
};

/* One request; it must stay in place (and in RAM) until done. */
struct virtblk_req {
	struct virtio_blk_outhdr out;
	u8 status;		/* written by the Host */
	volatile bool done;
	u32 len;		/* used.len */
};

unsigned int virtblk_count(void);
struct virtio_blk *virtblk_get(unsigned int n);
/* The disk called name[0..len) ("vdb"), or NULL. */
struct virtio_blk *virtblk_by_name(const char *name, size_t len);

/*
 * Queue a request for `bytes` of `data` (type may carry VIRTIO_BLK_T_BARRIER; data may be NULL
 * with bytes 0).  The buffer is cut into page-sized segments.  0, -EINVAL (too many segments)
 * or -ENOSPC (ring full).
 */
int virtblk_submit(struct virtio_blk *vb, struct virtblk_req *req, u32 type, u64 sector,
		   void *data, u32 bytes);
/* Wait for a submitted request: 0 when done (see req->status, req->len), or -ETIMEDOUT. */
int virtblk_wait(struct virtio_blk *vb, struct virtblk_req *req, u32 timeout);
/* Both, for one synchronous request. */
int virtblk_request(struct virtio_blk *vb, struct virtblk_req *req, u32 type, u64 sector,
		    void *data, u32 bytes);

const char *virtblk_status_name(u8 status);

#endif /* DRIVERS_VIRTIO_BLK_H */
