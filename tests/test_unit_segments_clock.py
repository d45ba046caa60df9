"""Unit tier: the host-owned GDT (`lgemu.host.segments.Gdt`) and the guest's clock
(`lgemu.host.clock.Clock`) on their own (no guest runs; see tests/hostunit.py).  The GDT is
checked in the host page the CPU's GDTR points at, byte for byte; the clock by the times and
instruction budgets the run loop would get from it."""

from __future__ import annotations

import struct
import time

import pytest
from hostunit import host

from lgemu.abi import (
    DESC_GUEST_CS,
    DESC_GUEST_DS,
    DESC_LGUEST_CS,
    DESC_LGUEST_DS,
    GUEST_CS,
    GUEST_DS,
    USER_DS,
)
from lgemu.host.clock import Clock
from lgemu.machine.memory import HOST_GDT, HOST_TSS, switcher_linear

CODE_DPL0 = 0x00CF9A000000FFFF  # flat code, DPL 0, accessed clear
DATA_DPL3 = 0x00CFF2000000FFFF
CALL_GATE = 0x0000EC0000600000  # a present 32-bit call gate, DPL 3
ACCESSED = 1 << 40


def published(h) -> list[int]:
    """The 32 descriptors as the CPU reads them, from the host GDT page."""
    base = HOST_GDT * 4096
    return list(struct.unpack_from("<32Q", h.memory.host, base))


def test_a_fresh_gdt_holds_the_boot_segments_and_the_hosts_own() -> None:
    h = host()
    gdt = published(h)
    assert gdt[12:14] == [DESC_GUEST_CS, DESC_GUEST_DS]
    assert gdt[10:12] == [DESC_LGUEST_CS, DESC_LGUEST_DS]
    tss = switcher_linear(HOST_TSS)
    assert gdt[16] == 0x67 | (tss & 0xFFFFFF) << 16 | 0x89 << 40 | (tss >> 24) << 56
    assert gdt[31] == 0


def test_load_fixes_up_guest_entries_and_keeps_the_hosts() -> None:
    h = host()
    entries = [0] * 32
    entries[1] = CODE_DPL0
    entries[2] = DATA_DPL3
    entries[3] = CALL_GATE
    entries[10] = entries[16] = DATA_DPL3  # the Host's own: ignored
    h.gdt.load(entries[:17])
    gdt = published(h)
    assert gdt[1] == CODE_DPL0 | 1 << 45 | ACCESSED  # DPL 0 runs in ring 1
    assert gdt[2] == DATA_DPL3 | ACCESSED
    assert gdt[3] == CALL_GATE & ~(1 << 47)  # a system descriptor is stored not present
    assert gdt[10] == DESC_LGUEST_CS and gdt[16] & 0xFF << 40 == 0x89 << 40
    # The guest's table replaces the boot segments; an empty entry is fixed up like any
    # other (still not present).
    assert gdt[12] == 1 << 45 | ACCESSED


def test_load_tls_changes_only_the_three_tls_entries() -> None:
    h = host()
    before = published(h)
    h.gdt.load_tls([DATA_DPL3, CODE_DPL0, DATA_DPL3, DATA_DPL3])
    after = published(h)
    assert after[6:9] == [DATA_DPL3 | ACCESSED, CODE_DPL0 | 1 << 45 | ACCESSED,
                          DATA_DPL3 | ACCESSED]
    assert after[:6] + after[9:] == before[:6] + before[9:]


@pytest.mark.parametrize(("selector", "usable"), [
    (GUEST_DS, True),
    (GUEST_CS, False),  # code
    (GUEST_DS & ~3, False),  # RPL 0
    (USER_DS, False),  # DPL 3
    (0x59, False),  # the Host's own data segment
    (0x101, False),  # past the table
])
def test_only_a_ring_1_data_segment_can_be_the_kernel_stack(selector: int, usable: bool) -> None:
    h = host()
    entries = list(h.gdt.entries)
    entries[USER_DS >> 3] = DATA_DPL3
    h.gdt.load(entries)
    assert h.gdt.stack_segment_ok(selector) == usable


# -- the clock ---------------------------------------------------------------------------
def test_virtual_time_is_instructions_times_the_instruction_time() -> None:
    clock = Clock(ns_per_insn=10)
    assert clock.wall_ns() == 1_201_132_800 * 10**9  # 2008-01-24, 2.6.24's release day
    clock.end_slice(1000)
    assert (clock.executed, clock.now_ns(), clock.now_ns(position=5)) == (1000, 10_000, 10_050)
    assert clock.wall_ns(5) == 1_201_132_800 * 10**9 + 10_050


def test_the_timer_fires_once_and_caps_the_slice() -> None:
    clock = Clock(ns_per_insn=10)
    clock.end_slice(100)
    clock.set_timer(1005, position=0)  # due at 2005 ns: 101 instructions from now (rounded up)
    assert clock.slice_budget(1_000_000) == 101
    assert clock.slice_budget(50) == 50
    assert not clock.expired()
    clock.end_slice(101)
    assert clock.expired() and not clock.expired()
    assert clock.slice_budget(1_000_000) == 1_000_000
    clock.set_timer(500, position=0)
    clock.set_timer(0, position=0)  # cancelled
    clock.end_slice(1000)
    assert not clock.expired()


def test_a_halted_guest_skips_to_its_timer_in_virtual_time() -> None:
    clock = Clock(ns_per_insn=10)
    clock.set_timer(4_000_000_000, position=0)
    started = time.monotonic()
    clock.idle_until_timer()
    assert time.monotonic() - started < 1  # no sleeping
    assert clock.now_ns() == 4_000_000_000 and clock.executed == 0
    assert clock.expired()


def test_a_realtime_halt_never_sleeps_past_the_runs_timeout() -> None:
    clock = Clock(realtime=True)
    clock.set_timer(60 * 10**9, position=0)
    clock.wake_by = time.monotonic() + 0.05
    started = time.monotonic()
    clock.idle_until_timer()
    assert time.monotonic() - started < 5
    assert not clock.expired()
