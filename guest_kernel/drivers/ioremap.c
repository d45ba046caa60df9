/*
 * ioremap.c - 2.6.24's ioremap for lguest: ordinary kernel PTEs in a vmalloc-style area.
 *
 * RAM is mapped at PAGE_OFFSET by paging_init (mm.c); the device page and the vrings lie
 * above RAM and are mapped nowhere.  Like Linux we hand out virtual space from VMALLOC_START
 * (the end of the RAM mapping plus an 8 MiB gap, rounded up to 8 MiB) with a guard page after
 * each area, and fill in plain kernel PTEs (present, writable, accessed, dirty: no PWT, which
 * the Host refuses, ABI §7.1).  These are live page tables, so every change is announced as
 * 2.6.24's paravirt ops did: a new page table with LHCALL_SET_PMD (set_pmd), each PTE with
 * LHCALL_SET_PTE(pgdir, vaddr, pte) (set_pte_at for init_mm).
 */
#include "ioremap.h"
#include "hcall.h"

#define VMALLOC_OFFSET	(8UL << 20)
/* Stay well below the Switcher's PDE 1023 (reserve_mem, ABI §7.5). */
#define VMALLOC_END	(SWITCHER_ADDR - (4UL << 20))

static u32 vmalloc_next;

static u32 vmalloc_start(void)
{
	u64 ram_end = ram_start + ram_size;
	u64 high_memory = PAGE_OFFSET + MIN(ram_end, (u64)(SWITCHER_ADDR - PAGE_OFFSET));

	high_memory += 2 * VMALLOC_OFFSET - 1;
	high_memory &= ~(u64)(VMALLOC_OFFSET - 1);
	return high_memory > VMALLOC_END ? VMALLOC_END : (u32)high_memory;
}

static u32 *kernel_pte(u32 va)
{
	u32 *pde = &swapper_pg_dir[va >> 22];

	if (!(*pde & _PAGE_PRESENT)) {
		*pde = __pa(early_alloc_page()) | _PAGE_TABLE;
		hcall(LHCALL_SET_PMD, __pa(swapper_pg_dir), va >> 22, 0);
	}
	return (u32 *)__va(*pde & PAGE_MASK) + ((va >> PAGE_SHIFT) & 1023);
}

void *ioremap(u32 phys, unsigned int pages)
{
	u32 va, i;

	if (!vmalloc_next)
		vmalloc_next = vmalloc_start();
	/* pages + the guard page must fit (with RAM near 1 GiB there may be no room at all) */
	if (phys & ~PAGE_MASK || pages == 0 ||
	    pages >= (VMALLOC_END - vmalloc_next) / PAGE_SIZE)
		return NULL;
	va = vmalloc_next;
	vmalloc_next += (pages + 1) * PAGE_SIZE;	/* + the guard page */
	for (i = 0; i < pages; i++) {
		u32 *pte = kernel_pte(va + i * PAGE_SIZE);

		*pte = (phys + i * PAGE_SIZE) | _PAGE_KERNEL;
		hcall(LHCALL_SET_PTE, __pa(swapper_pg_dir), va + i * PAGE_SIZE, *pte);
	}
	return (void *)va;
}

void iounmap(void *addr, unsigned int pages)
{
	u32 va = (u32)addr, i;

	for (i = 0; i < pages; i++) {
		*kernel_pte(va + i * PAGE_SIZE) = 0;
		hcall(LHCALL_SET_PTE, __pa(swapper_pg_dir), va + i * PAGE_SIZE, 0);
	}
}
