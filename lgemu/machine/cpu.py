"""The emulated CPU: Unicorn 2.1.4 as an x86-32 lguest guest processor.

Everything lguest's Switcher did in assembly happens here, in one place:

* **Ring switching.**  Unicorn never lowers CPL and never delivers a trap (unicorn-notes §0).
  `enter()` patches `hflags.CPL` inside one preallocated context blob, restores it, then loads
  SS, CS, ESP and EIP.  It is the only way lgemu changes rings.
* **The sticky exception state.**  Unicorn skips QEMU's `do_interrupt`, so `old_exception`
  keeps the last fault and the next one becomes a double fault.  `enter()` and
  `ack_exception()` reset it, so every fault the Host handles is acknowledged.
* **Fast registers.**  The binding's `reg_read` costs ~2 µs; direct ctypes calls cost ~0.6 µs.
  Selectors are written as 2 bytes, so the buffer is zeroed before every read (spike O2).
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
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_PROT,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC
from unicorn.unicorn_py3.unicorn import uccallback, uclib

from ..abi import PAGE_SIZE
from .memory import HOST_PHYS, HOST_UNTIL, GuestMemory, switcher_linear

UNICORN_VERSION = "2.1.4"

# Offsets into Unicorn 2.1.4's `struct uc_context` (40-byte header, then CPUX86State) and
# `struct uc_struct`, measured in unicorn-notes §1, §4 and spike O9.  self_test() proves them.
CTX_HEADER = 40
OFF_HFLAGS = 176
OFF_ERROR_CODE = 5384
OFF_EXCEPTION_IS_INT = 5388
OFF_OLD_EXCEPTION = 5496
OFF_EMU_COUNTER = 1368

CR0_PE, CR0_MP, CR0_TS, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 8, 0x10, 0x20, 0x10000, 0x80000000
CR4_OSFXSR, CR4_OSXMMEXCPT = 0x200, 0x400
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


SELECTORS = frozenset({Reg.CS, Reg.SS, Reg.DS, Reg.ES, Reg.FS, Reg.GS})
GPRS = (Reg.EAX, Reg.ECX, Reg.EDX, Reg.EBX, Reg.ESP, Reg.EBP, Reg.ESI, Reg.EDI)


class CpuError(Exception):
    """Unicorn stopped in a way the Host did not ask for (message says how)."""


class SelfTestError(Exception):
    """This Unicorn build does not behave like the one lgemu was written for."""


class Cpu:
    """One x86-32 CPU over `GuestMemory`, with lguest's ring and exception plumbing."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self._h = uc._uch
        # Only [0, limit) is guest memory (§1.4): the unused rest of the device reserve stays
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
        self._ctx = uc.context_save()
        base = ctypes.cast(self._ctx.context, ctypes.c_void_p).value + CTX_HEADER
        self._hflags = ctypes.c_uint32.from_address(base + OFF_HFLAGS)
        self._error_code = ctypes.c_uint32.from_address(base + OFF_ERROR_CODE)
        self._is_int = ctypes.c_int32.from_address(base + OFF_EXCEPTION_IS_INT)
        self._old_exception = ctypes.c_int32.from_address(base + OFF_OLD_EXCEPTION)
        self._callbacks: list[object] = []  # ctypes callbacks must outlive Unicorn's use
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
            # Unicorn writes 2 bytes for a selector and 4 for the rest (spike O2): mask.
            masks = tuple(0xFFFF if r in SELECTORS else 0xFFFFFFFF for r in regs)
            batch = self._batches[regs] = (ids, vals, ptrs, len(regs), masks)
        ids, vals, ptrs, n, masks = batch
        uclib.uc_reg_read_batch(self._h, ids, ptrs, n)
        return [v & m for v, m in zip(vals, masks, strict=True)]

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
                raise CpuError(f"cannot load {Reg(reg).name} with {value:#x} in ring {cpl}")

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
        """Run from `eip` for at most `count` instructions (count slicing only, spike O7)."""
        try:
            self.uc.emu_start(eip, UNTIL, 0, count)
        except UcError as e:
            raise CpuError(f"{e} at eip {self.reg(Reg.EIP):#x}") from None

    @property
    def slice_position(self) -> int:
        """Instruction attempts so far in the current `run` (valid inside hooks)."""
        return self._counter.value

    def stop(self) -> None:
        """Make `run` return after the current instruction (call from a hook)."""
        self.uc.emu_stop()

    def flush_tlb(self) -> None:
        """Forget every cached translation (guest page tables changed)."""
        self.uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)

    def set_cr3(self, pgdir: int) -> None:
        """Switch address space (implies a TLB flush)."""
        self.set_reg(Reg.CR3, pgdir)

    def invalidate_code(self, pages: list[int]) -> None:
        """Drop translated code for physical pages the Host wrote (unicorn-notes §8.3)."""
        if not pages:
            return
        cr0 = self.reg(Reg.CR0)
        self.set_reg(Reg.CR0, cr0 & ~CR0_PG)  # ctl_remove_cache translates through paging
        for page in pages:
            self.uc.ctl_remove_cache(page * PAGE_SIZE, page * PAGE_SIZE + PAGE_SIZE)
        self.set_reg(Reg.CR0, cr0)

    # -- hooks -----------------------------------------------------------------------------
    def on_interrupt(self, fn: Callable[[int], None]) -> None:
        """fn(vector) for every `int n` and every CPU exception except #UD."""
        self.uc.hook_add(UC_HOOK_INTR, lambda uc, intno, ud: fn(intno))

    def on_invalid(self, fn: Callable[[], None]) -> None:
        """fn() for #UD, which Unicorn reports through its own hook (unicorn-notes §4)."""
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
        """fn() for `sysenter`, which Unicorn otherwise treats as a no-op (unicorn-notes §3);
        EIP is the instruction's own address inside fn."""
        self.uc.hook_add(UC_HOOK_INSN, lambda uc, ud: fn(), None, 1, 0, X.UC_X86_INS_SYSENTER)

    def on_syscall(self, fn: Callable[[], None]) -> None:
        """fn() for `syscall` (a no-op in Unicorn otherwise), EIP as for `on_sysenter`."""
        self.uc.hook_add(UC_HOOK_INSN, lambda uc, ud: fn(), None, 1, 0, X.UC_X86_INS_SYSCALL)

    def on_rdtsc(self, fn: Callable[[], None]) -> None:
        """fn() replaces `rdtsc` (the binding lacks this hook; unicorn-notes §5 workaround)."""
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
        if vector == 13:
            cpu.enter(1, GUEST_CS, GUEST_DS, eip + 2, cpu.reg(Reg.ESP))  # skip, acknowledge
    cpu.on_interrupt(on_intr)
    cpu.run(0x2000, 6)
    want = [(0x1F, 2, 0, True, 1), (13, 4, 0x1230, False, 1), (13, 5, 0x1230, False, 1)]
    if seen != want:
        raise SelfTestError(f"Unicorn internals differ from {UNICORN_VERSION}: {seen} != {want}")
