"""The Unicorn 2.1.4 behaviours lgemu is built on, each proved on a bare Unicorn (docs/unicorn.md).

Every test is the probe for one numbered section of docs/unicorn.md and is named after the
behaviour.  They use Unicorn directly, not `lgemu.machine.cpu`, so a failure here says "this
Unicorn build behaves differently", not "lgemu has a bug".  The only thing taken from lgemu is
the set of build-specific offsets it relies on, which these tests therefore check too.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC
from unicorn.unicorn_py3.unicorn import uccallback, uclib

from lgemu.machine.cpu import (
    CTX_HEADER,
    OFF_EMU_COUNTER,
    OFF_ERROR_CODE,
    OFF_HFLAGS,
    OFF_OLD_EXCEPTION,
)

RAM = 2 << 20
GDT = 0x1000
CODE = 0x10000
FAR = 0x80000  # an `until` address on another page than CODE: emu_start drops that page's code
PGDIR, PGTABLE = 0x100000, 0x101000
# Selectors of the test GDT: ring 0, ring 1 (lguest's guest kernel) and ring 3, code then data.
R0_CS, R0_DS, R1_CS, R1_DS, R3_CS, R3_DS = 0x08, 0x10, 0x19, 0x21, 0x2B, 0x33
CALL_GATE = 0x3B  # entry 7, RPL 3


def flat(access: int) -> int:
    """A flat 4 GiB 32-bit descriptor with the given access byte."""
    return 0xFFFF | access << 40 | 0xF << 48 | 0xC << 52


class Machine:
    """A bare Unicorn with 2 MiB of RAM that the test can also write behind Unicorn's back
    (`mem_map_ptr`, as lgemu maps guest memory), a flat GDT and ring 0 segments."""

    def __init__(self, extra_gdt: tuple[int, ...] = ()) -> None:
        self.ram = mmap.mmap(-1, RAM)
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map_ptr(0, RAM, UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(self.ram)))
        gdt = (0, flat(0x9A), flat(0x92), flat(0xBA), flat(0xB2), flat(0xFA), flat(0xF2),
               *extra_gdt)
        struct.pack_into(f"<{len(gdt)}Q", self.ram, GDT, *gdt)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, 8 * len(gdt) - 1, 0))
        for reg, sel in ((X.UC_X86_REG_SS, R0_DS), (X.UC_X86_REG_DS, R0_DS),
                         (X.UC_X86_REG_ES, R0_DS), (X.UC_X86_REG_CS, R0_CS)):
            uc.reg_write(reg, sel)
        uc.reg_write(X.UC_X86_REG_ESP, 0x9000)

    def code(self, hex_bytes: str, at: int = CODE) -> None:
        raw = bytes.fromhex(hex_bytes.replace(" ", ""))
        self.ram[at:at + len(raw)] = raw

    def reg(self, name: str) -> int:
        return self.uc.reg_read(getattr(X, f"UC_X86_REG_{name}"))

    def context_field(self, offset: int, value: int | None = None, fmt: str = "<i") -> int:
        """Read (and with `value`, write back) a field of the saved CPU context."""
        ctx = self.uc.context_save()
        field = (ctypes.c_char * struct.calcsize(fmt)).from_address(
            ctypes.cast(ctx.context, ctypes.c_void_p).value + CTX_HEADER + offset)
        old = struct.unpack(fmt, bytes(field))[0]
        if value is not None:
            struct.pack_into(fmt, field, 0, value)
            self.uc.context_restore(ctx)
        return old

    def enter_ring(self, cpl: int, cs: int, ss: int) -> None:
        """Patch hflags.CPL in a saved context, then load SS and CS (Unicorn §1.2)."""
        hflags = self.context_field(OFF_HFLAGS, fmt="<I")
        self.context_field(OFF_HFLAGS, (hflags & ~3) | cpl, fmt="<I")
        self.uc.reg_write(X.UC_X86_REG_SS, ss)
        self.uc.reg_write(X.UC_X86_REG_CS, cs)

    def paging(self) -> None:
        """Turn paging on: the first MiB identity-mapped, nothing else."""
        struct.pack_into("<I", self.ram, PGDIR, PGTABLE | 3)
        for page in range(256):
            struct.pack_into("<I", self.ram, PGTABLE + 4 * page, page << 12 | 3)
        self.uc.reg_write(X.UC_X86_REG_CR3, PGDIR)
        self.uc.reg_write(X.UC_X86_REG_CR0, self.reg("CR0") | 0x80000001)

    def map_page(self, vaddr: int, paddr: int) -> None:
        struct.pack_into("<I", self.ram, PGTABLE + 4 * (vaddr >> 12), paddr | 3)


def record_interrupts(m: Machine, skip: int = 0, ack: bool = False) -> list[tuple[int, ...]]:
    """Hook every interrupt: note (vector, EIP, ESP, error code); step over `skip` bytes."""
    seen: list[tuple[int, ...]] = []

    def hook(uc: Uc, vector: int, _ud: object) -> None:
        seen.append((vector, m.reg("EIP"), m.reg("ESP"), m.context_field(OFF_ERROR_CODE)))
        if ack:
            m.context_field(OFF_OLD_EXCEPTION, -1)
        if skip:
            uc.reg_write(X.UC_X86_REG_EIP, m.reg("EIP") + skip)
        else:
            uc.emu_stop()
    m.uc.hook_add(UC_HOOK_INTR, hook)
    return seen


# -- Unicorn §1 rings and segments -----------------------------------------------------------
def test_ss_can_only_be_written_with_a_selector_of_the_current_ring() -> None:
    m = Machine()
    with pytest.raises(UcError):
        m.uc.reg_write(X.UC_X86_REG_SS, R1_DS)
    m.uc.reg_write(X.UC_X86_REG_CS, R1_CS)  # accepted, but the ring follows SS, not CS
    assert m.context_field(OFF_HFLAGS, fmt="<I") & 3 == 0


def test_patching_hflags_in_a_context_changes_the_ring() -> None:
    m = Machine()
    m.enter_ring(1, R1_CS, R1_DS)
    m.code("f4")  # hlt: fine in ring 0, #GP in ring 1
    seen = record_interrupts(m)
    m.uc.emu_start(CODE, FAR, count=1)
    assert seen == [(13, CODE, 0x9000, 0)]
    assert m.reg("CS") == R1_CS


def test_a_load_through_a_null_data_segment_does_not_fault() -> None:
    m = Machine()
    m.uc.reg_write(X.UC_X86_REG_DS, 0)
    struct.pack_into("<I", m.ram, 0x500, 0x12345678)
    m.code("a1 00050000")  # mov 0x500, %eax
    seen = record_interrupts(m)
    m.uc.emu_start(CODE, FAR, count=1)
    assert seen == [] and m.reg("EAX") == 0x12345678


# -- Unicorn §2 paging -----------------------------------------------------------------------
def test_a_translation_stays_cached_until_cr3_is_written() -> None:
    m = Machine()
    m.paging()
    struct.pack_into("<2I", m.ram, 0x50000, 0x11111111, 0)
    struct.pack_into("<2I", m.ram, 0x60000, 0x22222222, 0)
    m.map_page(0x80000, 0x50000)
    m.code("a1 00000800")  # mov 0x80000, %eax
    m.uc.emu_start(CODE, FAR + 0x1000, count=1)
    m.map_page(0x80000, 0x60000)  # the PTE changes in memory...
    m.uc.emu_start(CODE, FAR + 0x1000, count=1)
    assert m.reg("EAX") == 0x11111111  # ...but the old translation is still used
    m.uc.reg_write(X.UC_X86_REG_CR3, PGDIR)  # the same value flushes
    m.uc.emu_start(CODE, FAR + 0x1000, count=1)
    assert m.reg("EAX") == 0x22222222


def test_a_pte_pointing_outside_physical_memory_is_an_unmapped_access_not_a_page_fault() -> None:
    m = Machine()
    m.paging()
    m.map_page(0x200000, 0x300000)  # beyond the 2 MiB of RAM
    m.code("a1 00002000")  # mov 0x200000, %eax
    seen = record_interrupts(m)
    with pytest.raises(UcError) as error:
        m.uc.emu_start(CODE, FAR, count=1)
    assert seen == [] and "UNMAPPED" in str(error.value)


def test_pae_paging_walks_64_bit_entries_and_faults_on_reserved_bits() -> None:
    m = Machine()
    pdpt, pmd, pt = 0x100000, 0x101000, 0x102000  # CR3 -> 4 PDPT entries -> PMD -> PTEs
    struct.pack_into("<Q", m.ram, pdpt, pmd | 1)
    struct.pack_into("<Q", m.ram, pmd, pt | 7)
    for page in range(256):
        struct.pack_into("<Q", m.ram, pt + 8 * page, page << 12 | 3)
    struct.pack_into("<Q", m.ram, pt + 8 * 0x80, 0x50000 | 3)
    struct.pack_into("<Q", m.ram, pt + 8 * 0x90, 0x50000 | 3 | 1 << 63)  # NX without EFER.NXE
    struct.pack_into("<I", m.ram, 0x50000, 0x11111111)
    m.uc.reg_write(X.UC_X86_REG_CR4, 0x20)  # CR4.PAE
    m.uc.reg_write(X.UC_X86_REG_CR3, pdpt)
    m.uc.reg_write(X.UC_X86_REG_CR0, m.reg("CR0") | 0x80000001)
    m.code("a1 00000800 a1 00000900")  # mov 0x80000, %eax; mov 0x90000, %eax
    seen = record_interrupts(m)
    m.uc.emu_start(CODE, FAR, count=1)
    assert m.reg("EAX") == 0x11111111 and seen == []
    assert struct.unpack_from("<Q", m.ram, pt + 8 * 0x80)[0] == 0x50000 | 0x23  # Accessed set
    m.uc.emu_start(CODE + 5, FAR, count=1)
    assert seen == [(14, CODE + 5, 0x9000, 9)]  # present | reserved bit
    assert m.reg("CR2") == 0x90000


# -- Unicorn §3 software interrupts ----------------------------------------------------------
def test_int_n_calls_the_interrupt_hook_and_ignores_the_idt() -> None:
    m = Machine()
    handler, idt = 0x20000, 0x3000
    gate = handler & 0xFFFF | R0_CS << 16 | 0x8E00 << 32 | (handler >> 16) << 48
    struct.pack_into("<Q", m.ram, idt + 0x80 * 8, gate)
    m.uc.reg_write(X.UC_X86_REG_IDTR, (0, idt, 0x7FF, 0))
    m.code("c705 00050000 01000000 cf", at=handler)  # movl $1, 0x500; iret
    m.code("cd80 40")  # int $0x80; inc %eax
    seen = record_interrupts(m)
    m.uc.emu_start(CODE, FAR, count=2)
    # EIP already past `int`, nothing pushed, the gate's handler never ran
    assert seen == [(0x80, CODE + 2, 0x9000, 0)]
    assert m.ram[0x500] == 0


def test_sysenter_without_a_hook_is_skipped() -> None:
    m = Machine()
    m.code("0f34 40")  # sysenter; inc %eax
    m.uc.emu_start(CODE, FAR, count=2)
    assert m.reg("EIP") == CODE + 3 and m.reg("EAX") == 1


# -- Unicorn §4 exceptions -------------------------------------------------------------------
BAD_DS_LOADS = "66b93012" + "8ed9" * 4 + "40"  # mov $0x1230,%cx; 4 × mov %cx,%ds; inc %eax


def test_the_error_code_is_only_in_the_context_blob() -> None:
    m = Machine()
    m.code(BAD_DS_LOADS)
    seen = record_interrupts(m)
    m.uc.emu_start(CODE, FAR, count=2)
    assert seen == [(13, CODE + 4, 0x9000, 0x1230)]  # at the faulting instruction


def test_an_unacknowledged_fault_makes_the_next_a_double_fault_then_stops_silently() -> None:
    m = Machine()
    m.code(BAD_DS_LOADS)
    seen = record_interrupts(m, skip=2)
    m.uc.emu_start(CODE, FAR, count=6)  # no error raised: a triple fault just ends the run
    assert [s[0] for s in seen] == [13, 8]
    assert m.reg("EIP") == CODE + 8 and m.reg("EAX") == 0


def test_acknowledged_faults_stay_separate() -> None:
    m = Machine()
    m.code(BAD_DS_LOADS)
    seen = record_interrupts(m, skip=2, ack=True)
    m.uc.emu_start(CODE, FAR, count=6)
    assert [s[0] for s in seen] == [13, 13, 13, 13] and m.reg("EAX") == 1


def test_ud2_goes_to_the_invalid_instruction_hook_not_the_interrupt_hook() -> None:
    m = Machine()
    m.code("0f0b")
    seen = record_interrupts(m)
    invalid: list[int] = []
    m.uc.hook_add(UC_HOOK_INSN_INVALID, lambda uc, ud: invalid.append(m.reg("EIP")) or False)
    with pytest.raises(UcError):
        m.uc.emu_start(CODE, FAR, count=1)
    assert seen == [] and invalid == [CODE]


# -- Unicorn §5 instructions that reach the host ---------------------------------------------
def test_in_and_out_skip_the_io_privilege_check() -> None:
    m = Machine()
    m.enter_ring(1, R1_CS, R1_DS)  # IOPL is 0: hardware would raise #GP
    m.code("e460 e680")  # in $0x60,%al; out %al,$0x80
    seen = record_interrupts(m)
    ports: list[tuple[str, int, int]] = []
    m.uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, ud: ports.append(("in", port, size))
                  or 0xAB, None, 1, 0, X.UC_X86_INS_IN)
    m.uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, ud: ports.append(
        ("out", port, value)), None, 1, 0, X.UC_X86_INS_OUT)
    m.uc.emu_start(CODE, FAR, count=2)
    assert seen == [] and ports == [("in", 0x60, 1), ("out", 0x80, 0xAB)]


def test_a_cpuid_hook_returning_true_replaces_the_instruction() -> None:
    m = Machine()
    m.code("31c0 0fa2")  # xor %eax,%eax; cpuid

    def cpuid(uc: Uc, ud: object) -> bool:
        uc.reg_write(X.UC_X86_REG_EBX, 0x1234)
        return replace
    m.uc.hook_add(UC_HOOK_INSN, cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
    replace = True
    m.uc.emu_start(CODE, FAR, count=2)
    assert m.reg("EBX") == 0x1234
    replace = False  # the real cpuid runs after the hook: the host's vendor string
    m.uc.emu_start(CODE, FAR, count=2)
    assert m.reg("EBX") != 0x1234


def test_rdtsc_can_only_be_hooked_through_the_raw_registration() -> None:
    m = Machine()
    with pytest.raises(UcError):
        m.uc.hook_add(UC_HOOK_INSN, lambda uc, ud: 1, None, 1, 0, X.UC_X86_INS_RDTSC)

    def rdtsc(uc: Uc, ud: object) -> int:
        uc.reg_write(X.UC_X86_REG_EAX, 1234)
        uc.reg_write(X.UC_X86_REG_EDX, 5)
        return 1  # skip the real instruction
    callback = uccallback(m.uc, HOOK_INSN_CPUID_CFUNC)(rdtsc)
    m.uc._Uc__do_hook_add(UC_HOOK_INSN, callback, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSC))
    m.code("0f31")
    m.uc.emu_start(CODE, FAR, count=1)
    assert (m.reg("EAX"), m.reg("EDX")) == (1234, 5)


# -- Unicorn §6 counting ---------------------------------------------------------------------
def test_count_stops_after_exactly_that_many_instructions() -> None:
    m = Machine()
    m.code("40" * 50)
    for count in (1, 7, 13):
        m.uc.reg_write(X.UC_X86_REG_EAX, 0)
        m.uc.emu_start(CODE, FAR, count=count)
        assert m.reg("EAX") == count and m.reg("EIP") == CODE + count


# -- Unicorn §8 surprises --------------------------------------------------------------------
def test_a_far_call_through_a_call_gate_without_tr_aborts_the_process() -> None:
    # Run in a child: the abort takes the whole Python process with it.
    child = textwrap.dedent(f"""
        import struct, tests.test_unicorn_behaviour as t
        gate = 0x20000 & 0xFFFF | t.R1_CS << 16 | (0x80 | 3 << 5 | 0xC) << 40 | 2 << 48
        m = t.Machine(extra_gdt=(gate,))
        m.enter_ring(3, t.R3_CS, t.R3_DS)
        m.code("9a 00000000 {CALL_GATE:02x}00")  # lcall ${CALL_GATE:#x}, $0
        m.uc.emu_start(t.CODE, t.FAR, count=1)
        print("survived")
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == -6, (result.returncode, result.stdout, result.stderr)


def test_writes_behind_unicorns_back_do_not_drop_translated_code() -> None:
    m = Machine()
    m.code("b8 01000000")  # mov $1, %eax
    m.uc.emu_start(CODE, FAR, count=1)
    m.ram[CODE + 1] = 2  # the host writes guest RAM directly, as lgemu's devices do
    m.uc.emu_start(CODE, FAR, count=1)
    assert m.reg("EAX") == 1  # the old translation ran
    m.uc.ctl_remove_cache(CODE, CODE + 5)
    m.uc.emu_start(CODE, FAR, count=1)
    assert m.reg("EAX") == 2


def test_remove_cache_with_paging_off_drops_code_by_physical_address() -> None:
    m = Machine()
    m.paging()
    alias = 0x300000  # a second virtual address for the code page
    m.map_page(alias, CODE)
    m.code("b8 05000000")
    m.uc.emu_start(alias, FAR, count=1)
    m.ram[CODE + 1] = 6
    m.uc.emu_start(alias, FAR, count=1)
    assert m.reg("EAX") == 5
    cr0 = m.reg("CR0")
    m.uc.reg_write(X.UC_X86_REG_CR0, cr0 & ~0x80000000)
    m.uc.ctl_remove_cache(CODE, CODE + 5)  # physical, because paging is off
    m.uc.reg_write(X.UC_X86_REG_CR0, cr0)
    m.uc.emu_start(alias, FAR, count=1)
    assert m.reg("EAX") == 6


def test_a_failed_virtual_memory_read_overwrites_cr2() -> None:
    m = Machine()
    m.paging()
    m.uc.reg_write(X.UC_X86_REG_CR2, 0x1234)
    buf = ctypes.create_string_buffer(4)
    status = uclib.uc_vmem_read(m.uc._uch, ctypes.c_uint64(0x700000), ctypes.c_int(UC_PROT_READ),
                                buf, ctypes.c_size_t(4))
    assert status != 0 and m.reg("CR2") == 0x700000


# -- Unicorn §9 found booting a real guest ---------------------------------------------------
def test_emu_start_probes_until_through_the_guest_mmu() -> None:
    m = Machine()
    m.paging()
    m.code("404040")
    m.uc.emu_start(CODE, FAR, count=3)  # `until` mapped: nothing left behind
    assert m.reg("CR2") == 0 and m.context_field(OFF_OLD_EXCEPTION) == -1
    m.uc.emu_start(CODE, 0x800000, count=3)  # `until` unmapped: a silent page fault
    assert m.reg("CR2") == 0x7FFFFF and m.context_field(OFF_OLD_EXCEPTION) == 14


def test_every_run_probes_each_exit_through_the_guest_mmu() -> None:
    """Unicorn §9.12: with exits enabled, the end of every run looks each exit up like `until`."""
    m = Machine()
    m.paging()
    m.code("404040")
    m.uc.ctl_exits_enabled(True)
    m.uc.ctl_set_exits([FAR, CODE + 0x100])  # both mapped: nothing left behind
    m.uc.emu_start(CODE, FAR, count=3)
    assert m.reg("CR2") == 0 and m.context_field(OFF_OLD_EXCEPTION) == -1
    m.uc.ctl_set_exits([FAR, 0x800000])  # one unmapped: a silent page fault at its end
    m.uc.emu_start(CODE, FAR, count=3)
    assert m.reg("EAX") == 6
    assert m.reg("CR2") == 0x7FFFFF and m.context_field(OFF_OLD_EXCEPTION) == 14


def test_remove_cache_looks_its_address_up_through_the_guest_mmu() -> None:
    """`Cpu._drop_code_at` tells a mapped address from an unmapped one by what is left."""
    m = Machine()
    m.paging()
    m.code("404040")
    m.uc.emu_start(CODE, FAR, count=3)
    m.uc.ctl_remove_cache(CODE, CODE + 1)
    assert m.context_field(OFF_OLD_EXCEPTION) == -1
    m.uc.ctl_remove_cache(0x800000, 0x800001)
    assert m.context_field(OFF_OLD_EXCEPTION) == 14


def test_reading_a_selector_writes_only_two_bytes() -> None:
    m = Machine()
    buf = ctypes.c_uint64(0xFFFFFFFFFFFFFFFF)
    uclib.uc_reg_read(m.uc._uch, X.UC_X86_REG_CS, ctypes.byref(buf))
    assert buf.value == 0xFFFFFFFFFFFF0000 | R0_CS
    buf.value = 0xFFFFFFFFFFFFFFFF
    uclib.uc_reg_read(m.uc._uch, X.UC_X86_REG_EAX, ctypes.byref(buf))
    assert buf.value == 0xFFFFFFFF00000000


def test_emu_counter_is_the_position_inside_a_run() -> None:
    m = Machine()
    m.code("40 40 40 cd1f 40 cd1f 40")
    counter = ctypes.c_uint64.from_address(
        ctypes.cast(m.uc._uch, ctypes.c_void_p).value + OFF_EMU_COUNTER)
    positions: list[int] = []
    m.uc.hook_add(UC_HOOK_INTR, lambda uc, vector, ud: positions.append(counter.value))
    m.uc.emu_start(CODE, FAR, count=7)
    assert positions == [4, 6] and m.reg("EAX") == 5


def test_code_hooks_only_fire_inside_their_range() -> None:
    m = Machine()
    m.code("40" * 8)
    hits: list[int] = []
    m.uc.hook_add(UC_HOOK_CODE, lambda uc, addr, size, ud: hits.append(addr), None,
                  CODE + 2, CODE + 3)
    m.uc.emu_start(CODE, FAR, count=8)
    assert hits == [CODE + 2, CODE + 3]


def test_batched_register_reads_are_exact_without_masks() -> None:
    """`Cpu.regs` returns each slot as Unicorn wrote it: a selector's two bytes and a 32-bit
    register's four never pick up bytes from elsewhere, however often a batch is reused."""
    from lgemu.machine.cpu import Cpu, Reg
    from lgemu.machine.memory import GuestMemory

    cpu = Cpu(GuestMemory(RAM))
    batch = (Reg.EAX, Reg.CS, Reg.EDX, Reg.SS)
    for eax, edx in ((0xFFFFFFFF, 0), (0x12345678, 0xFFFFFFFF), (0, 0x80000000)):
        cpu.set_reg(Reg.EAX, eax)
        cpu.set_reg(Reg.EDX, edx)
        assert cpu.regs(batch) == [eax, cpu.reg(Reg.CS), edx, cpu.reg(Reg.SS)]
        assert all(value <= 0xFFFF for value in cpu.regs((Reg.CS, Reg.SS)))
