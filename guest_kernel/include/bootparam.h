/*
 * bootparam.h - the zero page the Launcher leaves at physical 0 (ABI §1.2).
 *
 * It is a packed 4096-byte struct boot_params; we only need a handful of fields, so they are
 * named by offset (usable from assembly) instead of declaring the whole structure.
 */
#ifndef BOOTPARAM_H
#define BOOTPARAM_H

#define BOOT_PARAMS_SIZE	4096
#define COMMAND_LINE_SIZE	2048

#define BP_E820_ENTRIES		0x1E8	/* u8: the lguest path does not read it */
#define BP_VERSION		0x206	/* u16: boot protocol, must be >= 0x207 */
#define BP_TYPE_OF_LOADER	0x210	/* u8: nonzero iff an initrd was given */
#define BP_LOADFLAGS		0x211	/* u8 */
#define BP_RAMDISK_IMAGE	0x218	/* u32: physical address of the initrd */
#define BP_RAMDISK_SIZE		0x21C	/* u32: page-rounded initrd size */
#define BP_CMD_LINE_PTR		0x228	/* u32: physical address of the command line */
#define BP_HARDWARE_SUBARCH	0x23C	/* u32: 0 PC, 1 lguest, 2 Xen */
#define BP_E820_MAP		0x2D0	/* struct e820entry[128] */

#define KEEP_SEGMENTS		0x40	/* loadflags bit 6: "do not reload segment registers" */
#define BOOT_PROTOCOL_MIN	0x0207	/* first protocol where KEEP_SEGMENTS means anything */

#define SUBARCH_PC		0
#define SUBARCH_LGUEST		1
#define SUBARCH_XEN		2

#define E820_RAM		1

#ifndef __ASSEMBLER__
#include "types.h"

struct e820entry {
	u64 addr;
	u64 size;
	u32 type;
} __attribute__((packed));
_Static_assert(sizeof(struct e820entry) == 20, "e820entry is 20 bytes, packed");

/* Filled by startup_32 before any C runs. */
extern u8 boot_params[BOOT_PARAMS_SIZE];
extern char boot_command_line[COMMAND_LINE_SIZE];

static inline u32 bp_u32(unsigned int off)
{
	u32 v;
	__builtin_memcpy(&v, &boot_params[off], sizeof(v));
	return v;
}

static inline struct e820entry bp_e820(unsigned int n)
{
	struct e820entry e;
	__builtin_memcpy(&e, &boot_params[BP_E820_MAP + n * sizeof(e)], sizeof(e));
	return e;
}
#endif /* !__ASSEMBLER__ */

#endif /* BOOTPARAM_H */
