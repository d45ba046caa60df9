/*
 * mm.c - finding RAM and building our own page tables (2.6.24: setup_arch, paging_init).
 *
 * We boot on the Launcher's directory (ABI §1.3): RAM identity-mapped at 0, plus the alias of
 * the first 128 MiB at PAGE_OFFSET that lguest_entry made.  Like Linux we replace it with a
 * directory of our own, swapper_pg_dir, mapping all of RAM at PAGE_OFFSET and nothing below.
 */
#include "kernel.h"
#include "hcall.h"
#include "bootparam.h"

/* Kernel virtual space ends where the Switcher begins (reserve_mem, ABI §7.5): at most 1020 MiB
 * of RAM can be mapped, and PDE 1023 is never ours. */
#define MAX_MAPPED	(SWITCHER_ADDR - PAGE_OFFSET)

u32 swapper_pg_dir[1024] __attribute__((aligned(PAGE_SIZE), section(".bss..page_aligned")));

u64 ram_start, ram_size;	/* e820 entry 0, as the Launcher described it */
u32 ram_type;
static u32 map_start, map_end;	/* page-aligned physical range we map at PAGE_OFFSET */

/*
 * Early page allocator: hands out zeroed pages from the RAM after the kernel image, up to
 * whatever the Launcher still owns.  Its directory and PTE pages (which we are running on)
 * and the initrd sit at the top of RAM (ABI §1.3, §1.5); rather than trusting that layout we
 * stop below the lowest of them, reading the live directory.  Pages must also stay inside
 * the 128 MiB lguest_entry aliased, since we write them through PAGE_OFFSET.
 */
static u32 early_next, early_limit;	/* physical */

static void early_alloc_init(void)
{
	u32 launcher_pgdir = READ_ONCE(lguest_data.pgdir);
	/* The Launcher's directory is mapped 1:1 by itself (ABI §1.3): virtual = physical. */
	const u32 *pgd = (const u32 *)launcher_pgdir;
	u32 limit = map_end, i;

	if (launcher_pgdir < limit)
		limit = launcher_pgdir;
	for (i = 0; i < (PAGE_OFFSET >> 22); i++)	/* 768.. are our own aliases */
		if ((pgd[i] & _PAGE_PRESENT) && (pgd[i] & PAGE_MASK) < limit)
			limit = pgd[i] & PAGE_MASK;
	if (boot_params[BP_TYPE_OF_LOADER] && bp_u32(BP_RAMDISK_SIZE) &&
	    bp_u32(BP_RAMDISK_IMAGE) < limit)
		limit = bp_u32(BP_RAMDISK_IMAGE) & PAGE_MASK;
	if (limit > EARLY_MAP_SIZE)
		limit = EARLY_MAP_SIZE;
	early_next = PAGE_ALIGN(__pa(_end));
	early_limit = limit;
}

void *early_alloc_page(void)
{
	void *page;

	if (early_next >= early_limit || early_limit - early_next < PAGE_SIZE)
		panic("out of early memory at %#x (limit %#x)", early_next, early_limit);
	page = __va(early_next);
	early_next += PAGE_SIZE;
	memset(page, 0, PAGE_SIZE);
	return page;
}

/*
 * RAM is e820 entry 0 of the zero page, and only entry 0: that is all the Launcher writes
 * and all 2.6.24's lguest_memory_setup() reads (ABI §1.2).
 */
void memory_setup(void)
{
	struct e820entry e = bp_e820(0);
	u64 end = e.addr + e.size;

	ram_start = e.addr;
	ram_size = e.size;
	ram_type = e.type;
	if (e.type != E820_RAM || e.size == 0)
		panic("e820 entry 0 is not RAM (type %u, size %#llx)", e.type, e.size);
	if (e.addr >> 32)	/* (u32)e.addr below would wrap it to low memory */
		panic("e820 entry 0 starts above 4 GiB (%#llx)", e.addr);
	if (end > MAX_MAPPED)
		end = MAX_MAPPED;
	map_start = PAGE_ALIGN((u32)e.addr);
	map_end = (u32)end & PAGE_MASK;
	if (map_start > __pa(_text) || map_end < PAGE_ALIGN(__pa(_end)))
		panic("the kernel (%#lx-%#lx) is not inside RAM (%#llx-%#llx)",
		      __pa(_text), __pa(_end), e.addr, e.addr + e.size);
	early_alloc_init();
}

/*
 * Map [map_start, map_end) at PAGE_OFFSET, one PTE per page, PTE pages from the early
 * allocator.  Then LHCALL_NEW_PGTABLE makes it our address space (the Host takes the
 * physical address; it also plants its own PDE 1023 in it) and LHCALL_FLUSH_TLB(1) drops
 * every stale translation, kernel ones included.  The next instruction fetch already goes
 * through the new tables, so printing afterwards proves they work.
 */
void paging_init(void)
{
	u32 pa;

	for (pa = map_start; pa < map_end; pa += PAGE_SIZE) {
		u32 va = PAGE_OFFSET + pa;
		u32 *pde = &swapper_pg_dir[va >> 22];
		u32 *pt;

		if (!(*pde & _PAGE_PRESENT))
			*pde = __pa(early_alloc_page()) | _PAGE_TABLE;
		pt = __va(*pde & PAGE_MASK);
		pt[(va >> PAGE_SHIFT) & 1023] = pa | _PAGE_KERNEL;
	}
	hcall(LHCALL_NEW_PGTABLE, __pa(swapper_pg_dir), 0, 0);
	hcall(LHCALL_FLUSH_TLB, 1, 0, 0);
}
