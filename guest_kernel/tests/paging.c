/*
 * paging.c - "lgemu.test=paging": the guest's page tables and the paging hypercalls (ABI §7).
 *
 * The guest changes its own PTEs and PDEs and then tells the Host with SET_PTE, SET_PMD,
 * FLUSH_TLB(0) (user part) or FLUSH_TLB(1) (everything), as 2.6.24's paravirt ops do.  After
 * such a call the new translation must be the one used; without one the result depends on
 * what the Host (like a TLB) cached, so that case is never asserted.  Also: ring-1 writes to
 * read-only pages fault (WP), the CPU sets Accessed and Dirty in the guest's PTEs, kernel
 * mappings are shared by every address space, and more address spaces than the Host caches
 * (four) all keep working.
 */
#include "ktest.h"
#include "tests.h"

#define VA_USER		0x00C00000UL	/* PDE 3: below kernel_address */
#define VA_KERNEL	0xF0000000UL	/* PDE 960: above kernel_address, beyond RAM's mapping */
#define NR_SPACES	6

static u32 *frame[NR_SPACES];		/* page n holds 0xF0000000 + n everywhere */
static u32 swapper_pa;

static u32 *pte_of(u32 *pgd, u32 va)
{
	u32 *pde = &pgd[va >> 22];

	if (!(*pde & _PAGE_PRESENT))
		*pde = __pa(early_alloc_page()) | _PAGE_TABLE;
	return (u32 *)__va(*pde & PAGE_MASK) + ((va >> PAGE_SHIFT) & 1023);
}

static u32 mapping_of(unsigned int n, u32 flags)
{
	return __pa(frame[n]) | flags;
}

static u32 peek(u32 va)
{
	return READ_ONCE(*(volatile u32 *)va);
}

static void test_remap(void)
{
	u32 *pte_u = pte_of(swapper_pg_dir, VA_USER);
	u32 *pte_k = pte_of(swapper_pg_dir, VA_KERNEL);
	u32 v0, v1;

	/* User address: SET_PTE(pgdir, va, pte), as set_pte_at does. */
	*pte_u = mapping_of(0, _PAGE_KERNEL);
	hcall(LHCALL_SET_PTE, swapper_pa, VA_USER, *pte_u);
	v0 = peek(VA_USER);
	*pte_u = mapping_of(1, _PAGE_KERNEL);
	hcall(LHCALL_SET_PTE, swapper_pa, VA_USER, *pte_u);
	v1 = peek(VA_USER);
	check(v0 == 0xF0000000 && v1 == 0xF0000001, "paging.remap_user_set_pte",
	      "read %#x then %#x (want 0xf0000000 then 0xf0000001)", v0, v1);

	/* flush_tlb_single: SET_PTE with value 0 means "forget", not "the PTE is 0". */
	*pte_u = mapping_of(2, _PAGE_KERNEL);
	hcall(LHCALL_SET_PTE, swapper_pa, VA_USER, 0);
	v0 = peek(VA_USER);
	check(v0 == 0xF0000002, "paging.set_pte_zero_means_flush",
	      "read %#x (want 0xf0000002 from the PTE in memory)", v0);

	/* FLUSH_TLB(0): user translations. */
	*pte_u = mapping_of(3, _PAGE_KERNEL);
	hcall(LHCALL_FLUSH_TLB, 0, 0, 0);
	v0 = peek(VA_USER);
	check(v0 == 0xF0000003, "paging.remap_user_flush_tlb0", "read %#x (want 0xf0000003)", v0);

	/* Kernel address: FLUSH_TLB(1), then SET_PTE. */
	*pte_k = mapping_of(0, _PAGE_KERNEL);
	hcall(LHCALL_FLUSH_TLB, 1, 0, 0);
	v0 = peek(VA_KERNEL);
	*pte_k = mapping_of(4, _PAGE_KERNEL);
	hcall(LHCALL_FLUSH_TLB, 1, 0, 0);
	v1 = peek(VA_KERNEL);
	check(v0 == 0xF0000000 && v1 == 0xF0000004, "paging.remap_kernel_flush_tlb1",
	      "read %#x then %#x (want 0xf0000000 then 0xf0000004)", v0, v1);
	*pte_k = mapping_of(5, _PAGE_KERNEL);
	hcall(LHCALL_SET_PTE, swapper_pa, VA_KERNEL, *pte_k);
	v0 = peek(VA_KERNEL);
	check(v0 == 0xF0000005, "paging.remap_kernel_set_pte", "read %#x (want 0xf0000005)", v0);

	/* Unmapping: PTE 0 and SET_PTE; the next access must fault (not present, read). */
	{
		u32 n = last_trap.count, v = 0;

		*pte_u = 0;
		hcall(LHCALL_SET_PTE, swapper_pa, VA_USER, 0);
		__asm__ __volatile__(PROBE_ASM("movl (%1), %0") : "=r"(v) : "r"(VA_USER)
				     : "memory");
		if (expect_trap("paging.unmap_faults", n, 14, 0, probe_start))
			check(last_trap.cr2 == VA_USER, "paging.unmap_cr2", "cr2 %#x (want %#lx)",
			      last_trap.cr2, VA_USER);
	}
}

/* SET_PMD: the guest replaced a whole page table (a PDE), the Host forgets the old one. */
static void test_set_pmd(void)
{
	u32 index = VA_USER >> 22;
	u32 *pt1 = early_alloc_page(), *pt2 = early_alloc_page();
	u32 v0, v1;

	pt1[(VA_USER >> PAGE_SHIFT) & 1023] = mapping_of(0, _PAGE_KERNEL);
	pt2[(VA_USER >> PAGE_SHIFT) & 1023] = mapping_of(1, _PAGE_KERNEL);
	swapper_pg_dir[index] = __pa(pt1) | _PAGE_TABLE;
	hcall(LHCALL_SET_PMD, swapper_pa, index, 0);
	v0 = peek(VA_USER);
	swapper_pg_dir[index] = __pa(pt2) | _PAGE_TABLE;
	hcall(LHCALL_SET_PMD, swapper_pa, index, 0);
	v1 = peek(VA_USER);
	check(v0 == 0xF0000000 && v1 == 0xF0000001, "paging.set_pmd",
	      "read %#x then %#x (want 0xf0000000 then 0xf0000001)", v0, v1);
}

static u32 wp_faults, wp_error, wp_cr2;
static u32 *wp_pte;

/* do_wp_page, reduced: make the page writable and retry. */
static void wp_handler(struct trap_frame *f)
{
	wp_faults++;
	wp_error = f->error_code;
	wp_cr2 = READ_ONCE(lguest_data.cr2);
	if (wp_faults > 1 || (wp_cr2 & PAGE_MASK) != VA_USER)
		panic("paging: unexpected page fault at %#x (error %#x, eip %#x)", wp_cr2,
		      f->error_code, f->eip);
	*wp_pte |= _PAGE_RW;
	hcall(LHCALL_SET_PTE, swapper_pa, VA_USER & PAGE_MASK, *wp_pte);
}

static void test_write_protect(void)
{
	u32 *pte = pte_of(swapper_pg_dir, VA_USER);

	/* Ring 1 is supervisor, but CR0.WP is on: a write to a read-only page faults with
	 * error code 3 (present, write) - 2.6.24's test_wp_bit depends on it. */
	*pte = mapping_of(2, _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY);
	hcall(LHCALL_SET_PTE, swapper_pa, VA_USER, *pte);
	wp_pte = pte;
	wp_faults = 0;
	trap_handlers[14] = wp_handler;
	barrier();	/* the handler must be in place before the write, which may fault */
	WRITE_ONCE(*(volatile u32 *)(VA_USER + 8), 0x57A7E);
	barrier();
	trap_handlers[14] = NULL;
	check(wp_faults == 1 && wp_error == 3 && wp_cr2 == VA_USER + 8 &&
	      frame[2][2] == 0x57A7E, "paging.write_protect",
	      "%u faults, error %#x (want 3), cr2 %#x, value %#x after the retry", wp_faults,
	      wp_error, wp_cr2, frame[2][2]);
}

/* The CPU's walk sets Accessed on any access and Dirty on a write, in the guest's PTE. */
static void test_accessed_dirty(void)
{
	u32 *pte = pte_of(swapper_pg_dir, VA_USER);
	u32 before, after_read, after_write;

	*pte = mapping_of(3, _PAGE_PRESENT | _PAGE_RW);
	hcall(LHCALL_SET_PTE, swapper_pa, VA_USER, *pte);
	before = READ_ONCE(*pte);
	(void)peek(VA_USER);
	after_read = READ_ONCE(*pte);
	WRITE_ONCE(*(volatile u32 *)(VA_USER + 12), 1);
	after_write = READ_ONCE(*pte);
	check(!(before & (_PAGE_ACCESSED | _PAGE_DIRTY)) && (after_read & _PAGE_ACCESSED) &&
	      !(after_read & _PAGE_DIRTY) && (after_write & _PAGE_DIRTY) &&
	      (after_write & PAGE_MASK) == __pa(frame[3]), "paging.accessed_dirty",
	      "PTE %#x before, %#x after a read, %#x after a write", before, after_read,
	      after_write);
}

/*
 * Address spaces: NR_SPACES directories (more than the Host's four cached shadows), each
 * mapping VA_USER to its own page and sharing the kernel's PDEs.  Switching through all of
 * them twice must always show the right page.  A kernel PTE changed once (SET_PTE above
 * kernel_address) must be seen from every one of them.
 */
static void test_address_spaces(void)
{
	u32 *pgd[NR_SPACES];
	u32 *pte_k = pte_of(swapper_pg_dir, VA_KERNEL);
	unsigned int i, round, wrong = 0, stale = 0;
	u32 got = 0, got_k = 0;

	for (i = 0; i < NR_SPACES; i++) {
		unsigned int j;

		pgd[i] = early_alloc_page();
		for (j = PAGE_OFFSET >> 22; j < 1024; j++)
			pgd[i][j] = swapper_pg_dir[j];
		*pte_of(pgd[i], VA_USER) = mapping_of(i, _PAGE_KERNEL);
	}
	*pte_k = mapping_of(0, _PAGE_KERNEL);
	hcall(LHCALL_SET_PTE, swapper_pa, VA_KERNEL, *pte_k);
	for (round = 0; round < 2; round++) {
		for (i = 0; i < NR_SPACES; i++) {
			hcall(LHCALL_NEW_PGTABLE, __pa(pgd[i]), 0, 0);
			got = peek(VA_USER);
			got_k = peek(VA_KERNEL);
			if (got != 0xF0000000 + i)
				wrong++;
			if (got_k != 0xF0000000 + round)
				stale++;
		}
		/* Change the kernel mapping once, from the last address space. */
		*pte_k = mapping_of(1, _PAGE_KERNEL);
		hcall(LHCALL_SET_PTE, __pa(pgd[NR_SPACES - 1]), VA_KERNEL, *pte_k);
	}
	hcall(LHCALL_NEW_PGTABLE, swapper_pa, 0, 0);
	check(!wrong, "paging.many_address_spaces",
	      "%u of %u switches read another space's page (last %#x)", wrong, 2 * NR_SPACES,
	      got);
	check(!stale, "paging.kernel_mapping_shared",
	      "%u of %u switches saw a stale kernel mapping (last %#x)", stale, 2 * NR_SPACES,
	      got_k);
}

void test_paging(void)
{
	unsigned int i;

	ktest_begin("paging");
	trap_init();
	swapper_pa = __pa(swapper_pg_dir);
	for (i = 0; i < NR_SPACES; i++) {
		frame[i] = early_alloc_page();
		frame[i][0] = 0xF0000000 + i;
	}
	test_remap();
	test_set_pmd();
	test_write_protect();
	test_accessed_dirty();
	test_address_spaces();
	ktest_end();
}
