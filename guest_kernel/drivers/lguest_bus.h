/*
 * lguest_bus.h - the lguest device bus of 2.6.24 (drivers/lguest/lguest_device.c), ABI §10.
 *
 * No PCI: the Launcher describes every device in one page right after the end of RAM
 * (max_pfn << 12).  Each descriptor is [type][config_len][status] followed by config fields
 * [type][len][bytes]; a type-0 descriptor ends the list.  A driver finds its config fields by
 * type (each lookup marks the field used by OR-ing 0x80 into its type, so the next lookup of the
 * same type finds the next field), reports progress in the status byte, and turns VIRTQUEUE
 * fields into virtqueues, in order.
 */
#ifndef DRIVERS_LGUEST_BUS_H
#define DRIVERS_LGUEST_BUS_H

#include "kernel.h"
#include "virtio_ring.h"

/* ABI §10.1: device types. */
#define VIRTIO_ID_NET		1
#define VIRTIO_ID_BLOCK		2
#define VIRTIO_ID_CONSOLE	3

/* ABI §10.2: config field types shared by every device (>= 0x40 are device-specific). */
#define VIRTIO_CONFIG_F_VIRTIO		0x01
#define VIRTIO_CONFIG_F_VIRTQUEUE	0x02
#define VIRTIO_CONFIG_FIELD_USED	0x80	/* OR-ed into a field's type once looked up */

/* ABI §10.4: status bits, OR-ed in. */
#define VIRTIO_CONFIG_S_ACKNOWLEDGE	1
#define VIRTIO_CONFIG_S_DRIVER		2
#define VIRTIO_CONFIG_S_DRIVER_OK	4
#define VIRTIO_CONFIG_S_FAILED		0x80

#define LGUEST_MAX_DEVICES		32

struct lguest_device_desc {
	u8 type;
	u8 config_len;
	u8 status;
	u8 config[];
} __attribute__((packed));
_Static_assert(sizeof(struct lguest_device_desc) == 3, "lguest_device_desc is 3 bytes");

/* ABI §10.3: the payload of a VIRTQUEUE field. */
struct lguest_vqconfig {
	u16 num;
	u16 irq;
	u32 pfn;
} __attribute__((packed));
_Static_assert(sizeof(struct lguest_vqconfig) == 8, "lguest_vqconfig is 8 bytes");

struct lguest_device;

/* A driver: which device type it takes, and its probe (0 = the device works). */
struct virtio_driver {
	const char *name;
	u8 device_type;
	int (*probe)(struct lguest_device *dev);
};

struct lguest_device {
	struct lguest_device_desc *desc;	/* in the mapped device page */
	unsigned int index;			/* position on the bus */
	const struct virtio_driver *driver;	/* set once probed successfully */
	void *priv;				/* the driver's */
};

/*
 * Map the device page, register every device (status ACKNOWLEDGE) and probe the drivers of
 * virtio_console.c, virtio_blk.c and virtio_net.c for them, in device-page order.  Also
 * brings up interrupts (irq_init).  Returns the number of devices; later calls just return it.
 */
unsigned int lguest_devices_init(void);

/* The n-th device on the bus (NULL past the end). */
struct lguest_device *lguest_device(unsigned int n);
const char *lguest_device_type_name(u8 type);

/* Config fields (ABI §10.2).  lg_find returns a token for lg_get/lg_set, or NULL. */
void *lg_find(struct lguest_device *dev, u8 type, unsigned int *len);
void lg_get(struct lguest_device *dev, const void *token, void *buf, unsigned int len);
void lg_set(struct lguest_device *dev, void *token, const void *buf, unsigned int len);
/* Find a field of exactly `len` bytes and copy it: 0, -ENOENT, or -EIO on a length mismatch. */
int virtio_config_buf(struct lguest_device *dev, u8 type, void *buf, unsigned int len);
/* Accept feature bit `bitnum` of a bitmap field if offered (2.6.24's range-check quirk kept). */
bool virtio_use_bit(struct lguest_device *dev, void *token, unsigned int len,
		    unsigned int bitnum);

u8 lg_get_status(struct lguest_device *dev);
void lg_set_status(struct lguest_device *dev, u8 status);

/*
 * The device's next virtqueue: consume its next VIRTQUEUE field, map the ring, build the
 * virtqueue and request its IRQ (vring_interrupt).  NULL on failure (the reason is printed).
 */
struct virtqueue *lg_find_vq(struct lguest_device *dev, const char *name,
			     vq_callback_t callback);
/* Undo lg_find_vq: free the IRQ, unmap the ring, drop the virtqueue. */
void lg_del_vq(struct virtqueue *vq);

#endif /* DRIVERS_LGUEST_BUS_H */
