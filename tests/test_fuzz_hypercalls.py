"""Property: no sequence of hypercalls, synchronous or queued on the async ring, escapes the
Host's checks.

tests/test_hostile.py already throws random *synchronous* calls at the Host.  Here the calls
are mixed with async-ring entries (ABI §3.5), with ring status bytes the guest flips itself, and
with time passing between them, so the ring is drained at every odd moment: before a
synchronous call that kills, around a NOTIFY that stops a pass early, across the wrap of the
ring cursor.  Every example must end as its program deserves (`fuzzguest.assert_deserved`).
"""

from __future__ import annotations

from fuzzguest import (
    FUZZ,
    MEM,
    Op,
    assert_deserved,
    run,
    run_program,
    strategies,
    sym,
)
from hypothesis import given
from hypothesis import strategies as st

from lgemu import abi

LIMIT = MEM + 0x5000  # console only: pfn_limit (ABI §1.4)
S = strategies(LIMIT)

operations = st.one_of(
    st.tuples(st.just(Op.HCALL), S.calls, S.words, S.words, S.words),
    st.tuples(st.just(Op.ASYNC), st.integers(0, 63), S.calls, S.words, S.words, S.words),
    st.tuples(st.just(Op.SPIN), st.integers(0, 3000)),
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.FLUSH_ASYNC))),
    # flip a ring slot's status byte behind the Host's cursor
    st.builds(lambda slot, value: (Op.POKE8, sym("lguest_data") + abi.LD_HCALL_STATUS + slot,
                                   value),
              st.integers(0, 63), st.sampled_from([0, 1, 0x7F, 0xFE, 0xFF])),
)


@FUZZ
@given(ops=st.lists(operations, min_size=1, max_size=24))
def test_sync_and_async_hypercalls_end_cleanly(lgemu_main, ops) -> None:
    assert_deserved(run_program(lgemu_main, ops), ops)


# Calls that are fine on their own, with the addresses they need.
HARMLESS = st.sampled_from([
    (abi.Hcall.FLUSH_ASYNC, 0, 0, 0),
    (abi.Hcall.FLUSH_TLB, 1, 0, 0),
    (abi.Hcall.FLUSH_TLB, 0, 0, 0),
    (abi.Hcall.TS, 1, 0, 0),
    (abi.Hcall.TS, 0, 0, 0),
    (abi.Hcall.SET_CLOCKEVENT, 0, 0, 0),
    (abi.Hcall.SET_PTE, 0, 0, 0),
    (abi.Hcall.SET_PMD, 0, 5, 0),
    (abi.Hcall.LOAD_IDT_ENTRY, 0x81, 0, 0),
    (abi.Hcall.LOAD_TLS, "gdt_table", 0, 0),
    (abi.Hcall.NOTIFY, "empty_string", 0, 0),
])


def _queued(slot: int, call: tuple) -> tuple[int, ...]:
    nr, a1, a2, a3 = call
    if a1 == "gdt_table":
        a1 = sym("gdt_table")
    elif a1 == "empty_string":
        a1 = sym("lguest_data") + abi.LD_HCALLS + 16 * 64 - 1  # hcalls[63].arg1 top byte: 0
    return (Op.ASYNC, slot, int(nr), a1, a2, a3)


@FUZZ
@given(batches=st.lists(st.lists(st.builds(_queued, st.integers(0, 63), HARMLESS),
                                 min_size=1, max_size=10), min_size=1, max_size=5))
def test_harmless_ring_entries_never_end_the_run(lgemu_main, batches) -> None:
    """Queued calls that are fine on their own stay fine from the ring, in any slots, across
    the cursor's wrap: the guest powers down having taken no trap."""
    program = []
    for batch in batches:
        program += batch
        program.append((Op.HCALL, int(abi.Hcall.FLUSH_ASYNC)))
    status, out, err = run(lgemu_main, program)
    assert (status, err) == (0, "")
    assert out.startswith(b"done t=00000000 ")
