/*
 * lguest_bus.c - finding devices on the lguest bus and giving drivers their config and
 * virtqueues (2.6.24's lguest_device.c and the bits of virtio.c and virtio_config.h it needs).
 *
 * lguest_devices_init maps the page at max_pfn << 12 - the end of e820 entry 0, the only RAM
 * the Launcher describes (ABI §1.4) - and walks its descriptors.  Each device is registered the way
 * register_virtio_device does it (status ACKNOWLEDGE), then offered to the driver for its type
 * (DRIVER before the probe, DRIVER_OK or FAILED after).  A virtqueue is a VIRTQUEUE field
 * (num, irq, pfn): its ring is mapped with ioremap, and its IRQ runs vring_interrupt.  A kick
 * is LHCALL_NOTIFY with the ring's address, pfn << 12, which is how the Launcher tells a kick
 * from an early-console string (ABI §10.5).
 *
 * The descriptors come from the Host; a descriptor or field running past the page or its
 * config is treated as the end of the list (2.6.24 trusted the Launcher here).
 */
#include "lguest_bus.h"
#include "errno.h"
#include "ioremap.h"
#include "irq.h"
#include "hcall.h"

extern const struct virtio_driver virtio_net_driver, virtio_blk_driver, virtio_console_driver;

static const struct virtio_driver *const virtio_drivers[] = {
	&virtio_net_driver, &virtio_blk_driver, &virtio_console_driver,
};

/* What the bus keeps per virtqueue. */
struct lguest_vq_info {
	struct lguest_vqconfig config;
	void *pages;
	unsigned int npages;
	bool in_use;
};

static struct lguest_device devices[LGUEST_MAX_DEVICES];
static struct lguest_vq_info vq_info[LGUEST_IRQS];
static unsigned int nr_devices;
static bool bus_ready;

const char *lguest_device_type_name(u8 type)
{
	switch (type) {
	case VIRTIO_ID_NET:
		return "net";
	case VIRTIO_ID_BLOCK:
		return "block";
	case VIRTIO_ID_CONSOLE:
		return "console";
	default:
		return "unknown";
	}
}

struct lguest_device *lguest_device(unsigned int n)
{
	return n < nr_devices ? &devices[n] : NULL;
}

void *lg_find(struct lguest_device *dev, u8 type, unsigned int *len)
{
	struct lguest_device_desc *d = dev->desc;
	unsigned int i, flen;

	for (i = 0; i + 2 <= d->config_len; i += 2 + flen) {
		flen = d->config[i + 1];
		if (i + 2 + flen > d->config_len)
			break;
		if (d->config[i] == type) {
			d->config[i] |= VIRTIO_CONFIG_FIELD_USED;
			*len = flen;
			return d->config + i + 2;
		}
	}
	return NULL;
}

void lg_get(struct lguest_device *dev, const void *token, void *buf, unsigned int len)
{
	(void)dev;
	memcpy(buf, token, len);
}

void lg_set(struct lguest_device *dev, void *token, const void *buf, unsigned int len)
{
	(void)dev;
	memcpy(token, buf, len);
}

int virtio_config_buf(struct lguest_device *dev, u8 type, void *buf, unsigned int len)
{
	unsigned int flen;
	void *token = lg_find(dev, type, &flen);

	if (!token)
		return -ENOENT;
	if (flen != len)
		return -EIO;
	lg_get(dev, token, buf, len);
	return 0;
}

/*
 * A feature bitmap: the first half of the bytes is what the Host offers, the second half what
 * we accept.  2.6.24 compared bitnum * 8 with len / 2, so only bit 0 of a short bitmap can
 * ever be accepted; we keep that, since the Host sees the result.
 */
bool virtio_use_bit(struct lguest_device *dev, void *token, unsigned int len,
		    unsigned int bitnum)
{
	u8 bits[64];

	if (!token || bitnum * 8 >= len / 2 || len > sizeof(bits))
		return false;
	lg_get(dev, token, bits, len);
	if (!(bits[bitnum / 8] & (1U << (bitnum % 8))))
		return false;
	bitnum += len * 8 / 2;
	bits[bitnum / 8] |= 1U << (bitnum % 8);
	lg_set(dev, token, bits, len);
	return true;
}

u8 lg_get_status(struct lguest_device *dev)
{
	return READ_ONCE(dev->desc->status);
}

void lg_set_status(struct lguest_device *dev, u8 status)
{
	WRITE_ONCE(dev->desc->status, status);
}

static void add_status(struct lguest_device *dev, u8 status)
{
	lg_set_status(dev, lg_get_status(dev) | status);
}

static void lg_notify(struct virtqueue *vq)
{
	const struct lguest_vq_info *lvq = vq->bus_priv;

	hcall(LHCALL_NOTIFY, lvq->config.pfn << PAGE_SHIFT, 0, 0);
}

struct virtqueue *lg_find_vq(struct lguest_device *dev, const char *name,
			     vq_callback_t callback)
{
	struct lguest_vq_info *lvq = NULL;
	struct virtqueue *vq;
	const char *why;
	unsigned int i;
	int err;

	for (i = 0; i < ARRAY_SIZE(vq_info) && !lvq; i++)
		if (!vq_info[i].in_use)
			lvq = &vq_info[i];
	if (!lvq) {
		printk("lguest bus: device %u: %s: too many virtqueues\n", dev->index, name);
		return NULL;
	}
	err = virtio_config_buf(dev, VIRTIO_CONFIG_F_VIRTQUEUE, &lvq->config,
				sizeof(lvq->config));
	if (err) {
		printk("lguest bus: device %u: %s: %s\n", dev->index, name,
		       err == -ENOENT ? "no VIRTQUEUE field left" : "VIRTQUEUE field is not 8 bytes");
		return NULL;
	}
	why = "ring address above 4 GiB";
	if (lvq->config.pfn >= (1U << (32 - PAGE_SHIFT)))
		goto fail;
	why = "ring size is not a power of 2 up to " STR(VRING_MAX_NUM);
	if (!lvq->config.num || (lvq->config.num & (lvq->config.num - 1)) ||
	    lvq->config.num > VRING_MAX_NUM)
		goto fail;
	lvq->npages = PAGE_ALIGN(vring_size(lvq->config.num)) >> PAGE_SHIFT;
	why = "cannot map the ring";
	lvq->pages = ioremap(lvq->config.pfn << PAGE_SHIFT, lvq->npages);
	if (!lvq->pages)
		goto fail;
	why = "out of memory";
	vq = vring_new_virtqueue(lvq->config.num, lvq->pages, name, lg_notify, callback);
	if (!vq) {
		iounmap(lvq->pages, lvq->npages);
		goto fail;
	}
	vq->bus_priv = lvq;
	if (request_irq(lvq->config.irq, vring_interrupt, vq)) {
		why = "no such IRQ";
		vring_del_virtqueue(vq);
		iounmap(lvq->pages, lvq->npages);
		goto fail;
	}
	lvq->in_use = true;
	return vq;
fail:
	printk("lguest bus: device %u: %s (num %u, irq %u, pfn %#x): %s\n", dev->index, name,
	       lvq->config.num, lvq->config.irq, lvq->config.pfn, why);
	return NULL;
}

void lg_del_vq(struct virtqueue *vq)
{
	struct lguest_vq_info *lvq = vq->bus_priv;

	free_irq(lvq->config.irq, vq);
	vring_del_virtqueue(vq);
	iounmap(lvq->pages, lvq->npages);
	lvq->in_use = false;
}

/* virtio_dev_probe: DRIVER, the probe, then DRIVER_OK or FAILED. */
static void probe_device(struct lguest_device *dev)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(virtio_drivers); i++) {
		const struct virtio_driver *drv = virtio_drivers[i];

		if (drv->device_type != dev->desc->type)
			continue;
		add_status(dev, VIRTIO_CONFIG_S_DRIVER);
		if (drv->probe(dev)) {
			add_status(dev, VIRTIO_CONFIG_S_FAILED);
		} else {
			dev->driver = drv;
			add_status(dev, VIRTIO_CONFIG_S_DRIVER_OK);
		}
		return;
	}
}

unsigned int lguest_devices_init(void)
{
	u64 end = ram_start + ram_size;
	u32 phys = (u32)(end >> PAGE_SHIFT) << PAGE_SHIFT;
	unsigned int off, i;
	u8 *page;

	if (bus_ready)
		return nr_devices;
	bus_ready = true;
	irq_init();
	if (end >> 32) {
		printk("lguest bus: no device page: RAM ends above 4 GiB\n");
		return 0;
	}
	page = ioremap(phys, 1);
	if (!page) {
		printk("lguest bus: cannot map the device page at %#x\n", phys);
		return 0;
	}
	printk("lguest bus: device page at %#x, mapped at %p\n", phys, page);
	for (off = 0; off + sizeof(struct lguest_device_desc) <= PAGE_SIZE;) {
		struct lguest_device_desc *d = (struct lguest_device_desc *)(page + off);

		if (d->type == 0)
			break;
		if (nr_devices == LGUEST_MAX_DEVICES) {
			printk("lguest bus: more than %u devices, ignoring the rest\n", nr_devices);
			break;
		}
		if (off + sizeof(*d) + d->config_len > PAGE_SIZE) {
			printk("lguest bus: device %u runs past the device page\n", nr_devices);
			break;
		}
		devices[nr_devices].desc = d;
		devices[nr_devices].index = nr_devices;
		add_status(&devices[nr_devices], VIRTIO_CONFIG_S_ACKNOWLEDGE);
		printk("lguest bus: device %u: %s (type %u), %u bytes of config\n", nr_devices,
		       lguest_device_type_name(d->type), d->type, d->config_len);
		nr_devices++;
		off += sizeof(*d) + d->config_len;
	}
	for (i = 0; i < nr_devices; i++)
		probe_device(&devices[i]);
	return nr_devices;
}
