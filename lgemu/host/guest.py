"""The Host's run loop: one guest, its CPU, and every exit lguest's Host module handled.

`Guest.run()` slices execution by instruction count (the only deterministic way to stop
Unicorn, Unicorn §9.7) and between slices does what lguest did before every guest entry: fire
the timer, wake or idle a halted guest, inject an interrupt.  Inside a slice, Unicorn calls
back for hypercalls, traps, port I/O, `cpuid` and `rdtsc`; they are handled in place without
stopping, except HALT, a timer that falls due before the slice ends, and the end of the run.

Exits from hooks never raise through Unicorn: the outcome is stored, the CPU is stopped, and
`run()` returns it.  Signals to lgemu likewise (`lgemu.signals`): the handler only notes them
and ends the CPU run (`interrupt`); the loop acts on them between runs.

Controllers (debuggers, trace windows, `--stop-at`) steer the loop without changing what the
guest sees.  A *slice* is the guest's own schedule: its length, and the work done at its start,
depend only on guest state, so two runs cut the same way.  A controller may cut a slice into
several *runs* of the CPU; between runs nothing happens but the controller's call:

* `Guest.add_controller(controller, stage)` adds a `Controller`: its `boundary(guest) ->
  int | None` is called before every run with the guest between two instructions
  (`guest.icount` of them executed).  The return value caps the next run's length (None:
  no cap; at least 1), e.g. `N - guest.icount` to get control back at exactly instruction N.
  `boundary` may block (a debugger waiting for its user), change registers or memory, or
  raise an `LgemuExit` to end the run.  Controllers are asked in the order of their `Stage`,
  then of their adding: watchers first, and what may rewind the guest (time travel) last.
* `Guest.add_observer(observer)` adds an `events.Observer` of the lguest event log.
* From a code hook (`Cpu.on_code`), `guest.pause()` ends the current run *before* the
  instruction the hook fired for; from a memory hook (`Cpu.on_mem_access`),
  `guest.pause_after()` ends it once the current instruction is over; `Cpu.set_breakpoints`
  ends it before any instruction at the given addresses.  Either way the slice goes on
  after the next `boundary` call, as if it had never been cut.
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from ..abi import (
    FIRST_EXTERNAL_VECTOR,
    FIRST_NON_EXCEPTION,
    GUEST_CS,
    GUEST_DS,
    LGUEST_TRAP_ENTRY,
    PAGE_SIZE,
    PTE_PSE,
    TSS_SELECTOR,
    X86_CR0_TS,
    Gate,
    Vector,
)
from ..abi_eras import PageTables
from ..devices.base import Device
from ..devices.console import ConsoleOutput
from ..devices.status import refresh_acked, reset_notified, status_written
from ..devices.vring import Vring, WrittenPages
from ..errors import (
    ExitStatus,
    GuestKilled,
    GuestStuck,
    InternalError,
    LgemuExit,
    LimitReached,
)
from ..kills import (
    BadNotifyAddress,
    BadStatusNotify,
    CpuFailure,
    NotMemory,
    SegmentLoad,
    SwitcherAccess,
    TripleFault,
)
from ..launcher import BootInfo
from ..machine.cpu import CR4_PAE, GUEST_CR0, GUEST_CR4, Cpu, CpuError, Reg, SegmentLoadError
from ..machine.memory import HOST_GDT, HOST_TSS, GuestMemory, switcher_linear
from ..record import Record, factory
from ..signals import SIGNALS
from . import cpu_model, events
from .clock import Clock, ClockState
from .hypercalls import HypercallTable, hypercall
from .interrupts import Interrupts, InterruptsState
from .paging import Opcode, Paging, PagingState, map_kernel_half
from .paging_pae import PaePaging
from .segments import TSS_LIMIT, Gdt
from .spin import Spins
from .state import LguestState
from .traps import GP, Traps

if TYPE_CHECKING:  # a boot of the 2.6.23 or 4.x era brings these in (assemble, attach_pci)
    from ..devices.dma_bus import DmaBus
    from ..devices.pci import PciBus

SLICE = 1_000_000  # instructions per slice when nothing is waiting
PENDING_SLICE = 10_000  # while an interrupt waits for the guest to unmask it
GC_THRESHOLD = 100_000  # allocations between young-generation collections during a run
IDLE_WAIT_MAX_S = 0.25  # longest wait on host input before the run loop looks around
# How far a paced guest's clock may run ahead of the host's (see `_idle`): a boot's sleeps
# and delay-loop calibration are not slowed down, while a guest idling for ever costs one
# such burst of CPU and then next to none.
PACE_LEAD_S = 0.5
EFLAGS_BOOT = 0x202
IRQ_TIMER = 0
ICEBP = 0xF1
BARE_CLI = Opcode(frozenset(), 0xFA, 0)  # `cli` with no prefix (what lguest compared)
OPCODE_IN = frozenset({0xE4, 0xE5, 0xEC, 0xED})  # ABI §5.7: in al/ax/eax, imm8 or dx
OPCODE_OUT = frozenset({0xE6, 0xE7, 0xEE, 0xEF})
OPSIZE_PREFIX = 0x66
PS2_STATUS_PORT = 0x64  # 4.x's Launcher says "ready" here (1) instead of all ones
# The prefixes lguest's emulate_insn understood in front of in/out: none, or one 0x66.
EMULATED_PREFIXES = (frozenset(), frozenset({OPSIZE_PREFIX}))
# What every exit reads in one C call (a hypercall needs no more), and what a trap adds.
EXIT_REGS = (Reg.CS, Reg.EAX, Reg.EDX, Reg.EBX, Reg.ECX)
TRAP_REGS = (Reg.EIP, Reg.SS, Reg.ESP, Reg.EFLAGS)
STRING_IO_OPCODES = frozenset({0x6C, 0x6D, 0x6E, 0x6F})
SPIN_STATE = (Reg.EAX, Reg.ECX, Reg.EDX, Reg.EBX, Reg.ESP, Reg.EBP, Reg.ESI, Reg.EDI,
              Reg.EFLAGS)  # lgemu.host.spin.STATE's order
VMCALL = b"\x0f\x01\xc1"  # 2.6.30-2.6.33's hypercall (one left in 3.0), #UD without VMX
VMCALL_PATCH = bytes((0xCD, LGUEST_TRAP_ENTRY, 0x90))  # what lguest rewrote it to: int $0x1f; nop


class Stage(IntEnum):
    """When a controller is asked at a run boundary, relative to the others."""

    TRACE = 0  # trace windows (lgemu.debug.trace): they see the guest before anyone moves it
    STATUS = 1  # the status line (lgemu.ui): reads counters only
    STEER = 2  # --stop-at and the gdb stub, whose time travel rewinds the guest: last


class Controller(Protocol):
    """Steers the run loop from run boundaries (see the module docstring)."""

    def boundary(self, guest: Guest) -> int | None:
        """Called between two instructions before every run; returns a cap on the next
        run's length, or None."""


class Stats(Record):
    """What happened during a run (for -v and benchmarks)."""

    hypercalls: Counter = factory(Counter)
    async_hypercalls: Counter = factory(Counter)
    traps: Counter = factory(Counter)
    port_io: Counter = factory(Counter)
    page_fills: int = 0  # #PFs absorbed by filling the shadow page directory
    vring: Counter = factory(Counter)  # chains returned, by queue name
    slices: int = 0

    def copy(self) -> Stats:
        """A copy whose counters later counting cannot change."""
        return Stats(Counter(self.hypercalls), Counter(self.async_hypercalls),
                     Counter(self.traps), Counter(self.port_io), self.page_fills,
                     Counter(self.vring), self.slices)


class LoopState(Record, frozen=True):
    """Persist: where the run loop stands between two runs of the CPU."""

    stats: Stats
    outcome: LgemuExit | None
    slice_left: int
    slice_end_ns: int
    deferred_fault: tuple[int, int, int] | None
    deferred_regs: tuple[tuple[Reg, int], ...]


class GuestState(Record, frozen=True):
    """Persist: the Host's whole state for one guest, component by component (guest memory,
    the host pages and the CPU's registers are saved beside it, by `lgemu.debug.snapshot`)."""

    lg: LguestState
    clock: ClockState
    interrupts: InterruptsState
    paging: PagingState
    gdt: tuple[int, ...]
    traps: tuple[Gate | None, ...]
    vrings: tuple[tuple[int, int], ...]  # in `Guest.queues` order
    devices: tuple[object, ...]  # in `Guest.devices` order
    console_output: int
    loop: LoopState


def cpu_kill(error: CpuError) -> GuestKilled:
    """What a CPU error means for the guest: a segment that would not load is lguest's
    "trap 256" (its switcher faulted reloading the guest's segments); anything else Unicorn
    could not run."""
    if isinstance(error, SegmentLoadError):
        return GuestKilled(SegmentLoad(str(error)))
    return GuestKilled(CpuFailure(str(error)))


class Guest:
    """An lguest guest: the Host's state for it and the loop that runs it."""

    def __init__(self, memory: GuestMemory, boot: BootInfo, devices: list[Device],
                 console: ConsoleOutput, clock: Clock) -> None:
        self.memory = memory
        # The guest's lguest ABI, chosen once at launch (the Launcher laid out for it): its
        # hypercall numbers and lguest_data layout (`hcalls`), where its arguments are.
        self.era = era = boot.era
        self._cpuid = cpu_model.leaves(era.name)
        self.hcalls = HypercallTable.of(era, boot.pae)
        self._pae = boot.pae  # three-level page tables (ABI §7.6)
        self._kvm_args = era.hcall_regs[0] == "ebx"  # 2.6.30 on: ebx, ecx, edx
        self._vmcall = era.vmcall_rewrite  # 2.6.30-3.0: the Host patches a vmcall
        self._skip_cli = era.cli_skipped  # 2.6.34 on: a ring-1 `cli` is stepped over
        self._in_sized = era.port_in_sized  # 3.1 on: an unanswered `in` fills what it reads
        self._ps2_ready = era.ps2_status_ready  # 4.x: port 0x64 reads 1
        self.boot = boot
        self.console = console
        self.clock = clock
        self.cpu = Cpu(memory)
        # What the guest registered (lguest_data, kernel address, stack, …), stored once:
        # the hypercalls write it, the components below read it.
        self.lg = LguestState()
        self.paging = (PaePaging if boot.pae else Paging)(memory, self.cpu, self.lg)
        if not era.pte_pwt_killed:  # 2.6.25 on: a write-through PTE is the guest's business
            self.paging.bad_pte_flags = PTE_PSE
        self.gdt = Gdt(memoryview(memory.host)[HOST_GDT * PAGE_SIZE:(HOST_GDT + 1) * PAGE_SIZE],
                       switcher_linear(HOST_TSS))
        self.traps = Traps(self.cpu, self.paging, self.gdt, self.lg)
        self.traps.host_gates_dpl0 = era.host_gates_dpl0
        self.interrupts = Interrupts(self.traps, self.lg)
        self.stats = Stats()
        self.outcome: LgemuExit | None = None
        self._stop_requested = False
        self._paused = False  # a controller's hook cut the current run (see `pause`)
        self._slice_left = 0  # instructions left in the current slice (0: at a slice start)
        self._slice_end_ns = 0
        # Whatever steers the loop from run boundaries, in the order they are asked (see the
        # module docstring); changed only by add_controller/remove_controller.
        self.controllers: tuple[Controller, ...] = ()
        self._staged: list[tuple[Stage, Controller]] = []
        # A fault an instruction hook found, delivered at slice end: (vector, EIP, error).
        self._deferred_fault: tuple[int, int, int] | None = None
        self._deferred_regs: tuple[tuple[Reg, int], ...] = ()  # undone before that #GP
        # Observers of lguest events (hypercalls, traps, interrupts, vring operations), in
        # the order they were added; see `emit`.
        self.observers: tuple[events.Observer, ...] = ()
        self.devices = devices
        self.queues: dict[int, tuple[Device, Vring]] = {}
        # Guest pages the devices wrote (DMA): their translated code is dropped before the
        # guest runs on (Unicorn §8).
        self.written = WrittenPages()
        # (host monotonic seconds, guest ns) when `run` began: paced halts keep the guest's
        # clock from running ahead of the host's from there.
        self._pace_origin = (time.monotonic(), 0)
        for device, layout in zip(devices, boot.device_page.devices, strict=True):
            rings = [Vring(memory, f"{device.name}.{q.index}", q.pfn, q.num, q.irq,
                           self.written) for q in layout.queues]
            for ring in rings:
                ring.on_push = self._vring_pushed
            device.attach(rings, self.interrupts.raise_irq)
            device.wall_ns = self._wall_ns
            device.icount = lambda: self.icount
            self.queues.update({ring.pfn: (device, ring) for ring in rings})
        # 2.6.25 on (5-byte descriptors): descriptors by their offset in the device page, for
        # a NOTIFY on one (2.6.25: a reset; 2.6.26 on: a status write) and the accepted
        # features (2.6.25 leaves them to be read).
        era = boot.era
        self._descriptors = {layout.offset: (device, layout) for device, layout in
                             zip(devices, boot.device_page.devices, strict=True)
                             } if "feature_len" in era.device_desc else {}
        self._status_notify = era.status_notify
        self._read_acked = bool(self._descriptors) and not era.status_notify
        self.pci: PciBus | None = None  # 4.x: bus 0 behind ports 0xCF8-0xCFF
        self.dma: DmaBus | None = None  # 2.6.23: the DMA lguest bus
        self._install_hooks()
        self._boot_cpu()
        # Waiting loops whose iterations may be counted instead of run (lgemu.host.spin):
        # virtual clock only, and never when asked not to (to compare).
        self.spins: Spins | None = None
        if not clock.realtime and not os.environ.get("LGEMU_NO_SKIP"):
            self.spins = Spins(self._code_bytes, self._in_ram, self._loop_regs,
                               self.cpu.set_reg, self._arm_loop_heads, boot.page_offset)

    def attach_pci(self, devices: list[Device]) -> None:
        """4.x: put `devices` on PCI bus 0 instead of the device page (docs/eras.md): their
        configuration space answers the guest's port I/O, their BARs its loads and stores
        in a window of pages above guest memory."""
        from ..devices.virtio_pci import BAR_SIZE, pci_bus
        window = (self.memory.size + (1 << 20) - 1) & ~((1 << 20) - 1)
        self.pci = bus = pci_bus(devices, self.memory, window, self.interrupts.raise_irq,
                                 self.written)
        size = (len(bus.slots) + 1) * BAR_SIZE
        self.cpu.map_mmio(window, size,
                          self._guarded(lambda offset, n: bus.mmio_read(window + offset, n), 0),
                          self._guarded(lambda offset, n, value:
                                        bus.mmio_write(window + offset, n, value), None))
        self.paging.iomem = (window, window + size)
        for function in bus.slots.values():
            function.on_push = self._vring_pushed  # type: ignore[attr-defined]
        for device in devices:
            device.wall_ns = self._wall_ns
        self.devices = [*self.devices, *devices]

    def attach_dma(self, bus: DmaBus, devices: list[Device]) -> None:
        """2.6.23: serve BIND_DMA/SEND_DMA for `devices` through `bus`, already laid out on
        the page at the top of RAM (`lgemu.devices.dma_bus`)."""
        self.dma = bus
        bus.connect(self.interrupts.raise_irq, self.written)
        for device in devices:
            device.wall_ns = self._wall_ns
        self.devices = [*self.devices, *devices, bus]

    def bind_dma(self, key: int, addr: int, packed: int) -> None:
        """LHCALL_BIND_DMA's answer goes back in EAX, as lguest's Host did."""
        self.cpu.set_reg(Reg.EAX, self.dma.bind(key, addr, packed) if self.dma else 0)

    def send_dma(self, key: int, addr: int) -> None:
        """LHCALL_SEND_DMA."""
        if self.dma is not None:
            self.dma.send(key, addr)

    # -- Persist ---------------------------------------------------------------------------
    def save_state(self) -> GuestState:
        """The Host's state for this guest, between two runs (see `GuestState`)."""
        return GuestState(
            self.lg.save_state(), self.clock.save_state(), self.interrupts.save_state(),
            self.paging.save_state(), self.gdt.save_state(), self.traps.save_state(),
            tuple(ring.save_state() for _, ring in self.queues.values()),
            tuple(device.save_state() for device in self.devices),
            self.console.save_state(),
            LoopState(self.stats.copy(), self.outcome, self._slice_left, self._slice_end_ns,
                      self._deferred_fault, self._deferred_regs))

    def restore_state(self, state: GuestState) -> None:
        """Put the Host's state back as `save_state` saw it."""
        self.lg.restore_state(state.lg)
        self.clock.restore_state(state.clock)
        self.interrupts.restore_state(state.interrupts)
        self.paging.restore_state(state.paging)
        self.gdt.restore_state(state.gdt)
        self.traps.restore_state(state.traps)
        for (_, ring), ring_state in zip(self.queues.values(), state.vrings, strict=True):
            ring.restore_state(ring_state)
        for device, device_state in zip(self.devices, state.devices, strict=True):
            device.restore_state(device_state)
        self.console.restore_state(state.console_output)
        loop = state.loop
        self.stats = loop.stats.copy()
        self.outcome = loop.outcome
        self._slice_left, self._slice_end_ns = loop.slice_left, loop.slice_end_ns
        self._deferred_fault, self._deferred_regs = loop.deferred_fault, loop.deferred_regs

    # -- the state of ABI §2 ----------------------------------------------------------------
    def _boot_cpu(self) -> None:
        cpu = self.cpu
        if self.era.page_tables is not PageTables.LAUNCHER and not self._pae:
            map_kernel_half(self.memory.ram, self.boot.pgdir, self.memory.ram_size)
        cpu.set_gdt(switcher_linear(HOST_GDT), 32 * 8 - 1)
        self.paging.new_pgtable(self.boot.pgdir)
        cpu.set_reg(Reg.CR4, GUEST_CR4 | (CR4_PAE if self._pae else 0))
        cpu.set_reg(Reg.CR0, GUEST_CR0)
        cpu.set_tr(TSS_SELECTOR, switcher_linear(HOST_TSS), TSS_LIMIT)
        cpu.enter(1, GUEST_CS, GUEST_DS, self.boot.entry, 0)
        cpu.set_reg(Reg.DS, GUEST_DS)
        cpu.set_reg(Reg.ES, GUEST_DS)
        cpu.set_reg(Reg.EFLAGS, EFLAGS_BOOT)
        for reg in (Reg.EAX, Reg.EBX, Reg.ECX, Reg.EDX, Reg.ESI, Reg.EDI, Reg.EBP):
            cpu.set_reg(reg, 0)

    def _install_hooks(self) -> None:
        cpu = self.cpu
        cpu.on_interrupt(self._guarded(
            self._on_interrupt_realtime if self.clock.realtime else self._on_interrupt, None))
        cpu.on_invalid(self._guarded(self._on_invalid, None))
        cpu.on_port_in(self._guarded(self._on_port_in, 0))
        cpu.on_port_out(self._guarded(self._on_port_out, None))
        cpu.on_cpuid(self._guarded(self._on_cpuid, None))
        cpu.on_sysenter(self._guarded(self._on_sysenter, None))
        cpu.on_syscall(self._guarded(self._on_syscall, None))
        cpu.on_rdtscp(self._guarded(self._on_rdtscp, None))
        cpu.on_rdtsc(self._guarded(self._on_rdtsc, None))
        cpu.on_bad_access(self._guarded(self._on_bad_access, None))

    def _guarded(self, fn: Any, default: Any) -> Any:
        """Wrap a hook: an ending run is recorded and the CPU stopped, never raised."""
        def hook(*args: Any) -> Any:
            try:
                return fn(*args)
            except LgemuExit as outcome:
                self.finish(outcome)
            except CpuError as e:  # a segment the guest gave us would not load
                self.finish(cpu_kill(e))
            except Exception as bug:
                if os.environ.get("LGEMU_DEBUG"):
                    raise
                self.finish(InternalError(f"{type(bug).__name__}: {bug}"))
            return default
        return hook

    # -- what is attached to a run ------------------------------------------------------
    def add_controller(self, controller: Controller, stage: Stage) -> None:
        """Ask `controller` at every run boundary, after those of earlier stages and those
        of its stage added before it."""
        self._staged.append((stage, controller))
        self._staged.sort(key=lambda staged: staged[0])  # stable: adding order within a stage
        self.controllers = tuple(c for _, c in self._staged)

    def remove_controller(self, controller: Controller) -> None:
        """Stop asking `controller` (nothing if it was not added)."""
        self._staged = [(s, c) for s, c in self._staged if c is not controller]
        self.controllers = tuple(c for _, c in self._staged)

    def add_observer(self, observer: events.Observer) -> None:
        """Tell `observer` every lguest event from now on."""
        self.observers = (*self.observers, observer)

    def remove_observer(self, observer: events.Observer) -> None:
        """Stop telling `observer` (nothing if it was not added)."""
        self.observers = tuple(o for o in self.observers if o != observer)

    # -- helpers for hypercalls and devices ----------------------------------------------
    def emit(self, kind: str, text: str) -> None:
        """Tell the observers (tracers) about an lguest event; callers check
        `self.observers` first so an untraced run pays nothing."""
        icount = self.clock.executed + self.position()
        for observer in self.observers:
            observer(icount, kind, text)

    def position(self) -> int:
        """Instructions into the current slice (0 between slices)."""
        return self.cpu.slice_position if self._in_slice else 0

    _in_slice = False
    _started = False  # the first slice has started (see `_step`)
    # Guest time (ns) `run_until` runs to: slices end there, a halted guest skips there.
    horizon_ns: int | None = None

    @property
    def icount(self) -> int:
        """Instructions executed so far; inside a hook, including the one being executed."""
        return self.clock.executed + self.position()

    def pause(self) -> None:
        """From a code hook: end this run before the instruction the hook fired for; the
        slice resumes after the controllers' next `boundary` (the guest sees nothing)."""
        self._paused = True
        self.cpu.stop_before_current()

    def pause_after(self) -> None:
        """From a memory (or any) hook: end this run once the current instruction is over;
        the slice resumes as for `pause`."""
        self._paused = True
        self.cpu.stop_after_current()

    def interrupt(self) -> None:
        """From a signal handler (`lgemu.signals`), wherever it ran: end the current CPU run,
        if one is going, after the current instruction; the run loop then ends the run.
        Nothing is cut short and nothing raised, so the guest's state stays whole."""
        if self._in_slice:
            self._paused = True
            self.cpu.stop_soon()

    def stop(self) -> None:
        """End the current slice after this instruction."""
        self._stop_requested = True
        self.cpu.stop()

    def finish(self, outcome: LgemuExit) -> None:
        """The run is over (first outcome wins)."""
        if self.outcome is None:
            self.outcome = outcome
        if self._in_slice:
            self.stop()

    def halt(self) -> None:
        self.interrupts.halted = True
        self.stop()

    def set_timer(self, delta_ns: int) -> None:
        self.clock.set_timer(delta_ns, self.position())
        deadline = self.clock.deadline_ns
        if self._in_slice and deadline is not None and deadline < self._slice_end_ns:
            self.stop()

    def set_ts(self, ts: int) -> None:
        """LHCALL_TS: the guest's TS flag, mirrored into CR0 (the only place it is kept)."""
        cr0 = self.cpu.reg(Reg.CR0)
        want = cr0 | X86_CR0_TS if ts else cr0 & ~X86_CR0_TS
        if want != cr0:
            self.cpu.set_reg(Reg.CR0, want)

    def notify(self, addr: int) -> None:
        """LHCALL_NOTIFY: route a kick to its queue, a status write (2.6.26 on) to its device,
        or print an early-console string."""
        target = self.queues.get(addr // PAGE_SIZE)
        if target is not None:
            device, ring = target
            if self._read_acked:
                self._refresh_acked(device)
            device.kick(ring)
            self._invalidate_written()
            return
        page = self.boot.device_page.address
        if self._descriptors and page <= addr < page + PAGE_SIZE:
            self._status_written(addr - page)
            return
        if addr >= self.memory.limit:
            raise GuestKilled(BadNotifyAddress(addr))
        self.console.write(self.memory.cstring(addr, self.memory.limit - addr))

    def _status_written(self, offset: int) -> None:
        """NOTIFY(device page + offset): the driver of the device whose descriptor starts
        there wrote its status byte, or (2.6.25) reset it (lgemu.devices.status)."""
        found = self._descriptors.get(offset)
        if found is None:
            raise GuestKilled(BadStatusNotify(offset))
        device, layout = found
        if self._status_notify:
            status = status_written(self.memory.ram, self.boot.device_page, layout, device)
        else:
            reset_notified(self.memory.ram, self.boot.device_page, layout, device)
            status = 0
        self._invalidate_written()  # a reset zeroed the device's rings
        if self.observers:
            self.emit("device", events.device_status(device.name, status, device.acked))

    def _refresh_acked(self, device: Device) -> None:
        for found, layout in self._descriptors.values():
            if found is device:
                refresh_acked(self.memory.ram, self.boot.device_page, layout, device)
                return

    # -- exits inside a slice ------------------------------------------------------------
    def _on_interrupt(self, vector: int) -> None:
        cs, eax, edx, ebx, ecx = self.cpu.regs(EXIT_REGS)
        if vector == LGUEST_TRAP_ENTRY and cs & 3 == 1:  # no CPU exception uses vector 31
            if self._kvm_args:
                if self._pae:
                    self.lg.arg4 = self.cpu.reg(Reg.ESI)
                hypercall(self, eax, ebx, ecx, edx)
            else:
                hypercall(self, eax, edx, ebx, ecx)
        else:
            eip, ss, esp, eflags = self.cpu.regs(TRAP_REGS)
            self._trap(vector, eip, cs & 3, (cs, ss, esp, eflags))
        if self.interrupts.pending:
            self._after_exit()

    def _on_interrupt_realtime(self, vector: int) -> None:
        """Realtime: every hypercall or trap also looks at the host's clock.  A slice is
        planned at the rate recent code ran at (`Clock.slice_budget`), and code the CPU meets
        for the first time runs several times slower: a timer that fell due meanwhile ends
        the slice at this exit instead of at the planned count."""
        self._on_interrupt(vector)
        if self.clock.due():
            self.stop()

    def _trap(self, vector: int, eip: int, cpl: int,
              context: tuple[int, int, int, int]) -> None:
        cpu, traps = self.cpu, self.traps
        # Vectors from 32 up only come from `int n`; below, ask the CPU what happened.
        error_code, software = cpu.fault_info() if vector < FIRST_NON_EXCEPTION else (0, True)
        if software:
            self.stats.traps[vector] += 1
            if self.observers:
                self.emit("trap", events.software_interrupt(vector, eip, cpl))
        elif vector != Vector.PF:
            self.stats.traps[vector] += 1
            if self.observers:
                self.emit("trap", events.trap(vector, eip, error_code))
        if software:  # `int n`, `int3`, `into`: EIP is already past the instruction
            if traps.software_interrupt_allowed(vector, cpl):
                traps.deliver(vector, eip, None, direct=True, software=True, context=context)
            elif traps.via_host_gate(vector, cpl):  # 2.6.27 on: delivered by the Host
                traps.deliver(vector, eip, None, direct=False, software=True, context=context)
            else:
                start = eip - self._software_int_length(vector, eip)
                traps.deliver(GP, start, vector * 8 + 2, direct=False)
            return
        if vector == Vector.PF:
            cr2 = cpu.reg(Reg.CR2)  # only trustworthy inside this hook (Unicorn §9.1)
            if self.paging.demand_fault(cr2, error_code):
                self.stats.page_fills += 1
                if self.observers:
                    self.emit("pgfill", events.page_fill(eip, cr2, error_code))
                cpu.ack_exception()
                return
            self.stats.traps[Vector.PF] += 1
            if self.observers:
                self.emit("trap", events.trap(Vector.PF, eip, error_code, cr2))
            if self._is_string_io(eip):
                # Unicorn touches memory before it asks about the port; the CPU checks the
                # I/O privilege first, and the guest never has it (ABI §5.7): #GP(0).
                traps.deliver(GP, eip, 0, direct=False)
                return
            if self.lg.data is not None:
                self.lg.data.set_cr2(cr2)
            traps.deliver(Vector.PF, eip, error_code, direct=False)
            return
        if vector == GP and self._skip_cli and cpl == 1 and error_code == 0 \
                and self.paging.opcode_at(eip) == BARE_CLI:
            # 2.6.34 on, lguest's Host (4.x: its Launcher) answered the #GP of a kernel
            # `cli` by moving EIP past it: kernels built for CPUs without cmpxchg8b emulate
            # it with interrupts disabled natively, and the guest ran well enough without it.
            cpu.ack_exception()
            cpu.set_reg(Reg.EIP, (eip + 1) & 0xFFFFFFFF)
            return
        traps.reflect(vector, eip, error_code)

    def _software_int_length(self, vector: int, next_eip: int) -> int:
        """`int3` (CC) and `into` (CE) are one byte; `int n` (CD nn) is two."""
        if vector in (Vector.BP, Vector.OF):
            try:
                if self.paging.read_virtual(next_eip - 1, 1)[0] in (0xCC, 0xCE):
                    return 1
            except GuestKilled:
                pass
        return 2

    def _rewrite_vmcall(self, eip: int) -> bool:
        """2.6.30-3.0 (`Era.vmcall_rewrite`): a ring-1 `vmcall` at `eip` becomes `int $0x1f;
        nop` in guest memory, as lguest's Host patched it, and runs again from `eip` as a
        hypercall.  The three bytes are written through the guest's page tables byte by byte
        (they may straddle two pages), whether or not the guest mapped them writable, as
        lguest wrote them; then the pages' translated code is dropped (Unicorn §8.3).  False
        if it is not such a vmcall."""
        if not self._vmcall or self.cpu.reg(Reg.CS) & 3 != 1:
            return False
        where: list[int] = []
        for i in range(len(VMCALL)):
            pa = self.paging.translate((eip + i) & 0xFFFFFFFF, mark=False)
            if pa is None:
                return False
            where.append(pa)
        ram = self.memory.ram
        if bytes(ram[pa] for pa in where) != VMCALL:
            return False
        for pa, byte in zip(where, VMCALL_PATCH, strict=True):
            ram[pa] = byte
            self.written.add(pa, 1)
        self._invalidate_written()
        if self.observers:
            self.emit("trap", events.vmcall_rewritten(eip))
        return True

    def _on_invalid(self) -> None:
        eip = self.cpu.reg(Reg.EIP)
        if self._vmcall and self._rewrite_vmcall(eip):
            return
        pa = self.paging.translate(eip, mark=False)
        if pa is not None and self.memory.ram[pa] == ICEBP:
            # Unicorn has no #DB for icebp ("int1"); the CPU raises one, as a trap (EIP
            # after it) with no gate DPL check.
            self.stats.traps[Vector.DB] += 1
            if self.observers:
                self.emit("trap", events.trap(Vector.DB, (eip + 1) & 0xFFFFFFFF, 0))
            self.traps.reflect(Vector.DB, (eip + 1) & 0xFFFFFFFF, 0)
        else:
            self.stats.traps[Vector.UD] += 1
            if self.observers:
                self.emit("trap", events.trap(Vector.UD, eip, 0))
            self.traps.reflect(Vector.UD, eip, 0)
        self._after_exit()

    def _after_exit(self) -> None:
        """lguest checked for interrupts on every return to the guest (ABI §3.2 step 5)."""
        if self.lg.data is not None and self.interrupts.pending and not self.interrupts.halted \
                and self.outcome is None:
            self._inject(self.cpu.reg(Reg.EIP))

    def _inject(self, eip: int) -> None:
        line = self.interrupts.maybe_interrupt(self.lg.data, eip, self._wall_ns)
        if line is not None and self.observers:
            self.emit("irq", events.irq(line, FIRST_EXTERNAL_VECTOR + line, eip))

    def _vring_pushed(self, ring: Vring, head: int, written: int) -> None:
        """A device returned a chain: count it, and tell the observers."""
        self.stats.vring[ring.name] += 1
        if self.observers:
            self.emit("vring", events.vring(ring.name, head, written, *ring.indices()))

    def _wall_ns(self) -> int:
        return self.clock.wall_ns(self.position())

    def _port_instruction(self, eip: int) -> tuple[bool, int, bool] | None:
        """Decode an emulatable `in`/`out` at `eip`: (prefixed, opcode, is_in), or None."""
        decoded = self.paging.opcode_at(eip)
        if decoded is None or decoded.prefixes not in EMULATED_PREFIXES \
                or decoded.prefix_bytes != len(decoded.prefixes):
            return None
        prefixed = bool(decoded.prefixes)
        if decoded.opcode in OPCODE_IN:
            return prefixed, decoded.opcode, True
        if decoded.opcode in OPCODE_OUT:
            return prefixed, decoded.opcode, False
        return None

    def _port_access(self, port: int, is_in: bool) -> int | None:
        """ABI §5.7: emulate a ring-1 `in`/`out`; anything else becomes a #GP(0) at slice end.
        Returns the new EAX for an emulated `in`, else None."""
        cpu = self.cpu
        eip = cpu.reg(Reg.EIP)
        self.stats.port_io[("in" if is_in else "out", port)] += 1
        # lguest emulated only kernel instructions (its emulate_insn reads the instruction
        # through the linear map, so it refuses EIPs below page_offset).
        emulate = cpu.reg(Reg.CS) & 3 == 1 and eip >= self.lg.kernel_address
        decoded = self._port_instruction(eip) if emulate else None
        if decoded is None or decoded[2] != is_in:
            # Unicorn cannot redirect from inside a translated block; stop right after
            # this instruction and deliver the fault from its address (a count-sliced stop
            # is exact, so nothing after it runs).  The instruction still completes, but
            # on hardware the #GP comes first: string I/O must not move ESI/EDI/ECX, so
            # they are put back before the fault is delivered.  (Unicorn's `ins` has
            # already stored to ES:EDI by now; that store cannot be undone.)
            if self._deferred_fault is None:
                self._deferred_fault = (GP, eip, 0)
                self._deferred_regs = tuple((reg, cpu.reg(reg))
                                            for reg in (Reg.ESI, Reg.EDI, Reg.ECX))
            self.stop()
            return None
        prefixed, opcode, _ = decoded
        size = 4 if opcode & 1 and not prefixed else 2 if opcode & 1 else 1
        mask = (1 << 8 * size) - 1
        if self.pci is not None and self.pci.handles(port):
            if is_in:
                return cpu.reg(Reg.EAX) & ~mask | self.pci.port_in(port, size)
            self.pci.port_out(port, size, cpu.reg(Reg.EAX) & mask)
            return None
        if not is_in:
            return None
        eax = cpu.reg(Reg.EAX)
        if self._in_sized:  # 3.1's Host, 4.x's Launcher: ones in exactly the bytes read
            return eax & ~mask | (1 if port == PS2_STATUS_PORT and self._ps2_ready else mask)
        if opcode & 1:  # until 3.0: a word read set all of EAX, a byte read 16 bits
            return 0xFFFFFFFF
        return eax | (0xFFFF << 16 if prefixed else 0xFFFF)

    def _on_port_in(self, port: int, size: int) -> int:
        eax = self._port_access(port, True)
        if eax is None:
            return self.cpu.reg(Reg.EAX) & ((1 << 8 * size) - 1)  # leave EAX as it was
        self.cpu.set_reg(Reg.EAX, eax)
        return eax & ((1 << 8 * size) - 1)

    def _on_port_out(self, port: int, size: int, value: int) -> None:
        self._port_access(port, False)

    def _is_string_io(self, eip: int) -> bool:
        """Is the instruction at `eip` `ins`/`outs` (after any prefixes)?"""
        decoded = self.paging.opcode_at(eip)
        return decoded is not None and decoded.opcode in STRING_IO_OPCODES

    def _defer_fault(self, vector: int) -> None:
        """Fault the instruction being executed once it is over (as for port I/O above)."""
        if self._deferred_fault is None:
            self._deferred_fault = (vector, self.cpu.reg(Reg.EIP), 0)
        self.stop()

    def _on_sysenter(self) -> None:
        """lguest's Host zeroes SYSENTER_CS while the guest runs (ABI §5.6): #GP(0)."""
        self._defer_fault(GP)

    def _on_syscall(self) -> None:
        """`syscall` does not exist in 32-bit mode on the (Intel) CPU we advertise: #UD."""
        self._defer_fault(Vector.UD)

    def _on_rdtscp(self) -> None:
        """The virtual CPU does not advertise RDTSCP: #UD (and never the host's TSC)."""
        self._defer_fault(Vector.UD)

    def _on_cpuid(self) -> None:
        eax, ebx, ecx, edx = cpu_model.cpuid(self._cpuid, self.cpu.reg(Reg.EAX))
        for reg, value in ((Reg.EAX, eax), (Reg.EBX, ebx), (Reg.ECX, ecx), (Reg.EDX, edx)):
            self.cpu.set_reg(reg, value)

    def _on_rdtsc(self) -> None:
        tsc = cpu_model.tsc(self.clock.now_ns(self.position()), self.clock.ns_per_insn)
        self.cpu.set_reg(Reg.EAX, tsc & 0xFFFFFFFF)
        self.cpu.set_reg(Reg.EDX, tsc >> 32)

    def _on_bad_access(self, kind: str, addr: int) -> None:
        if kind == "protected":
            raise GuestKilled(SwitcherAccess())
        raise GuestKilled(NotMemory(addr))

    # -- what spin-loop skipping reads (lgemu.host.spin) ------------------------------------
    def _code_bytes(self, vaddr: int, length: int) -> bytes | None:
        """Up to `length` bytes at `vaddr` as the CPU fetches them (through the shadow page
        tables, which is what it runs), short where a page is unmapped; None if nothing is."""
        out = b""
        while len(out) < length:
            va = (vaddr + len(out)) & 0xFFFFFFFF
            piece = self.cpu.read_code(va, min(length - len(out), PAGE_SIZE - va % PAGE_SIZE))
            if piece is None:
                self.cpu.ack_exception()  # between runs no fault is pending (Unicorn §9.1)
                break
            out += piece
        return out or None

    def _in_ram(self, vaddr: int, size: int) -> bool:
        """Does a load of `size` bytes at `vaddr` read guest RAM (not a device's MMIO)?"""
        for va in (vaddr, (vaddr + size - 1) & 0xFFFFFFFF):
            pa = self.paging.translate(va, mark=False)
            if pa is None or pa >= self.memory.limit:
                return False
        return True

    def _arm_loop_heads(self, heads: frozenset[int]) -> None:
        self.cpu.set_loop_heads({head: self.paging.translate(head, mark=False)
                                 for head in heads})

    def _loop_regs(self) -> list[int]:
        return self.cpu.regs(SPIN_STATE)

    def _skipping(self) -> bool:
        """May loop iterations be counted without running them now?  Only while nothing
        watches instructions one by one: no event observers, no instruction hooks, and no
        controller but the status line."""
        return self.spins is not None and not self.observers and not self.cpu.watching \
            and all(stage is Stage.STATUS for stage, _ in self._staged)

    # -- devices between slices --------------------------------------------------------------
    def _poll_devices(self) -> None:
        """Slice boundary: host input (console bytes, received frames) into posted buffers."""
        for device in self.devices:
            device.poll()
        self._invalidate_written()

    def _invalidate_written(self) -> None:
        """Drop translated code of the pages devices wrote, before the guest runs on."""
        if self.written.pages:
            self.cpu.invalidate_code(self.written.take())

    def _idle(self) -> None:
        """A halted guest waits for its timer, or for host input that can wake it: input
        into buffers it posted on a queue whose IRQ it wants and has not blocked.  Once the
        console's input has ended, a guest idling on its own timers is paced to real time:
        a halt waits on the host's clock only as far as the guest's clock would otherwise run
        ahead of it since `run` began, so an idle guest costs no CPU, while the halts of a
        guest that executes more slowly than its clock (a booting kernel's short sleeps) cost
        no wall time at all; the guest sees the same times and events either way.  The
        guest's clock may lead the host's by `PACE_LEAD_S` before halts wait at all."""
        clock = self.clock
        data = self.lg.data
        blocked = data.blocked_interrupts if data is not None else ~0
        fds = [fd for device in self.devices
               if any(not blocked >> line & 1 for line in device.wake_irqs())
               for fd in device.wait_fds()]
        # Input the guest only polls for cannot wake it, but its next timer tick will look:
        # wait for it in real time and bring that tick forward when it comes.
        polled = [] if fds or clock.deadline_ns is None else \
            [fd for device in self.devices for fd in device.polled_fds()]
        if not fds and not polled:
            if clock.deadline_ns is None:
                raise GuestStuck("halted with no timer set and no interrupt that can wake it")
            if clock.realtime or not any(device.input_ended() for device in self.devices):
                clock.idle_until_timer()
                return
        # Wait on the host's clock, in short steps so a wall-clock --timeout is still noticed
        # (a signal wakes the wait at once).  Host input makes such runs not reproducible;
        # pacing alone changes nothing the guest sees.  Virtual time stands still while halted:
        # the wait ends when the host's clock has caught up with the deadline.
        wait = IDLE_WAIT_MAX_S
        if clock.deadline_ns is not None:
            left = (clock.deadline_ns - clock.now_ns()) / 1e9
            if not clock.realtime:
                wall0, guest0 = self._pace_origin
                left = (clock.deadline_ns - guest0) / 1e9 - (time.monotonic() - wall0) \
                    - PACE_LEAD_S
            if left <= 0:
                clock.idle_until_timer()
                return
            wait = min(wait, left)
        began = clock.now_ns()
        ready = SIGNALS.wait(fds or polled, wait)  # the next step polls devices
        clock.waited(began)
        if ready and polled:
            clock.idle_until_timer()

    # -- the loop --------------------------------------------------------------------------
    def run(self, max_instructions: int | None = None,
            timeout: float | None = None) -> LgemuExit:
        """Run until the guest powers down, crashes, is killed or can never wake, or until
        `max_instructions` have executed or `timeout` wall-clock seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.clock.wake_by = deadline  # a realtime halt must not sleep through the timeout
        self._pace_origin = (time.monotonic(), self.clock.now_ns())
        SIGNALS.on_signal = self.interrupt
        for device in self.devices:
            device.run_starts()
        # Hooks allocate a few objects per call and never make cycles: collecting every 700
        # allocations was 7 % of a traced boot's CPU (measured); a larger first threshold
        # keeps memory flat and gives that back.
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], GC_THRESHOLD), *thresholds[1:])
        try:
            while self.outcome is None:
                SIGNALS.check()  # a signal ends the run here, between two instructions
                self._step(max_instructions)
                if deadline is not None and time.monotonic() >= deadline:
                    raise LimitReached(f"timeout: {timeout:g} s of wall-clock time",
                                       ExitStatus.TIMEOUT)
        except LgemuExit as outcome:
            self.outcome = self.outcome or outcome
        except CpuError as e:
            # A delivery between slices met a segment the guest broke (as `_guarded` does).
            self.outcome = self.outcome or cpu_kill(e)
        finally:
            gc.set_threshold(*thresholds)
            SIGNALS.on_signal = None
            for device in self.devices:
                device.run_ends()
        return self.outcome

    def run_until(self, horizon_ns: int, max_instructions: int | None = None) -> LgemuExit | None:
        """Run on until guest time reaches `horizon_ns`, for a scheduler of several guests
        (`lgemu.lab`): slices end there and a halted guest skips there (or to its timer);
        no host input is waited for.  Returns how the run ended, or None at the horizon.
        Signals, timeouts and the devices' run_starts/run_ends are the caller's."""
        self.horizon_ns = horizon_ns
        try:
            while self.outcome is None and self.clock.now_ns() < horizon_ns:
                self._step(max_instructions)
        except LgemuExit as outcome:
            self.outcome = self.outcome or outcome
        except CpuError as e:
            self.outcome = self.outcome or cpu_kill(e)
        finally:
            self.horizon_ns = None
        return self.outcome

    def _step(self, max_instructions: int | None) -> None:
        clock, interrupts = self.clock, self.interrupts
        if not self._slice_left:
            # A slice starts: what lguest did before every guest entry.  Nothing here may
            # depend on how controllers cut the previous slice into runs.
            if self._started:
                self._poll_devices()
            # At instruction 0 no device is set up to receive anything, so the first slice
            # starts without a poll: input already waiting when lgemu starts is read after
            # the controllers' first look (with -S, after gdb lets the guest run), never
            # into the state that history starts from.
            self._started = True
            if clock.expired():
                interrupts.raise_irq(IRQ_TIMER)
            eip = self.cpu.reg(Reg.EIP)
            if self.lg.data is not None and interrupts.pending:
                self._inject(eip)
            if interrupts.halted:
                if self.horizon_ns is None:
                    self._idle()
                else:  # in a lab, host input is the lab's: nothing to wait for
                    clock.idle_until(self.horizon_ns)
                return
            limit = PENDING_SLICE if interrupts.pending else SLICE
            if max_instructions is not None:
                limit = min(limit, max_instructions - clock.executed)
            if self.horizon_ns is not None:
                limit = min(limit, -(-(self.horizon_ns - clock.now_ns()) // clock.ns_per_insn))
            self._slice_left = clock.slice_budget(limit)
            self._slice_end_ns = clock.slice_end_ns(self._slice_left)
            self.stats.slices += 1
            if self.spins is not None:
                self.spins.slice_starts()
        caps = [cap for c in self.controllers if (cap := c.boundary(self)) is not None]
        budget = max(1, min(self._slice_left, *caps)) if caps else self._slice_left
        spins = self.spins if self._skipping() else None
        eip = self.cpu.reg(Reg.EIP)
        if spins is not None:
            skipped, budget = spins.before_run(eip, budget)
            if skipped:  # counted as executed: the guest's state is as if they had run
                clock.end_slice(skipped)
                self._slice_left -= skipped
        elif self.spins is not None and self.spins.loops:
            self.spins.stop()
        self._stop_requested = False
        self._paused = False
        self._in_slice = True
        try:
            self.cpu.run(eip, budget)
        except CpuError as e:
            if self.outcome is None:
                self.outcome = cpu_kill(e)
        finally:
            self._in_slice = False
        ran = self.cpu.completed
        clock.end_slice(ran)
        self._slice_left -= ran
        if self.outcome is not None:
            return
        if self._stop_requested:
            self._slice_left = 0  # the guest ended its slice (HALT, timer, fault, exit)
        elif ran < budget and not (self._paused or self.cpu.at_breakpoint
                                   or self.cpu.at_loop_head):
            raise GuestKilled(TripleFault(self.cpu.reg(Reg.EIP)))
        if spins is not None:
            spins.after_run(self.cpu.reg(Reg.EIP), self.cpu.at_loop_head,
                            ran == budget and not (self._stop_requested or self._paused),
                            self.cpu.reg(Reg.CS) & 3 == 1)
        if self._deferred_fault is not None:
            (vector, eip, error_code), self._deferred_fault = self._deferred_fault, None
            for reg, value in self._deferred_regs:
                self.cpu.set_reg(reg, value)
            self._deferred_regs = ()
            self.stats.traps[vector] += 1
            if self.observers:
                self.emit("trap", events.trap(vector, eip, error_code))
            self.traps.reflect(vector, eip, error_code)
        if max_instructions is not None and clock.executed >= max_instructions:
            raise LimitReached(f"instruction limit of {max_instructions} reached",
                               ExitStatus.INSN_LIMIT)
