"""The Linux 2.6.24 lguest binary interface, defined once.

Every guest-visible number and byte layout the Host and Launcher share with the guest lives
here: hypercall numbers, selectors, `struct lguest_data`, the zero page, the device page and
the vring.  Layouts are ctypes structures (so offsets are checked against the ABI document by
tests) plus precompiled `struct.Struct` objects for the hot paths.  "ABI §N" is section N
of `docs/abi.md`.
"""

from __future__ import annotations

import ctypes
import struct
from enum import IntEnum
from typing import NamedTuple

PAGE_SIZE = 4096
PAGE_SHIFT = 12
MIB = 1 << 20

# -- ABI §0 constants -------------------------------------------------------------------------
LGUEST_TRAP_ENTRY = 0x1F  # int $0x1f is a hypercall
LHCALL_RING_SIZE = 64
LGUEST_IRQS = 32
FIRST_EXTERNAL_VECTOR = 0x20
SYSCALL_VECTOR = 0x80
GUEST_PL = 1
PAGE_OFFSET = 0xC0000000
SWITCHER_ADDR = 0xFFC00000  # PDE 1023: the host-reserved top 4 MiB
SWITCHER_PDE = SWITCHER_ADDR >> 22
RESERVE_MEM = 0x00400000
X86_EFLAGS_IF = 0x200
X86_CR0_TS = 0x8
GDT_ENTRIES = 32
IDT_ENTRIES = 256
VIRTQUEUE_NUM = 128
DEVICE_PAGES = 256

# -- ABI §0/§6 selectors and GDT entries -------------------------------------------------------
GDT_ENTRY_TLS_MIN = 6
GDT_ENTRY_TLS_ENTRIES = 3
GDT_ENTRY_LGUEST_CS = 10
GDT_ENTRY_LGUEST_DS = 11
GDT_ENTRY_KERNEL_CS = 12
GDT_ENTRY_KERNEL_DS = 13
GDT_ENTRY_TSS = 16
GDT_ENTRY_DOUBLEFAULT_TSS = 31
# Entries whose guest-supplied value the Host ignores: its own code, data and TSS, and the
# double-fault TSS it never installs (ABI §6.1).
HOST_GDT_ENTRIES = frozenset({GDT_ENTRY_LGUEST_CS, GDT_ENTRY_LGUEST_DS, GDT_ENTRY_TSS,
                              GDT_ENTRY_DOUBLEFAULT_TSS})
KERNEL_CS = GDT_ENTRY_KERNEL_CS << 3  # 0x60
KERNEL_DS = GDT_ENTRY_KERNEL_DS << 3  # 0x68
GUEST_CS = KERNEL_CS | GUEST_PL  # 0x61
GUEST_DS = KERNEL_DS | GUEST_PL  # 0x69
USER_CS = 0x73
USER_DS = 0x7B
LGUEST_CS = GDT_ENTRY_LGUEST_CS << 3  # 0x50
LGUEST_DS = GDT_ENTRY_LGUEST_DS << 3  # 0x58
TSS_SELECTOR = GDT_ENTRY_TSS << 3  # 0x80

# Flat 4 GiB descriptors (ABI §2, §6.1): guest kernel code/data at DPL 1 with the accessed bit set,
# host code/data at DPL 0.
DESC_GUEST_CS = 0x00CFBB000000FFFF
DESC_GUEST_DS = 0x00CFB3000000FFFF
DESC_LGUEST_CS = 0x00CF9B000000FFFF
DESC_LGUEST_DS = 0x00CF93000000FFFF

# -- ABI §5 trap vectors and IDT gates --------------------------------------------------------
class Vector(IntEnum):
    """The x86 exceptions by their mnemonic (`#PF` is `Vector.PF`)."""

    DE = 0  # divide error
    DB = 1  # debug
    BP = 3  # breakpoint (int3)
    OF = 4  # overflow (into)
    BR = 5  # bound range
    UD = 6  # invalid opcode
    NM = 7  # device not available (FPU use with CR0.TS set)
    DF = 8  # double fault
    TS = 10  # invalid TSS
    NP = 11  # segment not present
    SS = 12  # stack-segment fault
    GP = 13  # general protection
    PF = 14  # page fault
    MF = 16  # x87 floating point
    AC = 17  # alignment check
    XM = 19  # SIMD floating point


NMI_VECTOR = 2  # an interrupt, not an exception: no mnemonic
RESERVED_VECTOR = 15
FIRST_NON_EXCEPTION = 32  # 0-31 are the CPU's; above, only `int n` and interrupts
# Vectors whose exception pushes an error code (ABI §5.2).
ERROR_CODE_VECTORS = frozenset({Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP,
                                Vector.PF, Vector.AC})
# Vectors a guest can never own (ABI §5.1).
IGNORED_IDT_VECTORS = frozenset({NMI_VECTOR, Vector.DF, RESERVED_VECTOR, LGUEST_TRAP_ENTRY})

GATE_INTERRUPT = 0xE
GATE_TRAP = 0xF
GATE_PRESENT = 0x8000


class Gate(NamedTuple):
    """An IDT entry as LOAD_IDT_ENTRY hands it over, two 32-bit words (ABI §5.1), decoded."""

    handler: int
    selector: int
    type: int
    dpl: int
    present: bool

    @classmethod
    def decode(cls, lo: int, hi: int) -> Gate:
        """The fields of the gate whose low and high words are `lo` and `hi`."""
        return cls((lo & 0xFFFF) | (hi & 0xFFFF0000), lo >> 16, (hi >> 8) & 0xF,
                   (hi >> 13) & 3, bool(hi & GATE_PRESENT))


class Hcall(IntEnum):
    """Hypercall numbers (ABI §3.3)."""

    FLUSH_ASYNC = 0
    LGUEST_INIT = 1
    CRASH = 2
    LOAD_GDT = 3
    NEW_PGTABLE = 4
    FLUSH_TLB = 5
    LOAD_IDT_ENTRY = 6
    SET_STACK = 7
    TS = 8
    SET_CLOCKEVENT = 9
    HALT = 10
    SET_PTE = 14
    SET_PMD = 15
    LOAD_TLS = 16
    NOTIFY = 17


def hcall_name(nr: int) -> str:  # the one place a hypercall gets its name
    """Name of hypercall `nr` as in the kernel (`LOAD_IDT_ENTRY`), or its number."""
    try:
        return Hcall(nr).name
    except ValueError:
        return str(nr)


# -- ABI §3.1 / ABI §3.5 / ABI §4: struct lguest_data ---------------------------------------
class HcallArgs(ctypes.LittleEndianStructure):
    """`struct hcall_args`: arg0 is the call number; note the register order EAX EBX ECX EDX."""

    _pack_ = 4
    _fields_ = [("arg0", ctypes.c_uint32), ("arg2", ctypes.c_uint32),
                ("arg3", ctypes.c_uint32), ("arg1", ctypes.c_uint32)]


class Timespec(ctypes.LittleEndianStructure):
    _pack_ = 4
    _fields_ = [("tv_sec", ctypes.c_int32), ("tv_nsec", ctypes.c_int32)]


class LguestData(ctypes.LittleEndianStructure):
    """`struct lguest_data`, shared between guest and Host at a guest-physical address."""

    _pack_ = 4
    _fields_ = [
        ("irq_enabled", ctypes.c_uint32),
        ("blocked_interrupts", ctypes.c_uint32),
        ("cr2", ctypes.c_uint32),
        ("time", Timespec),
        ("hcall_status", ctypes.c_uint8 * LHCALL_RING_SIZE),
        ("hcalls", HcallArgs * LHCALL_RING_SIZE),
        ("reserve_mem", ctypes.c_uint32),
        ("tsc_khz", ctypes.c_uint32),
        ("pgdir", ctypes.c_uint32),
        ("noirq_start", ctypes.c_uint32),
        ("noirq_end", ctypes.c_uint32),
        ("kernel_address", ctypes.c_uint32),
        ("syscall_vec", ctypes.c_uint32),
    ]


LGUEST_DATA_SIZE = ctypes.sizeof(LguestData)  # 1136


def _off(struct_type: type[ctypes.Structure], field: str) -> int:
    return getattr(struct_type, field).offset


LD_IRQ_ENABLED = _off(LguestData, "irq_enabled")
LD_BLOCKED = _off(LguestData, "blocked_interrupts")
LD_CR2 = _off(LguestData, "cr2")
LD_TIME = _off(LguestData, "time")
LD_HCALL_STATUS = _off(LguestData, "hcall_status")
LD_HCALLS = _off(LguestData, "hcalls")
LD_RESERVE_MEM = _off(LguestData, "reserve_mem")
LD_TSC_KHZ = _off(LguestData, "tsc_khz")
LD_PGDIR = _off(LguestData, "pgdir")
LD_NOIRQ_START = _off(LguestData, "noirq_start")
LD_NOIRQ_END = _off(LguestData, "noirq_end")
LD_KERNEL_ADDRESS = _off(LguestData, "kernel_address")
LD_SYSCALL_VEC = _off(LguestData, "syscall_vec")
HCALL_ARGS = struct.Struct("<IIII")  # arg0, arg2, arg3, arg1
TIMESPEC = struct.Struct("<ii")
HCALL_STATUS_EMPTY = 0xFF

# -- ABI §1.2 zero page (struct boot_params) ----------------------------------------------------
ZERO_PAGE_ADDR = 0x0
CMDLINE_ADDR = 0x1000
COMMAND_LINE_SIZE = 2048
KERNEL_LOAD_ADDR = 0x100000


class E820Entry(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("addr", ctypes.c_uint64), ("size", ctypes.c_uint64), ("type", ctypes.c_uint32)]


E820_RAM = 1
E820_MAX = 128


class BootParams(ctypes.LittleEndianStructure):
    """The zero page, with exactly the fields the 2.6.24 Launcher writes or the guest reads."""

    _pack_ = 1
    _fields_ = [
        ("screen_info", ctypes.c_uint8 * 0x40),
        ("_pad0", ctypes.c_uint8 * (0xA0 - 0x40)),
        ("sys_desc_table", ctypes.c_uint8 * 16),
        ("_pad1", ctypes.c_uint8 * (0x1E8 - 0xB0)),
        ("e820_entries", ctypes.c_uint8),
        ("eddbuf_entries", ctypes.c_uint8),
        ("_pad2", ctypes.c_uint8 * (0x1F1 - 0x1EA)),
        ("setup_sects", ctypes.c_uint8),
        ("root_flags", ctypes.c_uint16),
        ("_pad3", ctypes.c_uint8 * (0x1F8 - 0x1F4)),
        ("ram_size", ctypes.c_uint16),
        ("vid_mode", ctypes.c_uint16),
        ("root_dev", ctypes.c_uint16),
        ("_pad4", ctypes.c_uint8 * (0x202 - 0x1FE)),
        ("header", ctypes.c_uint32),
        ("version", ctypes.c_uint16),
        ("_pad5", ctypes.c_uint8 * (0x210 - 0x208)),
        ("type_of_loader", ctypes.c_uint8),
        ("loadflags", ctypes.c_uint8),
        ("_pad6", ctypes.c_uint8 * (0x214 - 0x212)),
        ("code32_start", ctypes.c_uint32),
        ("ramdisk_image", ctypes.c_uint32),
        ("ramdisk_size", ctypes.c_uint32),
        ("_pad7", ctypes.c_uint8 * (0x228 - 0x220)),
        ("cmd_line_ptr", ctypes.c_uint32),
        ("initrd_addr_max", ctypes.c_uint32),
        ("_pad8", ctypes.c_uint8 * (0x238 - 0x230)),
        ("cmdline_size", ctypes.c_uint32),
        ("hardware_subarch", ctypes.c_uint32),
        ("hardware_subarch_data", ctypes.c_uint64),
        ("_pad9", ctypes.c_uint8 * (0x2D0 - 0x248)),
        ("e820_map", E820Entry * E820_MAX),
        ("_pad10", ctypes.c_uint8 * (4096 - 0x2D0 - 20 * E820_MAX)),
    ]


BOOT_PROTOCOL_VERSION = 0x0207
LOADFLAG_KEEP_SEGMENTS = 0x40
LOADER_TYPE_UNKNOWN = 0xFF
SUBARCH_LGUEST = 1
SETUP_HEADER_MAGIC = b"HdrS"
SETUP_HEADER_MAGIC_OFFSET = 0x202

# -- ABI §7 page tables -------------------------------------------------------------------------
PTE_PRESENT = 0x001
PTE_RW = 0x002
PTE_USER = 0x004
PTE_PWT = 0x008
PTE_PCD = 0x010
PTE_ACCESSED = 0x020
PTE_DIRTY = 0x040
PTE_PSE = 0x080
PTE_GLOBAL = 0x100
LAUNCHER_PT_FLAGS = PTE_PRESENT | PTE_RW | PTE_USER  # 0x007 (ABI §1.3)
PDE_ALLOWED_FLAGS = 0x067  # ABI §7.1 step 2: anything else kills "bad page directory entry"

# -- ABI §7.6 PAE page tables (2.6.31 on): 64-bit entries, three levels --------------------------
PAE_ENTRY_SIZE = 8
PAE_PGD_ENTRIES = 4  # the top level: 32 bytes, 1 GiB each
PAE_PTRS = 512  # entries in a middle directory or a page table
PAE_PGD_SHIFT = 30
PAE_PMD_SHIFT = 21  # one middle-directory entry maps 2 MiB
PAE_FRAME_MASK = ((1 << 44) - 1) & ~0xFFF  # lguest's 44-bit PTE_PFN_MASK; the rest are flags
PAE_PGD_ALLOWED_FLAGS = PTE_PRESENT  # ABI §7.6: a top-level entry has no other flag
PAE_PMD_ALLOWED_FLAGS = 0x067  # as a two-level directory entry
PAE_NX = 1 << 63  # never offered (no NX in CPUID), so a reserved bit for the guest

# -- ABI §10 device page ------------------------------------------------------------------------
class DeviceType(IntEnum):
    NET = 1
    BLOCK = 2
    CONSOLE = 3


class DeviceStatus(IntEnum):
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FAILED = 0x80


DEVICE_DESC = struct.Struct("<BBB")  # type, config_len, status
CONFIG_FIELD_HDR = struct.Struct("<BB")  # type, len
CONFIG_F_VIRTIO = 0x01
CONFIG_F_VIRTQUEUE = 0x02
CONFIG_FIELD_USED = 0x80
CONFIG_NET_F = 0x40
CONFIG_NET_MAC_F = 0x41
CONFIG_BLK_F = 0x40
CONFIG_BLK_F_CAPACITY = 0x41
CONFIG_BLK_F_SIZE_MAX = 0x42
CONFIG_BLK_F_SEG_MAX = 0x43
BLK_SEG_MAX = 126


VQCONFIG = struct.Struct("<HHI")  # struct lguest_vqconfig: num, irq, pfn

# -- ABI Appendix C: the device page from 2.6.25 on ---------------------------------------------
# The header grew to type, num_vq, feature_len, config_len, status; after it come num_vq
# lguest_vqconfigs, feature_len bytes of features the device offers, feature_len bytes the
# driver accepts, then config_len bytes of the device type's fixed config struct.
DEVICE_DESC_V2 = struct.Struct("<BBBBB")
DESC_V2_STATUS = 4  # offset of the status byte in that header
VIRTIO_BLK_F_BARRIER = 0  # feature bits (bit n is byte n / 8, bit n % 8)
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_FLUSH = 9  # 2.6.32 on (4.x calls it WCE)
VIRTIO_BLK_T_FLUSH = 4  # a request type from 2.6.32: no data, write the disk's cache out
VIRTIO_NET_F_MAC = 5
VIRTIO_BLK_CONFIG = struct.Struct("<QII")  # capacity, size_max, seg_max
VIRTIO_BLK_OUTHDR_V2 = struct.Struct("<IIQ")  # type, ioprio, sector: 2.6.25 dropped `id`
LGUEST_SHUTDOWN_POWEROFF = 1  # LHCALL_SHUTDOWN's second argument
LGUEST_SHUTDOWN_RESTART = 2

# -- ABI §11 vring ------------------------------------------------------------------------------
VRING_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
VRING_USED_ELEM = struct.Struct("<II")  # id, len
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")


def vring_size(num: int, align: int = PAGE_SIZE) -> int:
    """Bytes a 2.6.24 vring of `num` entries occupies (ABI §11.2)."""
    return ((18 * num + 4 + align - 1) & ~(align - 1)) + 4 + 8 * num


VRING_PAGES = -(-vring_size(VIRTQUEUE_NUM) // PAGE_SIZE)  # 2 pages per 128-entry ring


def vring_offsets(num: int, align: int = PAGE_SIZE) -> tuple[int, int, int]:
    """(desc, avail, used) byte offsets inside the ring pages (ABI §11.2)."""
    return 0, 16 * num, (16 * num + 4 + 2 * num + align - 1) & ~(align - 1)


# -- ABI §12 device protocols -------------------------------------------------------------------
VIRTIO_BLK_OUTHDR = struct.Struct("<IIQQ")  # type, ioprio, sector, id
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_SCSI_CMD = 2
VIRTIO_BLK_T_BARRIER = 0x80000000
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_NET_HDR = struct.Struct("<BBHHH")  # flags, gso_type, gso_size, csum_start, csum_offset
