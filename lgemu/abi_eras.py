"""The lguest guest ABI era by era, as data: what changed between Linux 2.6.23 and 4.13.

`lgemu.abi` defines the 2.6.24 ABI, the one lgemu implements, to the byte.  lguest's guest
interface was never frozen, though, and every few releases a guest kernel spoke to its Host
a little differently.  This module records those differences once, as values, so that the
code which boots each era chooses among them at launch instead of copying the 2.6.24 code per
era.  It serves `lgemu.launcher.era` (which era is this image?), `lgemu info`, and a boot:
the Launcher, the devices and the Host read the chosen `Era` (the eras with `boots` set).

An `Era` holds, for a range of kernel releases:

* the hypercall numbers (`hypercalls`, name → number; call 2 is CRASH until 2.6.24 and
  SHUTDOWN from 2.6.25);
* how a hypercall is made: the instruction (`int $0x1f`, or 2.6.30–2.6.33's ``vmcall``, which
  a Host rewrote in guest memory), the registers that carry arguments 1… in order, and the
  members of one async-ring entry (``struct hcall_args``) in memory order; whether the Host
  still rewrites a ``vmcall`` (`vmcall_rewrite`: 2.6.34–3.0 guests call with `int $0x1f` but
  kept one ``vmcall``, in ``send_interrupts``), and whether it steps over a ring-1 ``cli``
  (`cli_skipped`, 2.6.34 on: the ``cmpxchg8b`` emulation of kernels built for CPUs without it
  disables interrupts natively);
* ``struct lguest_data`` (`lguest_data`: member → offset, and its size), read from the DWARF
  of the shared kernels where one was built (tests/test_eras.py checks them),
  otherwise derived from the headers' history as noted in `facts_from`;
* the device bus and the device descriptor header (`device_desc`: its u8 members in order);
* who builds the page tables the guest starts on (`page_tables`), whether device status
  writes are reported to the Launcher (`status_notify`) and whether PAE guests are accepted
  (`pae`);
* the sizes of a block request's header and of a network frame's (`blk_outhdr_size`,
  `net_hdr_size`);
* whether the Host refuses a page-table entry with write-through caching (`pte_pwt_killed`),
  and whether its own trap gates were all DPL 0 (`host_gates_dpl0`);
* whether the Launcher ends the kernel command line with a space (`cmdline_trailing_space`);
* what its Launcher offered a virtio disk and how it served the requests that made the guest
  send (`blk_offers`, `blk_barrier_syncs`, `blk_flush`; docs/eras.md has the table);
* what an `in` from a port nothing answers reads (`port_in_sized`, `ps2_status_ready`).

Version boundaries come from the mainline history as summarised in the project's era notes;
where a boundary was not pinned down to one release, `bounds_checked` is False and `note`
says what is known, and detection from a version string alone says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType

from .abi import VIRTIO_BLK_F_BARRIER, VIRTIO_BLK_F_FLUSH
from .record import Record

Version = tuple[int, int, int]


class HcallInsn(Enum):
    """The instruction a guest traps to its Host with."""

    INT_1F = "int $0x1f"
    VMCALL = "vmcall"  # 0f 01 c1; lguest's Host patched each one to `int $0x1f; nop`


class DeviceBus(Enum):
    """How the guest finds its devices."""

    LGUEST_DMA = "the lguest bus with DMA buffers (pre-virtio)"
    LGUEST_VIRTIO = "virtio over the lguest bus (device page above RAM)"
    PCI = "virtio 1.0 PCI functions on bus 0 (port I/O config space, MMIO BARs)"


class PageTables(Enum):
    """Who builds the page tables the guest's first instruction runs on."""

    LAUNCHER = "the Launcher (the guest copies its pgdir entries in lguest_entry)"
    LAUNCHER_LINEAR = "the Launcher, mapping RAM at PAGE_OFFSET too (2.6.23's guest runs " \
        "there from its first instruction)"
    HOST = "the Host (the guest jumps straight to C)"
    GUEST = "the guest's head_32.S (lguest_entry loads them with NEW_PGTABLE)"


# each era is one object: compared and hashed by identity
class Era(Record, frozen=True, eq=False):
    """One lguest guest ABI; see the module docstring for the fields' meaning."""

    name: str  # "2.6.31-2.6.33": the releases it covers, as `lgemu info` prints them
    first: Version  # first release of the era
    summary: str  # what changed from the era before, in a line
    hypercalls: Mapping[str, int]
    hcall_insn: HcallInsn
    hcall_regs: tuple[str, ...]  # registers of arguments 1, 2, … (the number is in eax)
    hcall_ring: tuple[str, ...]  # struct hcall_args members in memory order, 4 bytes each
    lguest_data: Mapping[str, int] | None  # member → offset; None: not lgemu's concern
    lguest_data_size: int | None
    device_bus: DeviceBus
    device_desc: tuple[str, ...]  # u8 header members of struct lguest_device_desc
    page_tables: PageTables
    status_notify: bool = False  # a device status write is reported with NOTIFY(its address)
    pae: bool = False  # lguest accepts PAE (three-level page table) guests
    vmcall_rewrite: bool = False  # the Host turns a ring-1 `vmcall` into `int $0x1f; nop`
    cli_skipped: bool = False  # the #GP of a ring-1 `cli` (fa) only moves EIP past it
    blk_outhdr_size: int = 24  # struct virtio_blk_outhdr: 2.6.25 dropped its u64 id
    net_hdr_size: int = 8  # struct virtio_net_hdr: 2.6.25 added its u16 hdr_len
    # lguest's check_gpte killed a guest PTE with _PAGE_PWT until 2.6.24; 2.6.25's Host
    # accepts it (that release's ioremap_nocache had begun setting it), PSE alone still kills.
    pte_pwt_killed: bool = False
    # lguest's own gate for a vector the guest could take directly, where the guest's gate is
    # not a trap gate, was DPL 0 until 2.6.26: a software `int3` from the guest then #GPs.
    # 2.6.27's copy_traps gave it the guest gate's DPL, so it reaches the Host, which delivers
    # it: the one change that splits 2.6.26 from 2.6.27-2.6.28.
    host_gates_dpl0: bool = False
    # The Launcher wrote each kernel argument followed by a space until 2.6.24; from 2.6.25
    # it puts one space between them and none after the last.
    cmdline_trailing_space: bool = False
    # The Launcher's virtio disk: the feature bits it offered besides SEG_MAX (BARRIER from
    # 2.6.25, FLUSH by 3.0, neither in 2.6.24 nor on 4.x's PCI); where it ran fdatasync
    # around a request flagged BARRIER ("before" its I/O, and "after" it from 2.6.30; 3.0
    # on ignored the flag); whether it carried out a FLUSH request (fdatasync) at all.
    blk_offers: int = 0
    blk_barrier_syncs: tuple[str, ...] = ("before",)
    blk_flush: bool = False
    # An emulated `in` from a port nothing answers: until 3.0 the Host set all of EAX for a
    # word or dword read and the low 16 bits for a byte read (the high 16 with a 0x66
    # prefix); 3.1's sets exactly the bytes read, as 4.x's Launcher does.
    port_in_sized: bool = False
    # 4.x's Launcher answers a read of port 0x64 (the PS/2 controller's status) with 1.
    ps2_status_ready: bool = False
    boots: bool = False  # lgemu boots guests of this era today
    bounds_checked: bool = True  # the releases it covers were read from the history
    facts_from: str = ""  # which kernels the layouts were checked against
    note: str = ""

    @property
    def key(self) -> str:
        """The short name `--abi` accepts: the era's first release."""
        return ".".join(map(str, self.first if self.first[0] < 3 else self.first[:2]))

    @property
    def hcall_args_size(self) -> int:
        """Bytes of one async hypercall ring entry."""
        return 4 * len(self.hcall_ring)

    def hcall_name(self, nr: int) -> str:
        """This era's name for hypercall `nr`, or the number."""
        for name, number in self.hypercalls.items():
            if number == nr:
                return name
        return str(nr)


def _frozen(mapping: dict[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(mapping))


def _changed(base: Mapping[str, int], drop: tuple[str, ...] = (), **add: int) -> Mapping[str, int]:
    result = {k: v for k, v in base.items() if k not in drop}
    result.update(add)
    return _frozen(dict(sorted(result.items(), key=lambda item: item[1])))


def _layout(*members: tuple[str, int]) -> tuple[Mapping[str, int], int]:
    """Offsets from (member, size) pairs laid out back to back (every member here is
    4-byte aligned, as the DWARF of the real kernels confirms); returns (offsets, size)."""
    offsets, at = {}, 0
    for name, size in members:
        offsets[name] = at
        at += size
    return _frozen(offsets), at


# -- hypercall numbers ------------------------------------------------------------------------
_HCALLS_2_6_24 = _frozen({
    "FLUSH_ASYNC": 0, "LGUEST_INIT": 1, "CRASH": 2, "LOAD_GDT": 3, "NEW_PGTABLE": 4,
    "FLUSH_TLB": 5, "LOAD_IDT_ENTRY": 6, "SET_STACK": 7, "TS": 8, "SET_CLOCKEVENT": 9,
    "HALT": 10, "SET_PTE": 14, "SET_PMD": 15, "LOAD_TLS": 16, "NOTIFY": 17,
})
# 2.6.23: no NOTIFY (the console went over DMA); the DMA bus calls.  Its header numbers
# nothing 11: the guest reads the wall clock from lguest_data.time, as every later era does.
_HCALLS_2_6_23 = _changed(_HCALLS_2_6_24, ("NOTIFY",), BIND_DMA=12, SEND_DMA=13)
# 2.6.25: call 2 becomes SHUTDOWN(__pa(reason), POWEROFF=1 | RESTART=2).
_HCALLS_2_6_25 = _changed(_HCALLS_2_6_24, ("CRASH",), SHUTDOWN=2)
# 2.6.30: the GDT is loaded one entry at a time.
_HCALLS_2_6_30 = _changed(_HCALLS_2_6_25, ("LOAD_GDT",), LOAD_GDT_ENTRY=18)
# 2.6.31: PAE support renames 15 to SET_PGD and adds SET_PMD 13; SEND_INTERRUPTS for
# irq_pending.  3.x kept these numbers.
_HCALLS_2_6_31 = _changed(_HCALLS_2_6_30, ("SET_PMD",), SET_PGD=15, SET_PMD=13,
                          SEND_INTERRUPTS=19)
# 4.x: no lguest bus, so no NOTIFY.
_HCALLS_4 = _changed(_HCALLS_2_6_31, ("NOTIFY",))
# 4.10: the guest no longer keeps a TS bit (its write_cr0 does nothing), and the Host's
# hypercall switch lost TS: call 8 is "Bad hypercall 8" (4.10.17's drivers/lguest).
_HCALLS_4_10 = _changed(_HCALLS_4, ("TS",))

# -- how a hypercall is made --------------------------------------------------------------------
_REGS_OLD = ("edx", "ebx", "ecx")  # int $0x1f: eax = number, then edx, ebx, ecx
_REGS_KVM4 = ("ebx", "ecx", "edx")  # 2.6.30's kvm_hypercall order
_REGS_KVM5 = ("ebx", "ecx", "edx", "esi")  # 2.6.31 on, kept after vmcall went away
_RING_OLD = ("arg0", "arg2", "arg3", "arg1")  # stored as eax, ebx, ecx, edx
_RING_4 = ("arg0", "arg1", "arg2", "arg3")
# 2.6.23's struct hcall_ring is {eax, edx, ebx, ecx}: the call, then arguments 1-3 in order.
_RING_2_6_23 = _RING_4
_RING_5 = ("arg0", "arg1", "arg2", "arg3", "arg4")

# -- struct lguest_data -------------------------------------------------------------------------
_RING = 64  # LHCALL_RING_SIZE, the same in every era
_HEAD = (("irq_enabled", 4), ("blocked_interrupts", 4), ("cr2", 4), ("time", 8))
_TAIL_HOST = (("reserve_mem", 4), ("tsc_khz", 4))
_TAIL_GUEST = (("noirq_start", 4), ("noirq_end", 4), ("kernel_address", 4),
               ("syscall_vec", 4))
# 2.6.23: no pgdir, kernel_address or syscall_vec (the Launcher told the Host PAGE_OFFSET and
# the system call vector was always 0x80); a u16 guestid the Host fills (the net driver's MAC
# came from it), padded to 4 bytes before tsc_khz.
LD_2_6_23, LD_2_6_23_SIZE = _layout(
    *_HEAD, ("hcall_status", _RING), ("hcalls", _RING * 16), ("reserve_mem", 4),
    ("guestid", 4), ("tsc_khz", 4), ("noirq_start", 4), ("noirq_end", 4))
LD_2_6_24, LD_2_6_24_SIZE = _layout(
    *_HEAD, ("hcall_status", _RING), ("hcalls", _RING * 16), *_TAIL_HOST, ("pgdir", 4),
    *_TAIL_GUEST)
LD_2_6_31, LD_2_6_31_SIZE = _layout(
    *_HEAD, ("irq_pending", 4), ("hcall_status", _RING), ("hcalls", _RING * 20), *_TAIL_HOST,
    ("pgdir", 4), *_TAIL_GUEST)
LD_3, LD_3_SIZE = _layout(
    *_HEAD, ("irq_pending", 4), ("hcall_status", _RING), ("hcalls", _RING * 20), *_TAIL_HOST,
    *_TAIL_GUEST)
LD_4, LD_4_SIZE = _layout(
    *_HEAD, ("irq_pending", 4), ("hcall_status", _RING), ("hcalls", _RING * 20), *_TAIL_HOST,
    ("noirq_iret", 4), ("kernel_address", 4), ("syscall_vec", 4))

# 2.6.23's descriptor is all u16 and a u32 (type, features, status, num_pages, pfn): not u8
# members like the later ones; `lgemu.devices.dma_bus` reads it.
_DESC_2_6_23 = ("type", "features", "status", "num_pages", "pfn")
_DESC_2_6_24 = ("type", "config_len", "status")  # then a TLV list of config fields
_DESC_2_6_25 = ("type", "num_vq", "feature_len", "config_len", "status")  # then vqs, features

# -- the eras -------------------------------------------------------------------------------------
_BARRIER = 1 << VIRTIO_BLK_F_BARRIER  # the disk features a Launcher offered (`blk_offers`)
_FLUSH = 1 << VIRTIO_BLK_F_FLUSH

ERAS: tuple[Era, ...] = (
    Era("2.6.23", (2, 6, 23), "the first lguest: devices on the DMA lguest bus, no virtio",
        _HCALLS_2_6_23, HcallInsn.INT_1F, _REGS_OLD, _RING_2_6_23, LD_2_6_23, LD_2_6_23_SIZE,
        DeviceBus.LGUEST_DMA, _DESC_2_6_23, PageTables.LAUNCHER_LINEAR, boots=True,
        pte_pwt_killed=True, host_gates_dpl0=True, cmdline_trailing_space=True,
        facts_from="linux-2.6.23",
        note="entered just after the \"GenuineLguest\" marker, at its PAGE_OFFSET address, "
             "with %esi = 0 (the boot header's physical address); the Launcher's page "
             "tables map RAM at PAGE_OFFSET"),
    Era("2.6.24", (2, 6, 24), "virtio over the lguest bus; 3-byte descriptors with TLV config",
        _HCALLS_2_6_24, HcallInsn.INT_1F, _REGS_OLD, _RING_OLD, LD_2_6_24, LD_2_6_24_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_24, PageTables.LAUNCHER, boots=True,
        pte_pwt_killed=True, host_gates_dpl0=True, cmdline_trailing_space=True,
        facts_from="linux-2.6.24"),
    Era("2.6.25", (2, 6, 25), "5-byte descriptors (virtqueues, feature bits, fixed config); "
        "SHUTDOWN replaces CRASH",
        _HCALLS_2_6_25, HcallInsn.INT_1F, _REGS_OLD, _RING_OLD, LD_2_6_24, LD_2_6_24_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_25, PageTables.LAUNCHER, blk_outhdr_size=16,
        blk_offers=_BARRIER,
        net_hdr_size=10, boots=True, host_gates_dpl0=True, facts_from="linux-2.6.25",
        note="its kernel was built and booted (docs/eras.md) but is not in shared/kernels"),
    Era("2.6.26", (2, 6, 26), "driver features acknowledged, status changes notified, "
        "config in guest byte order",
        _HCALLS_2_6_25, HcallInsn.INT_1F, _REGS_OLD, _RING_OLD, LD_2_6_24, LD_2_6_24_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_25, PageTables.LAUNCHER, status_notify=True,
        blk_offers=_BARRIER,
        blk_outhdr_size=16, net_hdr_size=10, boots=True, host_gates_dpl0=True,
        facts_from="linux-2.6.26"),
    Era("2.6.27-2.6.28", (2, 6, 27), "2.6.26's interface; the Host's trap gates take the "
        "privilege level of the guest's",
        _HCALLS_2_6_25, HcallInsn.INT_1F, _REGS_OLD, _RING_OLD, LD_2_6_24, LD_2_6_24_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_25, PageTables.LAUNCHER, status_notify=True,
        blk_offers=_BARRIER,
        blk_outhdr_size=16, net_hdr_size=10, boots=True, facts_from="linux-2.6.28",
        note="its guest interface is 2.6.26's, its Host's copy_traps 2.6.27's (read in "
             "that release); its kernel was built and booted (docs/eras.md) but is not in "
             "shared/kernels"),
    Era("2.6.29", (2, 6, 29), "the Host builds the initial page tables",
        _HCALLS_2_6_25, HcallInsn.INT_1F, _REGS_OLD, _RING_OLD, LD_2_6_24, LD_2_6_24_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_25, PageTables.HOST, status_notify=True,
        blk_offers=_BARRIER,
        blk_outhdr_size=16, net_hdr_size=10, boots=True,
        facts_from="linux-2.6.29",
        note="its kernel was built and booted (docs/eras.md) but is not in shared/kernels"),
    Era("2.6.30", (2, 6, 30), "vmcall hypercalls (eax, ebx, ecx, edx); LOAD_GDT_ENTRY",
        _HCALLS_2_6_30, HcallInsn.VMCALL, _REGS_KVM4, _RING_4, LD_2_6_24, LD_2_6_24_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_25, PageTables.HOST, status_notify=True,
        blk_offers=_BARRIER, blk_barrier_syncs=("before", "after"),
        vmcall_rewrite=True, blk_outhdr_size=16, net_hdr_size=10, boots=True,
        facts_from="linux-2.6.30"),
    Era("2.6.31-2.6.33", (2, 6, 31), "a fifth argument in esi, 20-byte ring entries, "
        "irq_pending and SEND_INTERRUPTS, SET_PGD/SET_PMD renumbered, PAE allowed",
        _HCALLS_2_6_31, HcallInsn.VMCALL, _REGS_KVM5, _RING_5, LD_2_6_31, LD_2_6_31_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_25, PageTables.HOST, status_notify=True, pae=True,
        blk_offers=_BARRIER, blk_barrier_syncs=("before", "after"),
        vmcall_rewrite=True, blk_outhdr_size=16, net_hdr_size=10, boots=True,
        facts_from="linux-2.6.32"),
    Era("2.6.34-3.0", (2, 6, 34), "int $0x1f again, keeping the vmcall register order",
        _HCALLS_2_6_31, HcallInsn.INT_1F, _REGS_KVM5, _RING_5, LD_2_6_31, LD_2_6_31_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_25, PageTables.HOST, status_notify=True, pae=True,
        blk_offers=_FLUSH, blk_barrier_syncs=(), blk_flush=True,
        vmcall_rewrite=True, cli_skipped=True, blk_outhdr_size=16, net_hdr_size=10,
        boots=True, facts_from="linux-3.0",
        note="3.0's send_interrupts still makes a vmcall, which its Host rewrites; 3.1's "
             "makes none, and its Host neither rewrites one nor has lguest_data.pgdir"),
    Era("3.1-4.0", (3, 1, 0), "lguest_data.pgdir gone: the guest's head_32.S builds the "
        "page tables and lguest_entry loads them with NEW_PGTABLE",
        _HCALLS_2_6_31, HcallInsn.INT_1F, _REGS_KVM5, _RING_5, LD_3, LD_3_SIZE,
        DeviceBus.LGUEST_VIRTIO, _DESC_2_6_25, PageTables.GUEST, status_notify=True, pae=True,
        blk_offers=_FLUSH, blk_barrier_syncs=(), blk_flush=True,
        cli_skipped=True, port_in_sized=True, blk_outhdr_size=16, net_hdr_size=10,
        boots=True, bounds_checked=False, facts_from="linux-3.13",
        note="its last release is not pinned down (4.1 has devices on PCI)"),
    Era("4.1-4.9", (4, 1, 0), "devices are virtio 1.0 PCI functions; one noirq_iret "
        "address instead of the noirq range; no NOTIFY",
        _HCALLS_4, HcallInsn.INT_1F, _REGS_KVM5, _RING_5, LD_4, LD_4_SIZE,
        DeviceBus.PCI, (), PageTables.GUEST, pae=True, cli_skipped=True, boots=True,
        port_in_sized=True, ps2_status_ready=True, bounds_checked=False,
        blk_barrier_syncs=(), blk_flush=True,
        facts_from="linux-4.4", blk_outhdr_size=16, net_hdr_size=12,
        note="the release that moved to PCI is not pinned down here (4.1 has it)"),
    Era("4.10-4.13", (4, 10, 0), "4.1-4.9's interface without the TS hypercall",
        _HCALLS_4_10, HcallInsn.INT_1F, _REGS_KVM5, _RING_5, LD_4, LD_4_SIZE,
        DeviceBus.PCI, (), PageTables.GUEST, pae=True, cli_skipped=True, boots=True,
        port_in_sized=True, ps2_status_ready=True, bounds_checked=False,
        blk_barrier_syncs=(), blk_flush=True, facts_from="linux-4.13", blk_outhdr_size=16,
        net_hdr_size=12,
        note="lguest left Linux in 4.14; its kernel (4.13.4) was built and booted "
             "(docs/eras.md) but is not in shared/kernels"),
)
ERA_2_6_24 = next(era for era in ERAS if era.name == "2.6.24")
LAST_LGUEST_RELEASE: Version = (4, 13, 99)

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> Version | None:
    """(major, minor, patch) from the start of a release string such as ``3.13.10`` or
    ``2.6.32-rc1``; None if it does not start with one."""
    match = _VERSION.match(text)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def era_for_version(version: Version) -> Era | None:
    """The era a release belongs to, or None outside lguest's life (before 2.6.23, after
    4.13).  Within 2.6.x the patch level decides; from 3.0 on the minor does."""
    if version < ERAS[0].first or version > LAST_LGUEST_RELEASE:
        return None
    key = version if version[0] < 3 else (version[0], version[1], 0)
    found = ERAS[0]
    for era in ERAS:
        if era.first <= key:
            found = era
    return found


def era_named(text: str) -> Era | None:
    """The era `--abi TEXT` means: an era's name (``2.6.31-2.6.33``), its first release
    (``2.6.31``), or any release inside it (``2.6.32``, ``3.13``)."""
    text = text.strip()
    for era in ERAS:
        if text in (era.name, era.key):
            return era
    version = parse_version(text)
    if version is None or _VERSION.fullmatch(text) is None:
        return None
    return era_for_version(version)
