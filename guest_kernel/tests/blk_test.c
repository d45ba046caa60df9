/*
 * blk_test.c - "lgemu.test=blk_read" and "lgemu.test=blk_write": the virtio block driver
 * against the Host's disks (ABI §12.2).
 *
 * blk_read reads every disk (vda, vdb, ...) from sector blk.sector (default 0) for blk.sectors
 * sectors (default: the whole disk, at most 2048 sectors; clipped to the capacity), keeping up
 * to four 32 KiB requests in flight, and prints the CRC-32 of the bytes - what zlib.crc32
 * gives for the same range of the image file:
 *
 *	blk_read vda: 2048 sectors from 0: crc32 1c291ca3
 *
 * blk_write works on one disk, blk.dev (default vda): it writes blk.count sectors (default 8)
 * at blk.sector (default 1) with a recognizable pattern - each 512-byte sector is 16 lines
 * "LGEMU s=<sector, 8 hex digits> k=<line, 2 hex digits>" padded with '.' to 31 bytes plus
 * "\n" - reads them back and compares.  Then the corners of the protocol:
 *   barrier        the first pattern sector written again with the BARRIER flag: OK
 *   scsi_cmd       a SCSI_CMD request (no data): UNSUPP
 *   write_past_end one sector at the capacity: refused (any status but OK)
 *   write_across_end  two sectors, the last one of the disk and the one after: refused
 *   read_past_end  one sector at the capacity: IOERR, or OK with no data (the Launcher's EOF)
 * Every case prints PASS/FAIL with the status byte and used.len it got.
 */
#include "ktest.h"
#include "tests.h"
#include "devtest.h"
#include "../drivers/errno.h"
#include "../drivers/lguest_bus.h"
#include "../drivers/virtio_blk.h"

#define CHUNK_PAGES	8				/* 32 KiB per request */
#define CHUNK_SECTORS	(CHUNK_PAGES * PAGE_SIZE / SECTOR_SIZE)
#define WINDOW		4				/* requests in flight */
#define READ_DEFAULT_MAX	2048
#define WRITE_MAX	(WINDOW * CHUNK_SECTORS)	/* what the buffers hold */

static u8 *buffers[WINDOW];			/* CHUNK_PAGES contiguous pages each */
static struct virtblk_req reqs[WINDOW];

static void alloc_buffers(void)
{
	unsigned int i, k;

	if (buffers[0])
		return;
	/* Consecutive early pages are physically and virtually contiguous. */
	for (i = 0; i < WINDOW; i++)
		for (k = 0; k < CHUNK_PAGES; k++) {
			u8 *page = early_alloc_page();

			if (k == 0)
				buffers[i] = page;
		}
}

static bool bring_up(const char *program)
{
	ktest_begin(program);
	lguest_devices_init();
	alloc_buffers();
	if (!virtblk_count()) {
		fail(program, "no block devices");
		return false;
	}
	return true;
}

static u32 req_data_bytes(const struct virtblk_req *req)
{
	return req->len ? req->len - 1 : 0;
}

/* Read [start, start + count) of one disk with WINDOW requests in flight, in order. */
static void read_disk(struct virtio_blk *vb, u64 start, u64 count)
{
	char name[24];
	u64 next = start, end = start + count, done = start;
	u32 sectors[WINDOW], crc = 0;
	unsigned int slot, oldest = 0, busy = 0;
	const char *problem = NULL;
	u8 status = 0;
	u32 got = 0;
	int err = 0;

	snprintf(name, sizeof(name), "blk_read.%s", vb->name);
	/* Fill the window, then: wait for the oldest, checksum it, reuse its slot. */
	while (done < end && !problem) {
		while (busy < WINDOW && next < end) {
			slot = (oldest + busy) % WINDOW;
			sectors[slot] = MIN(end - next, (u64)CHUNK_SECTORS);
			err = virtblk_submit(vb, &reqs[slot], VIRTIO_BLK_T_IN, next, buffers[slot],
					     sectors[slot] * SECTOR_SIZE);
			if (err) {
				problem = "submit failed";
				break;
			}
			next += sectors[slot];
			busy++;
		}
		if (!busy)
			break;
		err = virtblk_wait(vb, &reqs[oldest], VIRTBLK_TIMEOUT);
		status = reqs[oldest].status;
		got = req_data_bytes(&reqs[oldest]);
		if (err) {
			problem = "no completion";
		} else if (status != VIRTIO_BLK_S_OK || got != sectors[oldest] * SECTOR_SIZE) {
			problem = "bad completion";
		} else {
			crc = crc32_update(crc, buffers[oldest], got);
			done += sectors[oldest];
		}
		oldest = (oldest + 1) % WINDOW;
		busy--;
	}
	/* Let anything still in flight finish before its buffer is reused. */
	for (; busy; busy--, oldest = (oldest + 1) % WINDOW)
		virtblk_wait(vb, &reqs[oldest], VIRTBLK_TIMEOUT);
	if (problem) {
		fail(name, "%s at sector %llu: error %d, status %u (%s), %u data bytes", problem,
		     done, err, status, virtblk_status_name(status), got);
		return;
	}
	printk("blk_read %s: %llu sectors from %llu: crc32 %08x\n", vb->name, count, start, crc);
	pass(name);
}

void test_blk_read(void)
{
	u64 start = cmdline_u64("blk.sector", 0);
	u64 want = cmdline_u64("blk.sectors", 0);
	unsigned int i;

	if (!bring_up("blk_read"))
		goto out;
	for (i = 0; i < virtblk_count(); i++) {
		struct virtio_blk *vb = virtblk_get(i);
		u64 count = want ? want : MIN(vb->capacity, (u64)READ_DEFAULT_MAX);

		if (start >= vb->capacity)
			count = 0;
		else if (count > vb->capacity - start)
			count = vb->capacity - start;
		read_disk(vb, start, count);
	}
out:
	ktest_end();
}

static void fill_pattern(u8 *buf, u64 sector, u32 count)
{
	u32 s, k;

	for (s = 0; s < count; s++)
		for (k = 0; k < SECTOR_SIZE / 32; k++) {
			char *rec = (char *)buf + s * SECTOR_SIZE + k * 32;
			int n = snprintf(rec, 32, "LGEMU s=%08llx k=%02x", sector + s, k);

			memset(rec + n, '.', 31 - n);
			rec[31] = '\n';
		}
}

/*
 * One request of count sectors (count <= WRITE_MAX) spread over the buffers, which are
 * consecutive pages: one contiguous area, so a request may cover several of them.
 */
static int blk_io(struct virtio_blk *vb, u32 type, u64 sector, u32 count, u8 *buf)
{
	return virtblk_request(vb, &reqs[0], type, sector, buf, count * SECTOR_SIZE);
}

static void report(const char *name, bool ok, int err, const char *what)
{
	check(ok, name, "%s: error %d, status %u (%s), used.len %u", what, err, reqs[0].status,
	      virtblk_status_name(reqs[0].status), reqs[0].len);
	printk("blk_write: %s: status %u (%s), used.len %u\n", name + sizeof("blk_write"),
	       reqs[0].status, virtblk_status_name(reqs[0].status), reqs[0].len);
}

void test_blk_write(void)
{
	u64 sector = cmdline_u64("blk.sector", 1);
	u32 count = cmdline_u32("blk.count", 8);
	const char *devname = "vda";
	size_t devlen = 3;
	struct virtio_blk *vb;
	u8 *buf, *pattern;
	u32 i, bad;
	int err;

	if (!bring_up("blk_write"))
		goto out;
	cmdline_get("blk.dev", &devname, &devlen);
	vb = virtblk_by_name(devname, devlen);
	if (!vb) {
		fail("blk_write", "no disk %.*s", (int)devlen, devname);
		goto out;
	}
	if (count == 0 || count > (u32)(WRITE_MAX / 2)) {
		fail("blk_write", "blk.count=%u: must be 1 to %u", count, (u32)(WRITE_MAX / 2));
		goto out;
	}
	/* First half of the buffer area: what we write; second half: what we read back. */
	pattern = buffers[0];
	buf = buffers[0] + WRITE_MAX / 2 * SECTOR_SIZE;
	printk("blk_write %s: %u sectors at %llu\n", vb->name, count, sector);

	fill_pattern(pattern, sector, count);
	err = blk_io(vb, VIRTIO_BLK_T_OUT, sector, count, pattern);
	report("blk_write.write", !err && reqs[0].status == VIRTIO_BLK_S_OK, err, "write");

	memset(buf, 0, count * SECTOR_SIZE);
	err = blk_io(vb, VIRTIO_BLK_T_IN, sector, count, buf);
	for (i = 0, bad = count * SECTOR_SIZE; i < count * SECTOR_SIZE; i++)
		if (buf[i] != pattern[i]) {
			bad = i;
			break;
		}
	check(!err && reqs[0].status == VIRTIO_BLK_S_OK && bad == count * SECTOR_SIZE,
	      "blk_write.readback", "error %d, status %u (%s), first difference at byte %u",
	      err, reqs[0].status, virtblk_status_name(reqs[0].status), bad);

	err = blk_io(vb, VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_BARRIER, sector, 1, pattern);
	report("blk_write.barrier", !err && reqs[0].status == VIRTIO_BLK_S_OK, err,
	       "barrier write");

	err = virtblk_request(vb, &reqs[0], VIRTIO_BLK_T_SCSI_CMD, 0, NULL, 0);
	report("blk_write.scsi_cmd", !err && reqs[0].status == VIRTIO_BLK_S_UNSUPP, err,
	       "SCSI_CMD, want UNSUPP");

	fill_pattern(buf, vb->capacity, 2);
	err = blk_io(vb, VIRTIO_BLK_T_OUT, vb->capacity, 1, buf);
	report("blk_write.write_past_end", !err && reqs[0].status != VIRTIO_BLK_S_OK, err,
	       "write at the capacity, want it refused");

	if (vb->capacity) {
		fill_pattern(buf, vb->capacity - 1, 2);
		err = blk_io(vb, VIRTIO_BLK_T_OUT, vb->capacity - 1, 2, buf);
		report("blk_write.write_across_end", !err && reqs[0].status != VIRTIO_BLK_S_OK,
		       err, "write over the last sector and past it, want it refused");
	}

	err = blk_io(vb, VIRTIO_BLK_T_IN, vb->capacity, 1, buf);
	report("blk_write.read_past_end",
	       !err && (reqs[0].status == VIRTIO_BLK_S_IOERR ||
			(reqs[0].status == VIRTIO_BLK_S_OK && reqs[0].len == 1)),
	       err, "read at the capacity, want IOERR or no data");
out:
	ktest_end();
}
