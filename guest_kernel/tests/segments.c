/*
 * segments.c - "lgemu.test=segments": LOAD_GDT and LOAD_TLS (ABI §6).
 *
 * The Host copies the guest's descriptors into the GDT the CPU uses, but a DPL 0 entry
 * comes back as DPL 1 with the accessed bit set (ABI §6.2), entries 10, 11, 16 stay the Host's
 * and 31 is never installed (ABI §6.1).  Each property is checked the way a guest can see it:
 * `lar` (unprivileged) reads a descriptor's access byte, and loading a selector into a data
 * segment register and using it proves the descriptor - base included - really took effect.
 */
#include "ktest.h"
#include "tests.h"

#define ACC_DATA_RW	0x12	/* S=1, type 2: read/write data */
#define ACC_PRESENT	0x80
#define FLAGS_4K_32	0xC	/* G=1, D/B=1 */
#define FLAGS_BYTE_32	0x4	/* G=0, D/B=1 */

#define SEL_FLAT	(20 << 3)	/* flat data, DPL 0 in our table */
#define SEL_BASED	(21 << 3)	/* 4 KiB data at &based[0], DPL 0 */
#define SEL_USERISH	(22 << 3)	/* flat data, DPL 3 */
#define SEL_ABSENT	(23 << 3)	/* flat data, DPL 0, not present */

static u64 gdt[32] __attribute__((aligned(8)));
static u64 tls[3] __attribute__((aligned(8)));
static u32 based[1024] __attribute__((aligned(4096)));
static u32 scratch[4];
static u32 tls_a[2] = { 0x7150A000, 0x7150A001 };
static u32 tls_b[2] = { 0x7150B000, 0x7150B001 };
static u32 tls_c[2] = { 0x7150C000, 0x7150C001 };

static u64 descriptor(u32 base, u32 limit, u32 dpl, u32 flags)
{
	u32 lo = (limit & 0xFFFF) | (base << 16);
	u32 hi = ((base >> 16) & 0xFF) | ((ACC_PRESENT | (dpl << 5) | ACC_DATA_RW) << 8) |
		 (limit & 0xF0000) | (flags << 20) | (base & 0xFF000000);

	return ((u64)hi << 32) | lo;
}

/* lar: the access rights of a descriptor as the CPU sees it at our CPL, if it may see it. */
static bool lar(u32 sel, u32 *rights)
{
	u8 ok;

	__asm__ __volatile__("lar %2, %0\n\tsetz %1" : "=&r"(*rights), "=q"(ok) : "r"(sel));
	return ok;
}

static unsigned int rights_dpl(u32 rights)
{
	return (rights >> 13) & 3;
}

static void restore_data_segments(void)
{
	__asm__ __volatile__("movw %w0, %%ds\n\tmovw %w0, %%es" : : "r"(GUEST_DS) : "memory");
}

/* `lar` on sel: visible, DPL want_dpl, accessed bit set. */
static void check_descriptor(const char *name, u32 sel, unsigned int want_dpl)
{
	u32 rights = 0;

	if (!lar(sel, &rights))
		fail(name, "lar %#x: not a usable descriptor at ring 1", sel);
	else
		check(rights_dpl(rights) == want_dpl && (rights & 0x100) && (rights & 0x8000),
		      name, "selector %#x: access rights %#x (want DPL %u, accessed, present)",
		      sel, rights, want_dpl);
}

/* Loading sel into %fs must #GP with error code sel (index part). */
static void check_unloadable(const char *name, u32 sel)
{
	u32 n = last_trap.count;

	__asm__ __volatile__(PROBE_ASM("movw %w0, %%fs") : : "r"(sel) : "memory");
	expect_trap(name, n, 13, sel & ~3, probe_start);
	__asm__ __volatile__("movw %w0, %%fs" : : "r"(0) : "memory");
}

static void test_gdt(void)
{
	u32 a = 0, b = 0, c = 0, ds = 0, n, rights;
	unsigned int i;

	/* 2.6.24's table plus our test entries, and values the Host must ignore. */
	gdt[12] = 0x00cf9a000000ffffULL;			/* __KERNEL_CS, DPL 0 */
	gdt[13] = 0x00cf92000000ffffULL;			/* __KERNEL_DS, DPL 0 */
	gdt[14] = 0x00cffa000000ffffULL;			/* __USER_CS */
	gdt[15] = 0x00cff2000000ffffULL;			/* __USER_DS */
	gdt[20] = descriptor(0, 0xFFFFF, 0, FLAGS_4K_32);
	gdt[21] = descriptor((u32)based, 0xFFF, 0, FLAGS_BYTE_32);
	gdt[22] = descriptor(0, 0xFFFFF, 3, FLAGS_4K_32);
	gdt[23] = descriptor(0, 0xFFFFF, 0, FLAGS_4K_32) & ~((u64)ACC_PRESENT << 40);
	gdt[10] = descriptor(0, 0xFFFFF, 3, FLAGS_4K_32);	/* LGUEST_CS: host-only */
	gdt[11] = descriptor(0, 0xFFFFF, 3, FLAGS_4K_32);	/* LGUEST_DS: host-only */
	gdt[31] = descriptor(0, 0xFFFFF, 3, FLAGS_4K_32);	/* double-fault TSS slot */
	hcall(LHCALL_LOAD_GDT, __pa(gdt), 32, 0);

	check_descriptor("segments.gdt_kernel_cs_dpl1", __KERNEL_CS, 1);
	check_descriptor("segments.gdt_kernel_ds_dpl1", __KERNEL_DS, 1);
	check_descriptor("segments.gdt_dpl0_becomes_dpl1", SEL_FLAT, 1);
	check_descriptor("segments.gdt_dpl3_kept", SEL_USERISH, 3);

	/* The fixed-up flat entry works in DS, ES and FS. */
	for (i = 0; i < 4; i++)
		scratch[i] = 0xA5A50000 + i;
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM(
		"movw %w[sel], %%ds\n\t"
		"movw %w[sel], %%es\n\t"
		"movw %w[sel], %%fs\n\t"
		"movl $0x11223344, %%es:(%[p])\n\t"
		"movl %%ds:(%[p]), %[a]\n\t"
		"movl %%fs:4(%[p]), %[b]\n\t"
		"movw %%ds, %w[ds]")
		: [a] "=&r"(a), [b] "=&r"(b), [ds] "=&r"(ds)
		: [sel] "r"(SEL_FLAT | 1), [p] "r"(scratch) : "memory");
	restore_data_segments();
	if (probe_trapped())
		fail("segments.gdt_flat_usable", "trap %u (error %#x) using selector %#x",
		     last_trap.vector, last_trap.error_code, SEL_FLAT | 1);
	else
		check(a == 0x11223344 && b == 0xA5A50001 && (ds & 0xFFFF) == (SEL_FLAT | 1) &&
		      last_trap.count == n, "segments.gdt_flat_usable",
		      "read %#x/%#x through it, DS %#x", a, b, ds & 0xFFFF);

	/* A non-zero base: %fs:0 is based[0]. */
	based[0] = 0xBA5E0000;
	based[1] = 0xBA5E0001;
	__asm__ __volatile__(PROBE_ASM(
		"movw %w[sel], %%fs\n\t"
		"movl %%fs:0, %[a]\n\t"
		"movl %%fs:4, %[b]\n\t"
		"movl $0xF00DF00D, %%fs:8\n\t"
		"movl %%fs:8, %[c]")
		: [a] "=&r"(a), [b] "=&r"(b), [c] "=&r"(c)
		: [sel] "r"(SEL_BASED) : "memory");
	if (probe_trapped())
		fail("segments.gdt_base", "trap %u (error %#x) using selector %#x",
		     last_trap.vector, last_trap.error_code, SEL_BASED);
	else
		check(a == 0xBA5E0000 && b == 0xBA5E0001 && c == 0xF00DF00D &&
		      READ_ONCE(based[2]) == 0xF00DF00D, "segments.gdt_base",
		      "%%fs:0 %#x %%fs:4 %#x %%fs:8 %#x based[2] %#x (base %p)", a, b, c,
		      READ_ONCE(based[2]), (void *)based);
	__asm__ __volatile__("movw %w0, %%fs" : : "r"(0) : "memory");

	/* Entries 10 and 11 are the Host's (DPL 0, invisible at ring 1); 31 is never installed. */
	check(!lar(0x50, &rights) && !lar(0x58, &rights), "segments.gdt_host_entries_kept",
	      "lar sees the guest's value for entry 10 or 11");
	check_unloadable("segments.gdt_host_ds_unloadable", 0x58);
	check_unloadable("segments.gdt_entry31_not_installed", 0xF8 | 3);

	/* A descriptor that is not present: #NP (vector 11) for a data segment register,
	 * #SS (vector 12) for SS, error code the selector, both through trap gates. */
	{
		u32 n = last_trap.count;

		__asm__ __volatile__(PROBE_ASM("movw %w0, %%fs") : : "r"(SEL_ABSENT) : "memory");
		expect_trap("segments.not_present_np", n, 11, SEL_ABSENT, probe_start);
		__asm__ __volatile__("movw %w0, %%fs" : : "r"(0) : "memory");
		n = last_trap.count;
		__asm__ __volatile__(PROBE_ASM("movw %w0, %%ss")
				     : : "r"(SEL_ABSENT | 1) : "memory");
		__asm__ __volatile__("movw %w0, %%ss" : : "r"(GUEST_DS) : "memory");
		expect_trap("segments.not_present_ss", n, 12, SEL_ABSENT, probe_start);
	}

	/* LOAD_GDT with fewer entries: the rest keep their contents (and are fixed up again). */
	gdt[20] = 0;
	gdt[22] = 0;
	hcall(LHCALL_LOAD_GDT, __pa(gdt), 16, 0);
	check_descriptor("segments.gdt_short_load_keeps_rest", SEL_FLAT, 1);
	check_descriptor("segments.gdt_short_load_keeps_dpl3", SEL_USERISH, 3);
}

static void test_tls(void)
{
	u32 a = 0, b = 0, c = 0;

	/* 2.6.24's load_TLS: %gs is zeroed before the Host rewrites entries 6-8. */
	__asm__ __volatile__("movw %w0, %%gs" : : "r"(0) : "memory");
	tls[0] = descriptor((u32)tls_a, 0xFFF, 3, FLAGS_BYTE_32);
	tls[1] = descriptor((u32)tls_b, 0xFFF, 0, FLAGS_BYTE_32);
	tls[2] = 0;
	hcall(LHCALL_LOAD_TLS, __pa(tls), 0, 0);
	check_descriptor("segments.tls_dpl3_kept", 0x33, 3);
	check_descriptor("segments.tls_dpl0_becomes_dpl1", 0x38, 1);

	__asm__ __volatile__(PROBE_ASM(
		"movw %w[s6], %%gs\n\t"
		"movl %%gs:0, %[a]\n\t"
		"movw %w[s7], %%gs\n\t"
		"movl %%gs:4, %[b]")
		: [a] "=&r"(a), [b] "=&r"(b)
		: [s6] "r"(0x33), [s7] "r"(0x39) : "memory");
	if (probe_trapped())
		fail("segments.tls_gs", "trap %u (error %#x)", last_trap.vector,
		     last_trap.error_code);
	else
		check(a == tls_a[0] && b == tls_b[1], "segments.tls_gs",
		      "%%gs:0 through 0x33 = %#x (want %#x), %%gs:4 through 0x39 = %#x (want %#x)",
		      a, tls_a[0], b, tls_b[1]);

	/* A second LOAD_TLS replaces the base; reloading %gs picks it up. */
	__asm__ __volatile__("movw %w0, %%gs" : : "r"(0) : "memory");
	tls[0] = descriptor((u32)tls_c, 0xFFF, 3, FLAGS_BYTE_32);
	hcall(LHCALL_LOAD_TLS, __pa(tls), 0, 0);
	__asm__ __volatile__(PROBE_ASM(
		"movw %w[s6], %%gs\n\t"
		"movl %%gs:4, %[c]")
		: [c] "=&r"(c) : [s6] "r"(0x33) : "memory");
	if (probe_trapped())
		fail("segments.tls_reload", "trap %u (error %#x)", last_trap.vector,
		     last_trap.error_code);
	else
		check(c == tls_c[1], "segments.tls_reload", "%%gs:4 = %#x (want %#x)", c,
		      tls_c[1]);

	/* Entry 8 was given as 0: not loadable. */
	__asm__ __volatile__("movw %w0, %%gs" : : "r"(0) : "memory");
	check_unloadable("segments.tls_empty_entry", 0x43);

	/* LOAD_TLS touches 6-8 only. */
	check_descriptor("segments.tls_leaves_gdt", SEL_FLAT, 1);
}

void test_segments(void)
{
	ktest_begin("segments");
	trap_init();
	test_gdt();
	test_tls();
	ktest_end();
}
