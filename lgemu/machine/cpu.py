"""The emulated CPU: Unicorn 2.1.4 as an x86-32 lguest guest processor.

Everything lguest's Switcher did in assembly happens here, in one place:

* **Ring switching.**  Unicorn never lowers CPL and never delivers a trap (Unicorn §0).
  `enter()` patches `hflags.CPL` inside one preallocated context blob, restores it, then loads
  SS, CS, ESP and EIP.  It is the only way lgemu changes rings.
* **The sticky exception state.**  Unicorn skips QEMU's `do_interrupt`, so `old_exception`
  keeps the last fault and the next one becomes a double fault.  `enter()` and
  `ack_exception()` reset it, so every fault the Host handles is acknowledged.
* **Fast registers.**  The binding's `reg_read` costs ~2 µs; direct ctypes calls cost ~0.6 µs.
  Selectors are written as 2 bytes, so the buffer is zeroed before every read (Unicorn §9.2).
* **Version-specific internals** (context-blob offsets, `emu_counter`) are checked by
  `self_test()` before any guest runs; a different Unicorn build is refused.

Only this package imports unicorn; the Host speaks to the CPU through `Cpu` and `Reg`.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from enum import IntEnum

import unicorn
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_HOOK_MEM_WRITE_PROT,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_WRITE,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC
from unicorn.unicorn_py3.unicorn import (
    HOOK_CODE_CFUNC,
    HOOK_EDGE_GEN_CFUNC,
    HOOK_MEM_ACCESS_CFUNC,
    uc_hook_h,
    uccallback,
    uclib,
)

from ..abi import LGUEST_TRAP_ENTRY, PAGE_SIZE, Vector
from . import native
from .memory import HOST_PHYS, HOST_UNTIL, GuestMemory, switcher_linear

UNICORN_VERSION = "2.1.4"

# Offsets into Unicorn 2.1.4's `struct uc_context` (40-byte header, then CPUX86State) and
# `struct uc_struct`, measured in Unicorn §1.4 and §9.9.  self_test() proves them.
CTX_HEADER = 40
OFF_HFLAGS = 176
OFF_ERROR_CODE = 5384
OFF_EXCEPTION_IS_INT = 5388
OFF_OLD_EXCEPTION = 5496
OFF_EMU_COUNTER = 1368
OFF_EMU_COUNT = 1376  # uc_struct.emu_count: the `count` limit the counter is checked against
OFF_CPU = 440  # uc_struct.cpu: the CPUState (an X86CPU) ...
OFF_CPU_ENV = 35408  # ... whose CPUX86State starts here: regs[16] (u64, EAX order) first

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 0x10000, 0x80000000
CR4_OSFXSR, CR4_OSXMMEXCPT = 0x200, 0x400
CR4_PAE = 0x20  # PAE guests only (Unicorn §2.3)
GUEST_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
GUEST_CR4 = CR4_OSFXSR | CR4_OSXMMEXCPT
UNTIL = switcher_linear(HOST_UNTIL) + PAGE_SIZE // 2  # never reached, always mapped


class Reg(IntEnum):
    """Register ids, so the Host never imports unicorn."""

    EAX = X.UC_X86_REG_EAX
    EBX = X.UC_X86_REG_EBX
    ECX = X.UC_X86_REG_ECX
    EDX = X.UC_X86_REG_EDX
    ESI = X.UC_X86_REG_ESI
    EDI = X.UC_X86_REG_EDI
    EBP = X.UC_X86_REG_EBP
    ESP = X.UC_X86_REG_ESP
    EIP = X.UC_X86_REG_EIP
    EFLAGS = X.UC_X86_REG_EFLAGS
    CS = X.UC_X86_REG_CS
    SS = X.UC_X86_REG_SS
    DS = X.UC_X86_REG_DS
    ES = X.UC_X86_REG_ES
    FS = X.UC_X86_REG_FS
    GS = X.UC_X86_REG_GS
    CR0 = X.UC_X86_REG_CR0
    CR2 = X.UC_X86_REG_CR2
    CR3 = X.UC_X86_REG_CR3
    CR4 = X.UC_X86_REG_CR4
    # The x87 unit's control registers (its data registers: `fp_register`).
    FPCW = X.UC_X86_REG_FPCW
    FPSW = X.UC_X86_REG_FPSW
    FPTAG = X.UC_X86_REG_FPTAG  # the full tag word, two bits per register
    FCS = X.UC_X86_REG_FCS
    FIP = X.UC_X86_REG_FIP
    FDS = X.UC_X86_REG_FDS
    FDP = X.UC_X86_REG_FDP
    FOP = X.UC_X86_REG_FOP


GPRS = (Reg.EAX, Reg.ECX, Reg.EDX, Reg.EBX, Reg.ESP, Reg.EBP, Reg.ESI, Reg.EDI)


class CpuError(Exception):
    """Unicorn stopped in a way the Host did not ask for (message says how)."""


class SegmentLoadError(CpuError):
    """A selector the Host put into a segment register would not load (message says which)."""


class SelfTestError(Exception):
    """This Unicorn build does not behave like the one lgemu was written for."""


class Cpu:
    """One x86-32 CPU over `GuestMemory`, with lguest's ring and exception plumbing."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self._h = uc._uch
        # Only [0, limit) is guest memory (ABI §1.4): the unused rest of the device reserve stays
        # unmapped, so a guest page pointing there is a bad access, not spare RAM.
        uc.mem_map_ptr(0, memory.limit, UC_PROT_ALL, memory.ram_address)
        # Host pages: readable so segment loads and the `until` probe work, never writable.
        uc.mem_map_ptr(HOST_PHYS, len(memory.host), UC_PROT_READ | UC_PROT_EXEC,
                       memory.host_address)
        self._buf = ctypes.c_uint64()
        self._ref = ctypes.byref(self._buf)
        self._read = uclib.uc_reg_read
        self._write = uclib.uc_reg_write
        self._counter = ctypes.c_uint64.from_address(
            ctypes.cast(self._h, ctypes.c_void_p).value + OFF_EMU_COUNTER)
        self._count = ctypes.c_uint64.from_address(
            ctypes.cast(self._h, ctypes.c_void_p).value + OFF_EMU_COUNT)
        self._stopped_before = False  # the last run ended before the instruction it counted
        self._breakpoints: frozenset[int] = frozenset()
        self._loop_heads: frozenset[int] = frozenset()  # see `set_loop_heads`
        self._loop_head_pages: dict[int, int | None] = {}
        # Hooks that watch instructions one by one (traces, gdb watchpoints, call windows):
        # while any is installed, the run loop skips no loop iteration (lgemu.host.spin).
        self.watching: set[int] = set()
        # Exits removed with `shared`: an address space that maps one elsewhere may still
        # hold its block (see `run`).
        self._stale: set[int] = set()
        self.at_breakpoint = False  # the last run ended at one of `set_breakpoints`
        self.at_loop_head = False  # ... or at one of `set_loop_heads`
        self._ctx = uc.context_save()
        base = ctypes.cast(self._ctx.context, ctypes.c_void_p).value + CTX_HEADER
        self._hflags = ctypes.c_uint32.from_address(base + OFF_HFLAGS)
        self._error_code = ctypes.c_uint32.from_address(base + OFF_ERROR_CODE)
        self._is_int = ctypes.c_int32.from_address(base + OFF_EXCEPTION_IS_INT)
        self._old_exception = ctypes.c_int32.from_address(base + OFF_OLD_EXCEPTION)
        self._callbacks: list[object] = []  # ctypes callbacks must outlive Unicorn's use
        self._block_sets: dict[int, native.BlockSet] = {}  # record_blocks' native hooks
        env = ctypes.c_void_p.from_address(
            ctypes.cast(self._h, ctypes.c_void_p).value + OFF_CPU).value + OFF_CPU_ENV
        self._gprs = (ctypes.c_uint64 * len(GPRS)).from_address(env)
        self._batches: dict[tuple[int, ...], tuple] = {}
        self._jump_ids = (ctypes.c_int * 2)(Reg.ESP, Reg.EIP)
        self._jump_vals = (ctypes.c_uint64 * 2)()
        self._jump_ptrs = (ctypes.c_void_p * 2)(ctypes.addressof(self._jump_vals),
                                                 ctypes.addressof(self._jump_vals) + 8)

    # -- registers -------------------------------------------------------------------------
    def reg(self, reg: int) -> int:
        """Read one register (fast path; selectors come back as 16-bit values)."""
        self._buf.value = 0
        self._read(self._h, reg, self._ref)
        return self._buf.value

    def regs(self, regs: tuple[int, ...]) -> list[int]:
        """Several registers in one C call (the fast path for hypercalls and traps)."""
        batch = self._batches.get(regs)
        if batch is None:
            ids = (ctypes.c_int * len(regs))(*regs)
            vals = (ctypes.c_uint64 * len(regs))()
            ptrs = (ctypes.c_void_p * len(regs))(
                *[ctypes.addressof(vals) + 8 * i for i in range(len(regs))])
            batch = self._batches[regs] = (ids, vals, ptrs, len(regs))
        ids, vals, ptrs, n = batch
        uclib.uc_reg_read_batch(self._h, ids, ptrs, n)
        # Unicorn writes 2 bytes for a selector and 4 for the rest (Unicorn §9.2), but each
        # slot of a batch only ever holds its one register: the bytes above stay zero from
        # the array's creation, so no mask is needed (a Tenet trace reads this per
        # instruction).
        return vals[:]

    @property
    def gpr_view(self) -> memoryview:
        """The live general registers as bytes, EAX ECX EDX EBX ESP EBP ESI EDI (`GPRS`),
        each a little-endian u64 whose low half is the register: Unicorn's own storage,
        which its hooks see current (`uc_reg_read` reads it too).  ``view.tobytes()``
        snapshots all eight for a tenth of one `regs` call (a Tenet trace does it per
        instruction)."""
        return memoryview(self._gprs).cast("B")

    def jump(self, esp: int, eip: int) -> None:
        """Continue at `eip` with `esp`, same ring, nothing to acknowledge (one C call)."""
        self._jump_vals[0] = esp
        self._jump_vals[1] = eip
        uclib.uc_reg_write_batch(self._h, self._jump_ids, self._jump_ptrs, 2)

    def set_reg(self, reg: int, value: int) -> None:
        """Write one register (not for SS/CS: use `enter`)."""
        self._buf.value = value & 0xFFFFFFFF
        self._write(self._h, reg, self._ref)

    def set_gdt(self, base: int, limit: int) -> None:
        """Point GDTR at a linear address (the switcher mapping)."""
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, base, limit, 0))

    def set_tr(self, selector: int, base: int, limit: int) -> None:
        """Load TR with a present 32-bit TSS, so no guest far call can reach QEMU's abort."""
        self.uc.reg_write(X.UC_X86_REG_TR, (selector, base, limit, 0x8900))

    # -- ring switching and exceptions ---------------------------------------------------
    def fault_info(self) -> tuple[int, bool]:
        """(error code, was it a software `int n`) of the exception being handled now."""
        uclib.uc_context_save(self._h, self._ctx.context)
        return self._error_code.value, bool(self._is_int.value)

    def enter(self, cpl: int, cs: int, ss: int, eip: int, esp: int) -> None:
        """Continue at cs:eip on ss:esp in ring `cpl`, acknowledging any exception."""
        w, buf, ref, h = self._write, self._buf, self._ref, self._h
        uclib.uc_context_save(self._h, self._ctx.context)
        self._hflags.value = (self._hflags.value & ~3) | cpl
        self._old_exception.value = -1
        uclib.uc_context_restore(self._h, self._ctx.context)
        for reg, value in ((Reg.SS, ss), (Reg.CS, cs), (Reg.ESP, esp), (Reg.EIP, eip)):
            buf.value = value
            if w(h, reg, ref):
                raise SegmentLoadError(f"cannot load {Reg(reg).name} with {value:#x} in ring "
                                       f"{cpl}")

    def ack_exception(self) -> None:
        """Forget the exception just handled (when resuming without a ring change)."""
        uclib.uc_context_save(self._h, self._ctx.context)
        self._old_exception.value = -1
        uclib.uc_context_restore(self._h, self._ctx.context)

    def cpl(self) -> int:
        """Current privilege level (the RPL of CS)."""
        return self.reg(Reg.CS) & 3

    # -- running ---------------------------------------------------------------------------
    def run(self, eip: int, count: int) -> None:
        """Run from `eip` for at most `count` instructions (count slicing only, Unicorn §9.7)."""
        self._stopped_before = False
        try:
            self.uc.emu_start(eip, UNTIL, 0, count)
        except UcError as e:
            raise CpuError(f"{e} at eip {self.reg(Reg.EIP):#x}") from None
        self.at_breakpoint = self.at_loop_head = False
        if self._breakpoints or self._stale or self._loop_heads:
            eip = self.reg(Reg.EIP)
            self.at_breakpoint = eip in self._breakpoints
            self.at_loop_head = not self.at_breakpoint and eip in self._loop_heads
            if not (self.at_breakpoint or self.at_loop_head) and eip in self._stale:
                # A removed exit whose block survived where the address maps elsewhere: the
                # run ended early for nothing.  Drop everything and let the loop go on.
                self.flush_code()
                self.at_breakpoint = True
        if self._breakpoints or self._loop_heads or self.reg(Reg.CS) & 3 == 3:
            # Measured: a run that ends in ring 3 leaves a page fault in the CPU state (the
            # exit looks at `until`, a supervisor page, as ring 3), and so does every run
            # while a breakpoint is set where the current page tables map nothing (each
            # exit is looked up the same way, Unicorn §9.12); the guest's next fault would
            # become a double fault.  No fault is pending between runs.
            self.ack_exception()

    @property
    def slice_position(self) -> int:
        """Instruction attempts so far in the current `run` (valid inside hooks)."""
        return self._counter.value

    @property
    def completed(self) -> int:
        """Instructions the last `run` completed.  Unicorn counts an instruction before its
        code hooks run and stops (count exhausted) one attempt past the limit."""
        done = min(self._counter.value, self._count.value)
        return done - 1 if self._stopped_before else done

    def stop(self) -> None:
        """Make `run` return after the current instruction (call from a hook).

        `emu_stop` alone stops in time, but measured: from an instruction hook (`out`,
        `sysenter`) with no code hook but the count's installed, Unicorn counts one more
        attempt, an instruction it never runs.  Lowering the count limit as well keeps
        `completed` exact whatever hooks exist (a debugger's breakpoints must not change
        the guest's instruction count)."""
        self._count.value = min(self._count.value, self._counter.value)
        self.uc.emu_stop()

    def stop_before_current(self) -> None:
        """From a code hook: make `run` return before the instruction the hook fired for
        (EIP stays on it; `completed` does not count it)."""
        self._stopped_before = True
        self.uc.emu_stop()

    def stop_after_current(self) -> None:
        """From any hook: let the current instruction finish, then make `run` return.

        Lowers the running `count` limit to the instructions counted so far, so Unicorn's own
        count check stops before the next one.  `emu_stop` from a memory hook would not do:
        it abandons the instruction after its store and restarts it on the next run (the
        store happens twice, and the attempt is counted twice)."""
        self._count.value = self._counter.value

    def stop_soon(self) -> None:
        """Like `stop_after_current`, but safe from anywhere, even a signal handler that runs
        between two runs: the limit is only ever lowered to the count so far, so a finished
        run's `completed` stays as it was, and the next `run` sets its own limit."""
        self._count.value = min(self._count.value, self._counter.value)

    def flush_tlb(self) -> None:
        """Forget every cached translation (guest page tables changed)."""
        self.uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)

    def set_cr3(self, pgdir: int) -> None:
        """Switch address space (implies a TLB flush)."""
        self.set_reg(Reg.CR3, pgdir)

    def flush_code(self) -> None:
        """Drop every translated block (after guest memory was replaced wholesale)."""
        self.uc.ctl_flush_tb()
        self._stale.clear()

    def invalidate_code(self, pages: list[int]) -> None:
        """Drop translated code for physical pages the Host wrote (Unicorn §8.3); `pages`
        in ascending order."""
        if not pages:
            return
        # One range per run of adjacent pages: a virtio-blk read fills tens of pages per
        # request, often side by side.
        ranges = []
        start = end = pages[0]
        for page in pages[1:]:
            if page != end + 1:
                ranges.append((start * PAGE_SIZE, (end + 1) * PAGE_SIZE))
                start = page
            end = page
        ranges.append((start * PAGE_SIZE, (end + 1) * PAGE_SIZE))
        self._drop_physical(ranges)

    def _drop_physical(self, ranges: list[tuple[int, int]]) -> None:
        """Drop translated code overlapping each [start, end) of guest-physical memory."""
        cr0 = self.reg(Reg.CR0)
        self.set_reg(Reg.CR0, cr0 & ~CR0_PG)  # ctl_remove_cache translates through paging
        for start, end in ranges:
            self.uc.ctl_remove_cache(start, end)
        self.set_reg(Reg.CR0, cr0)

    # -- hooks -----------------------------------------------------------------------------
    def on_interrupt(self, fn: Callable[[int], None]) -> None:
        """fn(vector) for every `int n` and every CPU exception except #UD."""
        self.uc.hook_add(UC_HOOK_INTR, lambda uc, intno, ud: fn(intno))

    def on_invalid(self, fn: Callable[[], None]) -> None:
        """fn() for #UD, which Unicorn reports through its own hook (Unicorn §4.3)."""
        def cb(uc: Uc, ud: object) -> bool:
            fn()
            return True
        self.uc.hook_add(UC_HOOK_INSN_INVALID, cb)

    def on_port_in(self, fn: Callable[[int, int], int]) -> None:
        """fn(port, size) -> value for `in` (Unicorn does no privilege check at all)."""
        self.uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, ud: fn(port, size), None, 1, 0,
                         X.UC_X86_INS_IN)

    def on_port_out(self, fn: Callable[[int, int, int], None]) -> None:
        """fn(port, size, value) for `out`."""
        self.uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, ud: fn(port, size, value),
                         None, 1, 0, X.UC_X86_INS_OUT)

    def on_cpuid(self, fn: Callable[[], None]) -> None:
        """fn() replaces `cpuid`: it sets EAX..EDX itself."""
        def cb(uc: Uc, ud: object) -> bool:
            fn()
            return True
        self.uc.hook_add(UC_HOOK_INSN, cb, None, 1, 0, X.UC_X86_INS_CPUID)

    def on_sysenter(self, fn: Callable[[], None]) -> None:
        """fn() for `sysenter`, which Unicorn otherwise treats as a no-op (Unicorn §3.2);
        EIP is the instruction's own address inside fn."""
        self.uc.hook_add(UC_HOOK_INSN, lambda uc, ud: fn(), None, 1, 0, X.UC_X86_INS_SYSENTER)

    def on_syscall(self, fn: Callable[[], None]) -> None:
        """fn() for `syscall` (a no-op in Unicorn otherwise), EIP as for `on_sysenter`."""
        self.uc.hook_add(UC_HOOK_INSN, lambda uc, ud: fn(), None, 1, 0, X.UC_X86_INS_SYSCALL)

    def on_rdtsc(self, fn: Callable[[], None]) -> None:
        """fn() replaces `rdtsc` (the binding lacks this hook; Unicorn §5.4)."""
        self._raw_insn_hook(fn, X.UC_X86_INS_RDTSC)

    def on_rdtscp(self, fn: Callable[[], None]) -> None:
        """fn() replaces `rdtscp`, which would otherwise read the host's TSC."""
        self._raw_insn_hook(fn, X.UC_X86_INS_RDTSCP)

    def _raw_insn_hook(self, fn: Callable[[], None], instruction: int) -> None:
        def cb(uc: object, ud: object) -> int:
            fn()
            return 1  # skip the real instruction
        callback = uccallback(self.uc, HOOK_INSN_CPUID_CFUNC)(cb)
        self._callbacks.append(callback)
        self.uc._Uc__do_hook_add(UC_HOOK_INSN, callback, 1, 0, ctypes.c_int(instruction))

    def set_breakpoints(self, addresses: frozenset[int], shared: bool = False) -> None:
        """Make every run stop before executing an instruction at one of these linear
        addresses (a run starting at one stops at once: leave it out to step over it).

        These are Unicorn's exits: checked when code is translated, so they cost nothing
        while the guest runs elsewhere, whereas a code hook, even on an address never
        reached, makes every instruction of a count-sliced run slower (tools/bench).  The
        price is paid on change: translated code that holds a changed address is dropped.
        With `shared` (the caller knows every address space maps these addresses to the
        same code: kernel text) only the blocks at the changed addresses go; otherwise all
        translated code does, since a block translated in another address space cannot be
        found from this one (should a guest map them differently after all, a removed exit
        that survives there only costs one early run end, `run` notices it).  The
        instruction at the exit is not counted; `at_breakpoint` tells the run loop why the
        run ended early."""
        addresses = frozenset(addresses)
        if addresses == self._breakpoints:
            return
        changed = addresses ^ self._breakpoints
        self._breakpoints = addresses
        self._set_exits(changed, shared)

    def set_loop_heads(self, heads: dict[int, int | None]) -> None:
        """Stop every run before an instruction at one of these kernel addresses (linear →
        physical, None where unknown), like `set_breakpoints` and beside them, for the run
        loop's spin-loop skipping (lgemu.host.spin); `at_loop_head` says a run ended at one.
        Blocks holding a changed head are dropped by physical address: a kernel address
        may not be in the current shadow page tables yet, and looking it up there would
        cost a drop of every translated block."""
        addresses = frozenset(heads)
        if addresses == self._loop_heads:
            return
        changed = addresses ^ self._loop_heads
        gone = {a: self._loop_head_pages.get(a) for a in changed - addresses}
        self._loop_heads = addresses
        self._loop_head_pages = dict(heads)
        self._set_exits(frozenset(), shared=True)
        where = [gone.get(a) if a in gone else heads[a] for a in changed]
        if None in where:
            self.flush_code()
            return
        self._drop_physical([(max(pa - 1, 0), pa + 1) for pa in where])

    def _set_exits(self, changed: frozenset[int], shared: bool) -> None:
        exits = self._breakpoints | self._loop_heads
        if exits:
            self.uc.ctl_exits_enabled(True)
            self.uc.ctl_set_exits([UNTIL, *sorted(exits)])
        else:
            self.uc.ctl_exits_enabled(False)
        if not changed:
            return
        if shared and self._drop_code_at(changed):
            self._stale |= changed - exits
        else:
            self.flush_code()

    @property
    def breakpoints(self) -> frozenset[int]:
        """The addresses `set_breakpoints` armed last."""
        return self._breakpoints

    def _drop_code_at(self, addresses: frozenset[int]) -> bool:
        """Drop the translated blocks holding the byte before and the byte at each linear
        address (an exit's own block too, Unicorn §9.12), looked up through the current page
        tables; False when one is not mapped there (then the caller must drop everything).
        A failed look-up leaves a #PF behind (Unicorn §9.1): it is acknowledged away."""
        self.ack_exception()
        for address in addresses:
            if address:
                self.uc.ctl_remove_cache(address - 1, address)
            self.uc.ctl_remove_cache(address, address + 1)
        uclib.uc_context_save(self._h, self._ctx.context)
        mapped = self._old_exception.value == -1
        self.ack_exception()
        return mapped

    def on_code(self, fn: Callable[[int], None], begin: int, end: int) -> int:
        """fn(address) before each instruction at a linear address in [begin, end]; returns a
        handle for `remove_hook`.  Measured: with count slicing, one more code hook makes
        every instruction about 1.5 times slower, wherever its range is (to stop at an
        address, `set_breakpoints` costs nothing)."""
        handle = self.uc.hook_add(UC_HOOK_CODE, lambda uc, address, size, ud: fn(address),
                                  None, begin, end)
        self.watching.add(handle)
        return handle

    def on_mem_access(self, fn: Callable[[bool, int, int, int], None], begin: int, end: int,
                      read: bool, write: bool) -> int:
        """fn(is_write, address, size, value) when an instruction reads or writes a linear
        address in [begin, end] (before the access); returns a handle for `remove_hook`.
        While any memory hook exists every load takes Unicorn's slow path (Unicorn §7):
        install these only while they are wanted."""
        kinds = (UC_HOOK_MEM_READ if read else 0) | (UC_HOOK_MEM_WRITE if write else 0)

        def cb(uc: Uc, access: int, address: int, size: int, value: int, ud: object) -> None:
            fn(access == UC_MEM_WRITE, address, size, value)
        handle = self.uc.hook_add(kinds, cb, None, begin, end)
        self.watching.add(handle)
        return handle

    def remove_hook(self, handle: int) -> None:
        """Remove a hook added by `on_code` or `on_mem_access` (call between runs).

        Unicorn drops the translated code the hook was compiled into, looking its address up
        through the current page tables; when that address is not mapped there, the failed
        walk leaves a page fault in the CPU state, and the guest's next fault would become a
        double fault (as with emu_start's `until`, Unicorn §9.1).  No fault is pending between
        runs, so it is acknowledged away."""
        self.uc.hook_del(handle)
        self.watching.discard(handle)
        block_set = self._block_sets.pop(handle, None)
        if block_set is not None:
            block_set.drain()  # what the last runs left in its log
        self.ack_exception()

    # -- the x87 unit and whole-CPU state ---------------------------------------------------
    def fp_register(self, index: int) -> tuple[int, int]:
        """Physical x87 data register R`index` as (64-bit mantissa, 16-bit sign+exponent)."""
        return self.uc.reg_read(X.UC_X86_REG_FP0 + index)

    def set_fp_register(self, index: int, mantissa: int, exponent: int) -> None:
        """Store physical x87 data register R`index`."""
        self.uc.reg_write(X.UC_X86_REG_FP0 + index, (mantissa, exponent))

    def save_state(self) -> object:
        """Every CPU register, as an opaque value for `restore_state`."""
        return self.uc.context_save()

    def restore_state(self, state: object) -> None:
        """Put back a `save_state` (guest memory is the caller's; translations are flushed)."""
        self.uc.context_restore(state)
        self.flush_tlb()
        self.flush_code()

    def map_mmio(self, base: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        """Make guest-physical [base, base+size) device registers: every load calls
        read(offset, size) and every store write(offset, size, value), with the offset from
        `base`; the instruction itself completes inside Unicorn, whatever its form, and a
        handler that ends the run stops the CPU as any hook does.  (lguest's Host instead
        took the page fault, decoded the instruction and let the Launcher emulate it; the
        guest sees the same loads and stores.)"""
        self.uc.mmio_map(base, size, lambda uc, offset, n, ud: read(offset, n), None,
                         lambda uc, offset, n, value, ud: write(offset, n, value), None)

    def on_bad_access(self, fn: Callable[[str, int], None]) -> None:
        """fn(kind, physical address) when the guest reaches outside its memory or writes
        the host pages; the handler must stop the CPU."""
        def unmapped(uc: Uc, access: int, addr: int, size: int, value: int, ud: object) -> bool:
            fn("unmapped", addr)
            return False

        def protected(uc: Uc, access: int, addr: int, size: int, value: int, ud: object) -> bool:
            fn("protected", addr)
            return False
        self.uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED
                         | UC_HOOK_MEM_FETCH_UNMAPPED, unmapped)
        self.uc.hook_add(UC_HOOK_MEM_WRITE_PROT, protected)

    # -- instrumentation for traces and coverage -----------------------------------------
    # Bare ctypes callbacks (no binding wrapper): per-instruction work runs about twice as
    # fast.  The handles go into the binding's table, so `remove_hook` works for them too.
    # The callbacks must not raise: ctypes would print the exception and carry on.
    # Unicorn decides which hooks a block calls when it translates the block: code
    # translated before a code, block or memory hook was added never calls it (measured on
    # 2.1.4), so adding one drops every translated block.
    def _add_hook(self, kind: int, callback: object, begin: int, end: int,
                  watching: bool = True) -> int:
        handle = self.uc._Uc__do_hook_add(kind, callback, begin, end)
        self.uc.ctl_flush_tb()
        if watching:
            self.watching.add(handle)
        return handle

    @property
    def position_view(self) -> ctypes.c_uint64:
        """The live counter behind `slice_position`, for hooks that read it on every
        instruction (``view.value``; a property call would cost more than the read)."""
        return self._counter

    def on_instruction(self, fn: Callable[..., None], begin: int = 1, end: int = 0,
                       raw: bool = False) -> int:
        """fn(address, size) before each instruction at a linear address in [begin, end]
        (every address when begin > end); a handle for `remove_hook`.  As for `on_code`, a
        range the guest never reaches costs nothing (Unicorn §6).  With `raw`, fn takes
        Unicorn's four arguments itself, as for `on_block`."""
        callback = HOOK_CODE_CFUNC(fn if raw else
                                   (lambda h, address, size, ud: fn(address, size)))
        return self._add_hook(unicorn.UC_HOOK_CODE, callback, begin, end)

    def on_block(self, fn: Callable[[int, int], None], begin: int = 1, end: int = 0,
                 raw: bool = False) -> int:
        """fn(address, size) each time a translated block starting in [begin, end] runs
        (size in bytes, as Unicorn translated it); a handle for `remove_hook`.  With `raw`,
        fn takes Unicorn's four arguments (handle, address, size, user data) itself: one
        Python frame fewer per block, for hooks that run millions of times."""
        call = fn if raw else (lambda h, address, size, ud: fn(address, size))
        callback = HOOK_CODE_CFUNC(call)
        return self._add_hook(unicorn.UC_HOOK_BLOCK, callback, begin, end)

    def record_blocks(self, blocks: set[tuple[int, int]], begin: int = 1, end: int = 0) -> int:
        """Add (address, size) to `blocks` for each translated block starting in [begin, end]
        that runs; a handle for `remove_hook`, after which `blocks` is complete (coverage
        runs this millions of times).

        Where native code runs (`native.BlockSet`) the hook is a machine-code stub that calls
        no Python for a block it has seen, and the set is filled when its log fills and when
        the hook is removed.  Elsewhere, or when Unicorn does not call the stub as
        `native_block_hook_ok` expects, the hook is the set's own `add` (one Python call per
        block)."""
        recorder = native.BlockSet.create(blocks) if native_block_hook_ok() else None
        if recorder is None:
            add = blocks.add
            callback = HOOK_CODE_CFUNC(lambda h, address, size, ud: add((address, size)))
            # Not watching: a skipped loop iteration runs no block coverage has not seen.
            return self._add_hook(unicorn.UC_HOOK_BLOCK, callback, begin, end, watching=False)
        handle = _add_native_hook(self.uc, unicorn.UC_HOOK_BLOCK, recorder.code,
                                  recorder.user_data, recorder, begin, end)
        self.uc.ctl_flush_tb()  # as `_add_hook`
        self._block_sets[handle] = recorder
        return handle

    def on_block_linked(self, fn: Callable[[int, int], None], begin: int = 1,
                        end: int = 0) -> int:
        """fn(address, size) when Unicorn links a block starting in [begin, end] to the block
        that jumped to it (UC_HOOK_EDGE_GENERATED): a newly translated block, at the latest
        when a direct jump first reaches it.  For caches keyed by code address."""
        def cb(h: object, cur: ctypes._Pointer, prev: ctypes._Pointer, ud: object) -> None:
            tb = cur.contents
            fn(tb.pc, tb.size)
        callback = HOOK_EDGE_GEN_CFUNC(cb)
        return self.uc._Uc__do_hook_add(unicorn.UC_HOOK_EDGE_GENERATED, callback, begin, end)

    def on_memory_values(self, fn: Callable[..., None], begin: int = 1, end: int = 0,
                         raw: bool = False) -> int:
        """fn(is_write, address, size, value) after each read (the value read) and before
        each write (the value written) at a linear address in [begin, end]; a handle for
        `remove_hook`.  Like any memory hook it slows every load (Unicorn §7).  With `raw`,
        fn takes Unicorn's six arguments (handle, access, address, size, value as a signed
        64-bit number, user data), access being ``unicorn.UC_MEM_WRITE`` for a write."""
        def cb(h: object, access: int, address: int, size: int, value: int, ud: object) -> None:
            fn(access == unicorn.UC_MEM_WRITE, address, size, value)
        callback = HOOK_MEM_ACCESS_CFUNC(fn if raw else cb)
        return self._add_hook(unicorn.UC_HOOK_MEM_READ_AFTER | unicorn.UC_HOOK_MEM_WRITE,
                              callback, begin, end)

    def read_code(self, address: int, size: int) -> bytes | None:
        """`size` bytes at linear `address` through the current page tables (an instruction
        being executed, say), or None if any of them is unmapped.  A failed walk would
        overwrite CR2 (Unicorn §8.5); it is put back."""
        buf = ctypes.create_string_buffer(size)
        cr2 = self.reg(Reg.CR2)
        status = uclib.uc_vmem_read(self._h, ctypes.c_uint64(address),
                                    ctypes.c_int(UC_PROT_READ), buf, ctypes.c_size_t(size))
        if status:
            self.set_reg(Reg.CR2, cr2)
            return None
        return buf.raw


def _add_native_hook(uc: Uc, kind: int, code: int, user_data: int, owner: object,
                     begin: int, end: int) -> int:
    """Register machine code at `code` as a hook with `user_data`; `owner` (what holds the
    code's data) stays referenced until `hook_del`, in the binding's own table."""
    handle = uc_hook_h()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(code),
                               ctypes.c_void_p(user_data), ctypes.c_uint64(begin),
                               ctypes.c_uint64(end))
    if status != unicorn.UC_ERR_OK:
        raise UcError(status)
    uc._callbacks[handle.value] = owner
    return handle.value


_native_blocks: bool | None = None  # native_block_hook_ok's answer, once per process


def native_block_hook_ok() -> bool:
    """Whether `record_blocks` may use the native stub: native code runs here
    (`native.executable`), and Unicorn calls it as a block hook the way the stub relies on
    (address, size and user data in the System V argument registers; the tail call into the
    Python drain returns to Unicorn).  Proved once per process on a scratch CPU against a
    Python hook in the same run, the stub's log one entry long so the drain runs too."""
    global _native_blocks
    if not native.enabled():
        return False
    if _native_blocks is None:
        _native_blocks = _check_native_blocks()
    return _native_blocks


def _check_native_blocks() -> bool:
    # Four blocks, so a log of one entry fills twice: both of the stub's ways out are taken.
    native_seen: set[tuple[int, int]] = set()
    recorder = native.BlockSet.create(native_seen, capacity=1)
    if recorder is None:
        return False
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x2000)
    # 0x1000: mov $3,%ecx; 1: dec %ecx; jnz 1b; jmp 0x1010; ... 0x1010: nop; nop
    code = bytes.fromhex("b903000000" "49" "75fd" "eb06") + bytes(6) + bytes.fromhex("9090")
    uc.mem_write(0x1000, code)
    python_seen: set[tuple[int, int]] = set()
    uc.hook_add(unicorn.UC_HOOK_BLOCK, lambda u, address, size, ud:
                python_seen.add((address, size)))
    _add_native_hook(uc, unicorn.UC_HOOK_BLOCK, recorder.code, recorder.user_data, recorder,
                     1, 0)
    try:
        uc.emu_start(0x1000, 0x1012)
    except UcError:
        return False
    recorder.drain()
    return (recorder.drains > 0 and (0x1000, 8) in python_seen
            and native_seen == python_seen)


# -- self-test --------------------------------------------------------------------------
def self_test() -> None:
    """Prove the version-specific internals lgemu relies on, or raise SelfTestError.

    Runs a few instructions on a scratch CPU: a ring-1 `int $0x1f` (CPL patching, the
    instruction counter), a #GP with a known error code (error-code offset, `is_int`), and two
    faults in a row (the sticky exception state is really reset by `enter`).
    """
    if unicorn.__version__ != UNICORN_VERSION:
        raise SelfTestError(f"lgemu needs unicorn=={UNICORN_VERSION}, found {unicorn.__version__}")
    mem = GuestMemory(1 << 20)
    try:
        _self_test(mem)
    except (UcError, CpuError) as e:
        raise SelfTestError(f"Unicorn internals differ from {UNICORN_VERSION}: {e}") from None
    finally:
        mem.close()


def _self_test(mem: GuestMemory) -> None:
    from ..abi import DESC_GUEST_CS, DESC_GUEST_DS, GUEST_CS, GUEST_DS

    cpu = Cpu(mem)
    gdt = 0x1000
    struct.pack_into("<QQ", mem.ram, gdt + 12 * 8, DESC_GUEST_CS, DESC_GUEST_DS)
    cpu.set_gdt(gdt, 32 * 8 - 1)
    # 0x2000: inc eax; int $0x1f; mov $0x1230,%cx; mov %cx,%ds (#GP 0x1230); ud2 area unused
    code = bytes.fromhex("40" "cd1f" "66b93012" "8ed9" "8ed9" "ebfe")
    mem.ram[0x2000:0x2000 + len(code)] = code
    cpu.enter(1, GUEST_CS, GUEST_DS, 0x2000, 0x8000)
    seen: list[tuple[int, int, int, bool, int]] = []

    def on_intr(vector: int) -> None:
        err, is_int = cpu.fault_info()
        seen.append((vector, cpu.slice_position, err, is_int, cpu.cpl()))
        eip = cpu.reg(Reg.EIP)
        if vector == Vector.GP:
            cpu.enter(1, GUEST_CS, GUEST_DS, eip + 2, cpu.reg(Reg.ESP))  # skip, acknowledge
    cpu.on_interrupt(on_intr)
    cpu.run(0x2000, 6)
    want = [(LGUEST_TRAP_ENTRY, 2, 0, True, 1), (Vector.GP, 4, 0x1230, False, 1),
            (Vector.GP, 5, 0x1230, False, 1)]
    if seen != want:
        raise SelfTestError(f"Unicorn internals differ from {UNICORN_VERSION}: {seen} != {want}")
    if cpu._count.value != 6 or cpu.completed != 6:
        raise SelfTestError(f"Unicorn internals differ from {UNICORN_VERSION}: emu_count "
                            f"{cpu._count.value}, completed {cpu.completed} (want 6)")
    values = [0x5A5A0000 + 0x1111 * i for i in range(len(GPRS))]
    for reg, value in zip(GPRS, values, strict=True):
        cpu.set_reg(reg, value)
    seen_gprs = list(struct.unpack("<8Q", cpu.gpr_view))
    if seen_gprs != values or cpu.regs(GPRS) != values:
        raise SelfTestError(f"Unicorn internals differ from {UNICORN_VERSION}: general "
                            f"registers at uc_struct.cpu + {OFF_CPU_ENV}: {seen_gprs}")
