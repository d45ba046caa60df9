"""Hypercalls (ABI §3): `int $0x1f` at ring 1, number in EAX, arguments in EDX, EBX, ECX.

One handler per call number, in a table; the async ring is drained before every synchronous
call after LGUEST_INIT (ABI §3.2, §3.5).  Handlers take the `Host` (the guest's lguest state `lg`
and the parts of the Host they act on) and the three arguments, and return nothing: no 2.6.24
hypercall returns a value.

Later eras renumbered calls and added some (`lgemu.abi_eras`): the handlers are named by the
call they implement, and `HypercallTable.of(era)` numbers them once, at launch, the way the
guest's era does.  Which registers carry the arguments is the run loop's (`Guest`); a fifth
argument (esi, 2.6.31 on) only matters to PAE guests (`LguestState.arg4`).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from ..abi import (
    GDT_ENTRIES,
    GDT_ENTRY_TLS_ENTRIES,
    HCALL_STATUS_EMPTY,
    LGUEST_SHUTDOWN_POWEROFF,
    LGUEST_SHUTDOWN_RESTART,
    LHCALL_RING_SIZE,
    RESERVE_MEM,
    SWITCHER_PDE,
    SYSCALL_VECTOR,
    Hcall,
)
from ..abi_eras import ERA_2_6_24, Era
from ..errors import GuestCrashed, GuestKilled, GuestRestart, PowerDown
from ..kills import (
    AlreadyInitialized,
    BadHypercall,
    BadKernelAddress,
    BadLguestData,
    BadShutdown,
    BadStackPages,
    BadStackSegment,
    BadSyscallVector,
    HypercallBeforeInit,
    TooManyGdtEntries,
)
from ..record import Record
from . import events
from .lguest_data import LAYOUT_2_6_24, DataLayout, LguestData
from .state import LguestState

if TYPE_CHECKING:
    from ..launcher import BootInfo
    from ..machine.memory import GuestMemory
    from .clock import Clock
    from .interrupts import Interrupts
    from .paging import Paging
    from .segments import Gdt
    from .traps import Traps

CRASH_MESSAGE_BYTES = 128
POWER_DOWN = "Power down"
MAX_STACK_PAGES = 2



class HypercallStats(Protocol):
    """The counters hypercalls add to (`lgemu.host.guest.Stats`)."""

    hypercalls: Counter
    async_hypercalls: Counter


class Host(Protocol):
    """What a hypercall handler is given: the guest's lguest state, the Host's components, and
    the run loop's actions (`lgemu.host.guest.Guest` is the one implementation)."""

    lg: LguestState
    hcalls: HypercallTable  # this guest's era's numbering and lguest_data layout
    memory: GuestMemory
    boot: BootInfo
    clock: Clock
    paging: Paging
    gdt: Gdt
    traps: Traps
    interrupts: Interrupts
    stats: HypercallStats
    observers: Sequence[events.Observer]  # checked before `emit`: untraced runs pay nothing

    def emit(self, kind: str, text: str) -> None:
        """Tell the observers about an lguest event."""

    def position(self) -> int:
        """Instructions into the current slice."""

    def set_ts(self, ts: int) -> None:
        """Mirror the guest's TS flag into CR0."""

    def set_timer(self, delta_ns: int) -> None:
        """Arm (0: stop) the one-shot timer."""

    def halt(self) -> None:
        """Sleep until an interrupt is deliverable."""

    def notify(self, addr: int) -> None:
        """A virtqueue kick or an early-console string."""

    def bind_dma(self, key: int, addr: int, packed: int) -> None:
        """2.6.23: offer receive buffers for `key`; 1 or 0 (bus full) in EAX."""

    def send_dma(self, key: int, addr: int) -> None:
        """2.6.23: hand the buffer at `addr` to the device behind `key`."""


Handler = Callable[[Host, int, int, int], None]


def lguest_init(g: Host, addr: int, _a2: int, _a3: int) -> None:
    """The first hypercall: register `struct lguest_data`, in the order of ABI §3.4."""
    if g.lg.data is not None:
        raise GuestKilled(AlreadyInitialized())
    layout = g.hcalls.layout
    if not g.memory.valid(addr, layout.size):
        raise GuestKilled(BadLguestData(addr))
    data = LguestData(g.memory, addr, layout)
    data.set_u32(layout.tsc_khz, 0)  # the guest takes its time from lguest_data.time
    if layout.syscall_vec is not None and data.u32(layout.syscall_vec) != SYSCALL_VECTOR:
        raise GuestKilled(BadSyscallVector())
    noirq_start = data.u32(layout.noirq_start)
    # 4.x names one address, its lguest_iret's `iret`: the window is that instruction.
    noirq = (noirq_start, noirq_start + 1 if layout.noirq_end is None
             else data.u32(layout.noirq_end))
    data.set_time(g.clock.wall_ns(g.position()))
    # 2.6.23 has no field for it: its Launcher passed PAGE_OFFSET with LHREQ_INITIALIZE.
    kernel_address = (g.boot.page_offset if layout.kernel_address is None
                      else data.u32(layout.kernel_address))
    data.set_u32(layout.reserve_mem, RESERVE_MEM)
    if layout.pgdir is not None:  # 3.x guests build their own and have no field for it
        data.set_u32(layout.pgdir, g.boot.pgdir)
    if kernel_address >> 22 >= SWITCHER_PDE:
        raise GuestKilled(BadKernelAddress(kernel_address))
    g.lg.register(data, kernel_address, noirq)
    g.paging.flush(everything=True)


def flush_async(g: Host, _a1: int, _a2: int, _a3: int) -> None:
    """Nothing: the ring was drained on the way in."""


def _printable(raw: bytearray) -> str:
    """A guest's message as one line on the user's terminal: up to its NUL, a panic's closing
    newline dropped, other newlines and escape sequences shown as backslash-x and two hex
    digits, never interpreted."""
    raw[-1:] = b"\0"
    message = raw[:raw.index(0)].decode("latin-1").rstrip("\n")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in message)


def crash(g: Host, addr: int, _a2: int, _a3: int) -> None:
    """LHCALL_CRASH: panic, or "Power down" from pm_power_off (ABI §9.2)."""
    raw = bytearray(g.memory.read(addr, CRASH_MESSAGE_BYTES))
    raw[-1] = 0
    message = raw[:raw.index(0)].decode("latin-1")
    if message == POWER_DOWN:
        raise PowerDown(message)
    raise GuestCrashed(_printable(raw))


def shutdown(g: Host, addr: int, how: int, _a3: int) -> None:
    """LHCALL_SHUTDOWN (2.6.25 on, call 2 in CRASH's place; ABI Appendix C).

    2.6.26's guest makes it three ways, all read from its code: lguest_power_off passes
    "Power down" with POWEROFF, lguest_panic the panic message with POWEROFF too, and
    lguest_restart the reboot command with RESTART.  So POWEROFF is CRASH again (status 0 for
    "Power down", a crash for anything else); RESTART ends the run with status 7, since
    lgemu does not start guests over.  lguest's Host restarted even when the reason could not
    be read (restart's command is often NULL, whose physical address is no memory), so the
    reason is read only as far as guest memory goes."""
    if how == LGUEST_SHUTDOWN_POWEROFF:
        crash(g, addr, 0, 0)
    if how != LGUEST_SHUTDOWN_RESTART:
        raise GuestKilled(BadShutdown(how))
    length = min(CRASH_MESSAGE_BYTES, max(0, g.memory.limit - addr))
    raw = bytearray(g.memory.read(addr, length)) if length and g.memory.valid(addr, length) \
        else bytearray(1)
    raise GuestRestart(_printable(raw))


def load_gdt(g: Host, addr: int, count: int, _a3: int) -> None:
    """LHCALL_LOAD_GDT (ABI §6)."""
    if count > GDT_ENTRIES:
        raise GuestKilled(TooManyGdtEntries(count))
    raw = g.memory.read(addr, 8 * count)
    g.gdt.load(list(struct.unpack(f"<{count}Q", raw)))


def load_gdt_entry(g: Host, index: int, lo: int, hi: int) -> None:
    """LHCALL_LOAD_GDT_ENTRY (2.6.30 on): one descriptor, `lo` and `hi` words, at `index`."""
    if index >= GDT_ENTRIES:
        raise GuestKilled(TooManyGdtEntries(index))
    g.gdt.load_entry(index, lo | hi << 32)


def send_interrupts(g: Host, _a1: int, _a2: int, _a3: int) -> None:
    """LHCALL_SEND_INTERRUPTS (2.6.31 on): the guest saw lguest_data.irq_pending when it
    enabled interrupts; the way back into the guest delivers them (`Guest._after_exit`)."""


def load_tls(g: Host, addr: int, _cpu: int, _a3: int) -> None:
    """LHCALL_LOAD_TLS: three descriptors into entries 6–8 (ABI §6.3)."""
    raw = g.memory.read(addr, 8 * GDT_ENTRY_TLS_ENTRIES)
    g.gdt.load_tls(list(struct.unpack(f"<{GDT_ENTRY_TLS_ENTRIES}Q", raw)))


def new_pgtable(g: Host, pgdir: int, _a2: int, _a3: int) -> None:
    """LHCALL_NEW_PGTABLE: the guest's write_cr3; a blank shadow re-pins the stack (ABI §5.5)."""
    if g.paging.new_pgtable(pgdir) and g.lg.stack_pages:
        g.paging.pin_stack(g.lg.esp1, g.lg.stack_pages)


def flush_tlb(g: Host, everything: int, _a2: int, _a3: int) -> None:
    """LHCALL_FLUSH_TLB: kernel and user (nonzero) or user only (ABI §7.4)."""
    g.paging.flush(everything=bool(everything))
    if everything and g.lg.stack_pages:
        g.paging.pin_stack(g.lg.esp1, g.lg.stack_pages)


def load_idt_entry(g: Host, vector: int, lo: int, hi: int) -> None:
    """LHCALL_LOAD_IDT_ENTRY (ABI §5.1)."""
    g.traps.load_idt_entry(vector, lo, hi)


def set_stack(g: Host, segment: int, esp: int, pages: int) -> None:
    """LHCALL_SET_STACK: where traps from ring 3 land (ABI §5.5)."""
    if segment & 3 != 1:
        raise GuestKilled(BadStackSegment(segment))
    if pages > MAX_STACK_PAGES:
        raise GuestKilled(BadStackPages(pages))
    g.lg.set_stack(segment, esp, pages)
    g.paging.pin_stack(esp, pages)


def task_switched(g: Host, ts: int, _a2: int, _a3: int) -> None:
    """LHCALL_TS: mirror the guest's TS flag into CR0 so FPU use raises #NM (ABI §9.3)."""
    g.set_ts(ts)


def set_clockevent(g: Host, delta_ns: int, _a2: int, _a3: int) -> None:
    """LHCALL_SET_CLOCKEVENT: arm (or with 0 stop) the one-shot timer (ABI §8)."""
    g.set_timer(delta_ns)


def halt(g: Host, _a1: int, _a2: int, _a3: int) -> None:
    """LHCALL_HALT: sleep until an interrupt is deliverable (ABI §9.1)."""
    g.halt()


def set_pte(g: Host, pgdir: int, vaddr: int, pte: int) -> None:
    """LHCALL_SET_PTE: a hint, never a memory write (ABI §7.2)."""
    g.paging.set_pte(pgdir, vaddr, pte)


def set_pmd(g: Host, pgdir: int, index: int, _a3: int) -> None:
    """LHCALL_SET_PMD (ABI §7.3)."""
    g.paging.set_pmd(pgdir, index)


def set_pte_pae(g: Host, pgdir: int, vaddr: int, pte_low: int) -> None:
    """LHCALL_SET_PTE of a PAE guest: the entry's high half is the fourth argument (ABI §7.6)."""
    g.paging.set_pte(pgdir, vaddr, g.lg.arg4 << 32 | pte_low)


def set_pmd_pae(g: Host, _pmd_page: int, _index: int, _a3: int) -> None:
    """LHCALL_SET_PMD of a PAE guest, a middle-directory entry: lguest dropped every shadow
    (and re-pinned the stack) rather than find the ones it affects (ABI §7.6)."""
    g.paging.flush(everything=True)
    if g.lg.stack_pages:
        g.paging.pin_stack(g.lg.esp1, g.lg.stack_pages)


def notify(g: Host, addr: int, _a2: int, _a3: int) -> None:
    """LHCALL_NOTIFY: a virtqueue kick or an early-console string (ABI §10.5)."""
    g.notify(addr)


def bind_dma(g: Host, key: int, addr: int, packed: int) -> None:
    """LHCALL_BIND_DMA (2.6.23): `packed` is the buffer count << 8 | the interrupt."""
    g.bind_dma(key, addr, packed)


def send_dma(g: Host, key: int, addr: int, _a3: int) -> None:
    """LHCALL_SEND_DMA (2.6.23)."""
    g.send_dma(key, addr)


# Every handler under the name the eras give its call (`Era.hypercalls`).  2.6.31 renamed
# 2.6.24's SET_PMD (a page directory entry) to SET_PGD and gave SET_PMD to PAE's middle
# level: `HypercallTable.of` leaves that one out for a two-level guest, which lguest's
# two-level Host did not know either, and gives PAE guests their own (`set_pmd_pae`).
BY_NAME: dict[str, Handler] = {
    "FLUSH_ASYNC": flush_async,
    "LGUEST_INIT": lguest_init,
    "CRASH": crash,
    "LOAD_GDT": load_gdt,
    "LOAD_GDT_ENTRY": load_gdt_entry,
    "NEW_PGTABLE": new_pgtable,
    "FLUSH_TLB": flush_tlb,
    "LOAD_IDT_ENTRY": load_idt_entry,
    "SET_STACK": set_stack,
    "TS": task_switched,
    "SET_CLOCKEVENT": set_clockevent,
    "HALT": halt,
    "SET_PTE": set_pte,
    "SET_PMD": set_pmd,
    "SET_PGD": set_pmd,
    "LOAD_TLS": load_tls,
    "NOTIFY": notify,
    "SEND_INTERRUPTS": send_interrupts,
    "SHUTDOWN": shutdown,
    "BIND_DMA": bind_dma,
    "SEND_DMA": send_dma,
}

HANDLERS: dict[int, Handler] = {
    Hcall.FLUSH_ASYNC: flush_async,
    Hcall.LGUEST_INIT: lguest_init,
    Hcall.CRASH: crash,
    Hcall.LOAD_GDT: load_gdt,
    Hcall.NEW_PGTABLE: new_pgtable,
    Hcall.FLUSH_TLB: flush_tlb,
    Hcall.LOAD_IDT_ENTRY: load_idt_entry,
    Hcall.SET_STACK: set_stack,
    Hcall.TS: task_switched,
    Hcall.SET_CLOCKEVENT: set_clockevent,
    Hcall.HALT: halt,
    Hcall.SET_PTE: set_pte,
    Hcall.SET_PMD: set_pmd,
    Hcall.LOAD_TLS: load_tls,
    Hcall.NOTIFY: notify,
}


class HypercallTable(Record, frozen=True):
    """One era's hypercalls as the Host dispatches them: number → handler, the numbers the
    Host itself looks for, names for the event log and -v, and its lguest_data layout."""

    era: Era
    handlers: Mapping[int, Handler]
    init: int  # LGUEST_INIT
    notify: int  # NOTIFY (-1 where the era has none)
    layout: DataLayout

    @classmethod
    def of(cls, era: Era, pae: bool = False) -> HypercallTable:
        """The table for `era`, built once at launch; `pae` for a PAE guest (eras with
        `Era.pae` only), whose SET_PMD and SET_PTE are ABI §7.6's."""
        if era is ERA_2_6_24 and not pae:
            return TABLE_2_6_24
        pae_only = {"SET_PMD"} if "SET_PGD" in era.hypercalls and not pae else set()
        handlers = {nr: BY_NAME[name] for name, nr in era.hypercalls.items()
                    if name in BY_NAME and name not in pae_only}
        if pae:
            handlers[era.hypercalls["SET_PMD"]] = set_pmd_pae
            handlers[era.hypercalls["SET_PTE"]] = set_pte_pae
        return cls(era, handlers, era.hypercalls["LGUEST_INIT"],
                   era.hypercalls.get("NOTIFY", -1), DataLayout.of(era))

    def name(self, nr: int) -> str:
        """The era's name of call `nr` (the number if it has none)."""
        return self.era.hcall_name(nr)


TABLE_2_6_24 = HypercallTable(ERA_2_6_24, HANDLERS, Hcall.LGUEST_INIT, Hcall.NOTIFY,
                              LAYOUT_2_6_24)


def run_hypercall(g: Host, nr: int, a1: int, a2: int, a3: int,
                  from_ring: bool = False) -> None:
    """Execute one call, synchronous or from the ring."""
    table = g.hcalls
    handler = table.handlers.get(nr)
    if handler is None:
        raise GuestKilled(BadHypercall(nr))
    g.stats.hypercalls[nr] += 1
    if g.observers:
        g.emit("hcall", events.hcall(nr, a1, a2, a3, from_ring, table.name(nr)))
    handler(g, a1, a2, a3)


def _drain_ring_pass(g: Host) -> bool:
    """One pass over the async ring (ABI §3.5); True if it stopped early at a NOTIFY."""
    lg = g.lg
    data = lg.data
    for _ in range(LHCALL_RING_SIZE):
        slot = lg.ring_cursor
        if data.ring_status(slot) == HCALL_STATUS_EMPTY:
            return False
        lg.ring_cursor = (slot + 1) % LHCALL_RING_SIZE
        nr, a1, a2, a3 = data.ring_args(slot)
        g.lg.arg4 = data.ring_arg4(slot)
        g.stats.async_hypercalls[nr] += 1
        run_hypercall(g, nr, a1, a2, a3, from_ring=True)
        data.ring_done(slot)
        if nr == g.hcalls.notify:
            return True
    return False


def hypercall(g: Host, nr: int, a1: int, a2: int, a3: int) -> None:
    """A synchronous hypercall, with lguest's order of work (ABI §3.2)."""
    data = g.lg.data
    if data is None:
        if nr != g.hcalls.init:
            raise GuestKilled(HypercallBeforeInit(nr))
        g.stats.hypercalls[nr] += 1
        if g.observers:
            g.emit("hcall", events.hcall(nr, a1, a2, a3, name=g.hcalls.name(nr)))
        lguest_init(g, a1, a2, a3)
        return
    # lguest returned to the Launcher at a ring NOTIFY and drained the rest on re-entry;
    # the Launcher's work is synchronous here, so that is simply another pass.  Most calls
    # find the ring empty: look at the next slot's status byte before setting up a pass.
    if data.ring_status(g.lg.ring_cursor) != HCALL_STATUS_EMPTY:
        while _drain_ring_pass(g):
            pass
    run_hypercall(g, nr, a1, a2, a3)
