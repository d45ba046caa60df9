/*
 * lguest_abi.h - the guest-visible contract with the Host and Launcher (Linux 2.6.24).
 *
 * Every number here is a fact from docs/abi.md (ABI §N); the section is named next to
 * it.  The file is included by both C and assembly, so the constants come first and the C
 * declarations are fenced off.  The assembly uses the LGUEST_DATA_* offsets; the C half
 * checks them against the real structure with _Static_assert, so the two cannot drift.
 */
#ifndef LGUEST_ABI_H
#define LGUEST_ABI_H

#ifdef __ASSEMBLER__
#define _UL(x)	x
#else
#define _UL(x)	x##UL
#endif

/* ABI §0: where the kernel lives and which vector is the hypercall. */
#define PAGE_OFFSET		_UL(0xC0000000)	/* kernel virtual base = lguest_data.kernel_address */
#define SWITCHER_ADDR		_UL(0xFFC00000)	/* top 4 MiB, PDE 1023: the Host's, never ours */
#define LOAD_PHYS		_UL(0x00100000)	/* where the Launcher puts our PT_LOAD segments */
#define LGUEST_TRAP_ENTRY	0x1F		/* int $0x1f at CPL 1 is a hypercall */
#define SYSCALL_VECTOR		0x80
#define LHCALL_RING_SIZE	64
#define LGUEST_IRQS		32
#define GUEST_PL		1		/* we run in ring 1 */
#define X86_EFLAGS_IF		0x200		/* "interrupts on" value of irq_enabled */

/* ABI §3.3: hypercall numbers.  EAX = number, EDX = arg1, EBX = arg2, ECX = arg3. */
#define LHCALL_FLUSH_ASYNC	0
#define LHCALL_LGUEST_INIT	1
#define LHCALL_CRASH		2
#define LHCALL_LOAD_GDT		3
#define LHCALL_NEW_PGTABLE	4
#define LHCALL_FLUSH_TLB	5
#define LHCALL_LOAD_IDT_ENTRY	6
#define LHCALL_SET_STACK	7
#define LHCALL_TS		8
#define LHCALL_SET_CLOCKEVENT	9
#define LHCALL_HALT		10
#define LHCALL_SET_PTE		14
#define LHCALL_SET_PMD		15
#define LHCALL_LOAD_TLS		16
#define LHCALL_NOTIFY		17

/* ABI §3.5: async ring status byte values. */
#define LHCALL_SLOT_FREE	0xFF		/* empty or completed (Host writes it back) */
#define LHCALL_SLOT_READY	0x00		/* filled in by the guest, waiting for the Host */

/* ABI §4: offsets inside struct lguest_data, for the assembly (checked below). */
#define LGUEST_DATA_irq_enabled		0
#define LGUEST_DATA_blocked_interrupts	4
#define LGUEST_DATA_cr2			8
#define LGUEST_DATA_time		12
#define LGUEST_DATA_hcall_status	20
#define LGUEST_DATA_hcalls		84
#define LGUEST_DATA_reserve_mem		1108
#define LGUEST_DATA_tsc_khz		1112
#define LGUEST_DATA_pgdir		1116
#define LGUEST_DATA_noirq_start		1120
#define LGUEST_DATA_noirq_end		1124
#define LGUEST_DATA_kernel_address	1128
#define LGUEST_DATA_syscall_vec		1132
#define LGUEST_DATA_SIZE		1136

/* ABI §1.3: lguest_entry aliases the Launcher's first 32 PDEs (128 MiB) at PAGE_OFFSET. */
#define EARLY_PDES		32
#define EARLY_MAP_SIZE		(EARLY_PDES << 22)

#ifndef __ASSEMBLER__
#include "types.h"

/* ABI §3.1: one async ring slot mirrors the order the Host saves registers in: EAX EBX ECX EDX. */
struct hcall_args {
	u32 arg0;	/* call number (EAX) */
	u32 arg2;	/* EBX */
	u32 arg3;	/* ECX */
	u32 arg1;	/* EDX */
};

/* ABI §4: the page we share with the Host.  Fields the Host writes are read through READ_ONCE. */
struct lguest_data {
	u32 irq_enabled;			/* 0 = "cli", 0x200 = "sti"; the real IF stays 1 */
	u32 blocked_interrupts;			/* bit n set: Host must not inject IRQ n */
	u32 cr2;				/* Host: faulting address before reflecting #PF */
	struct {
		s32 tv_sec;
		s32 tv_nsec;
	} time;					/* Host: wall clock at INIT and at injections */
	u8 hcall_status[LHCALL_RING_SIZE];	/* 0xFF free, 0 ready */
	struct hcall_args hcalls[LHCALL_RING_SIZE];
	u32 reserve_mem;			/* Host: 4 MiB at the top is the Switcher's */
	u32 tsc_khz;				/* Host: 0 = no usable TSC */
	u32 pgdir;				/* Host: physical address of the Launcher's directory */
	u32 noirq_start;			/* guest: [start, end) is where no IRQ may land */
	u32 noirq_end;
	u32 kernel_address;			/* guest: the user/kernel split, 0xC0000000 */
	u32 syscall_vec;			/* guest: must be 0x80 */
};

#define CHECK_LD(field) _Static_assert(__builtin_offsetof(struct lguest_data, field) == \
				       LGUEST_DATA_##field, "lguest_data." #field " offset")
CHECK_LD(irq_enabled);
CHECK_LD(blocked_interrupts);
CHECK_LD(cr2);
CHECK_LD(time);
CHECK_LD(hcall_status);
CHECK_LD(hcalls);
CHECK_LD(reserve_mem);
CHECK_LD(tsc_khz);
CHECK_LD(pgdir);
CHECK_LD(noirq_start);
CHECK_LD(noirq_end);
CHECK_LD(kernel_address);
CHECK_LD(syscall_vec);
#undef CHECK_LD
_Static_assert(__builtin_offsetof(struct lguest_data, time.tv_nsec) == 16, "time.tv_nsec offset");
_Static_assert(sizeof(struct lguest_data) == LGUEST_DATA_SIZE, "struct lguest_data is 1136 bytes");
_Static_assert(sizeof(struct hcall_args) == 16, "struct hcall_args is 16 bytes");
_Static_assert(__builtin_offsetof(struct hcall_args, arg1) == 12, "hcall_args.arg1 is EDX, last");

extern struct lguest_data lguest_data;

/* boot.S: the two labels bracketing lguest_iret's store-and-iret, and the routine itself. */
extern const char lguest_noirq_start[], lguest_noirq_end[];
void lguest_iret(void);
#endif /* !__ASSEMBLER__ */

#endif /* LGUEST_ABI_H */
