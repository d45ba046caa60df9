/*
 * ioports.c - "lgemu.test=ioports": port I/O at ring 1 (ABI §5.7).
 *
 * In ring 1 with IOPL 0 every `in`/`out` raises #GP(0); lguest's Host emulates the simple
 * forms instead of reflecting them: `out` does nothing, `in` with an odd opcode (32/16-bit
 * forms E5/ED, with or without 0x66) sets EAX to 0xFFFFFFFF, `in` with an even opcode
 * (E4/EC, byte) ORs 0xFFFF into EAX - shifted left 16 with a 0x66 prefix, a quirk of the
 * real Host kept on purpose.  Anything else (string I/O here) is reflected as #GP(0) at the
 * instruction, before it has any effect.
 */
#include "ktest.h"
#include "tests.h"

#define EAX_IN	0x12345678UL
#define UNMAPPED	0x00800000UL	/* nothing maps it in swapper_pg_dir */

/* Run one I/O instruction (as raw bytes, so the 0x66 forms are exactly what we say) with
 * EAX = EAX_IN, DX = 0x64; returns EAX afterwards and whether it trapped. */
#define IO_CASE(bytes, eax, trapped) do {						\
	u32 n_ = last_trap.count;							\
	__asm__ __volatile__(PROBE_ASM(".byte " bytes)					\
			     : "=a"(eax) : "a"(EAX_IN), "d"(0x64) : "memory");		\
	trapped = probe_trapped() || last_trap.count != n_;				\
} while (0)

static void io_case(const char *name, const char *what, u32 got, bool trapped, u32 want)
{
	if (trapped)
		fail(name, "%s trapped (vector %u, error %#x)", what, last_trap.vector,
		     last_trap.error_code);
	else
		check(got == want, name, "%s: EAX %#x (want %#x)", what, got, want);
}

void test_ioports(void)
{
	u32 eax = 0, edi, esi, ecx, n;
	bool trapped;
	static u8 buf[4] = { 0xB0, 0xB1, 0xB2, 0xB3 };

	ktest_begin("ioports");
	trap_init();

	IO_CASE("0xE4, 0x60", eax, trapped);		/* inb $0x60, %al */
	io_case("ioports.inb_imm", "inb $0x60", eax, trapped, EAX_IN | 0xFFFF);
	IO_CASE("0xEC", eax, trapped);			/* inb (%dx), %al */
	io_case("ioports.inb_dx", "inb (%dx)", eax, trapped, EAX_IN | 0xFFFF);
	IO_CASE("0xE5, 0x60", eax, trapped);		/* inl $0x60, %eax */
	io_case("ioports.inl_imm", "inl $0x60", eax, trapped, 0xFFFFFFFF);
	IO_CASE("0xED", eax, trapped);			/* inl (%dx), %eax */
	io_case("ioports.inl_dx", "inl (%dx)", eax, trapped, 0xFFFFFFFF);
	IO_CASE("0x66, 0xE5, 0x60", eax, trapped);	/* inw $0x60, %ax */
	io_case("ioports.inw_imm", "inw $0x60", eax, trapped, 0xFFFFFFFF);
	IO_CASE("0x66, 0xED", eax, trapped);		/* inw (%dx), %ax */
	io_case("ioports.inw_dx", "inw (%dx)", eax, trapped, 0xFFFFFFFF);
	IO_CASE("0x66, 0xE4, 0x60", eax, trapped);	/* 0x66 inb $0x60: the quirk */
	io_case("ioports.prefixed_inb_imm", "66 inb $0x60", eax, trapped, EAX_IN | 0xFFFF0000);
	IO_CASE("0x66, 0xEC", eax, trapped);		/* 0x66 inb (%dx) */
	io_case("ioports.prefixed_inb_dx", "66 inb (%dx)", eax, trapped, EAX_IN | 0xFFFF0000);

	IO_CASE("0xE6, 0x80", eax, trapped);		/* outb %al, $0x80 */
	io_case("ioports.outb_imm", "outb $0x80", eax, trapped, EAX_IN);
	IO_CASE("0xEE", eax, trapped);			/* outb %al, (%dx) */
	io_case("ioports.outb_dx", "outb (%dx)", eax, trapped, EAX_IN);
	IO_CASE("0xE7, 0x80", eax, trapped);		/* outl %eax, $0x80 */
	io_case("ioports.outl_imm", "outl $0x80", eax, trapped, EAX_IN);
	IO_CASE("0x66, 0xEF", eax, trapped);		/* outw %ax, (%dx) */
	io_case("ioports.outw_dx", "outw (%dx)", eax, trapped, EAX_IN);

	/* String I/O is not emulated: #GP(0) at the instruction, and the registers it would
	 * have moved (EDI/ESI/ECX) are as they were.  Memory: Unicorn's `ins` stores a dummy
	 * zero to ES:EDI before it reaches the port, which the Host cannot undo (known). */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("insb")
			     : "=D"(edi) : "D"(buf), "d"(0x64) : "memory");
	if (expect_trap("ioports.insb_gp", n, 13, 0, probe_start)) {
		check(edi == (u32)buf, "ioports.insb_registers", "EDI %#x (was %p)", edi,
		      (void *)buf);
		check_known(buf[0] == 0xB0, "ioports.insb_memory",
			    "byte at EDI %#x (was 0xb0): Unicorn stores before the port check",
			    buf[0]);
	}
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("outsb")
			     : "=S"(esi) : "S"(buf + 1), "d"(0x64) : "memory");
	if (expect_trap("ioports.outsb_gp", n, 13, 0, probe_start))
		check(esi == (u32)buf + 1, "ioports.outsb_registers", "ESI %#x (was %p)", esi,
		      (void *)(buf + 1));
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("rep insb")
			     : "=D"(edi), "=c"(ecx) : "D"(buf + 1), "c"(3), "d"(0x64)
			     : "memory");
	if (expect_trap("ioports.rep_insb_gp", n, 13, 0, probe_start))
		check(edi == (u32)buf + 1 && ecx == 3 && buf[2] == 0xB2 && buf[3] == 0xB3,
		      "ioports.rep_insb_registers", "EDI %#x (was %p), ECX %u, bytes %#x %#x",
		      edi, (void *)(buf + 1), ecx, buf[2], buf[3]);
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("rep outsl")
			     : "=S"(esi), "=c"(ecx) : "S"(buf), "c"(2), "d"(0x64) : "memory");
	if (expect_trap("ioports.rep_outsl_gp", n, 13, 0, probe_start))
		check(esi == (u32)buf && ecx == 2, "ioports.rep_outsl_registers",
		      "ESI %#x (was %p), ECX %u", esi, (void *)buf, ecx);

	/* The privilege check comes before the memory access: a string I/O instruction
	 * whose buffer is not mapped raises #GP(0), not #PF. */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("insl")
			     : "=D"(edi) : "D"(UNMAPPED), "d"(0x64) : "memory");
	expect_trap("ioports.insl_unmapped_gp_not_pf", n, 13, 0, probe_start);
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("outsw")
			     : "=S"(esi) : "S"(UNMAPPED), "d"(0x64) : "memory");
	expect_trap("ioports.outsw_unmapped_gp_not_pf", n, 13, 0, probe_start);
	ktest_end();
}
