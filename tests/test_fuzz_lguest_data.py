"""Property: whatever the guest writes into its `struct lguest_data` between hypercalls, the
Host stays in control.

`lguest_data` is guest memory the Host reads on every interrupt decision (ABI §5.3:
`irq_enabled`, `blocked_interrupts`, the `noirq` window), writes on every delivery (`time`,
`cr2`) and drains (`hcall_status`/`hcalls`, ABI §3.5).  The guest may scribble over all of it at
any time — including the fields the Host filled in at LGUEST_INIT (`reserve_mem`, `pgdir`,
`tsc_khz`) and the ones it only reads then (`kernel_address`, `syscall_vec`, `noirq_*`).
The examples interleave such writes with a ticking timer, halts, spins and traps.
"""

from __future__ import annotations

from fuzzguest import (
    FUZZ,
    MEM,
    Op,
    assert_deserved,
    ld,
    run,
    run_program,
    strategies,
    sym,
)
from hypothesis import given
from hypothesis import strategies as st

from lgemu import abi

LIMIT = MEM + 0x5000
S = strategies(LIMIT)
FIELDS = ["irq_enabled", "blocked_interrupts", "cr2", "time", "reserve_mem", "tsc_khz",
          "pgdir", "noirq_start", "noirq_end", "kernel_address", "syscall_vec"]
flag_words = st.one_of(st.sampled_from([0, 1, 0x200, 0x201, 0xFFFFFFFF, 0xFFFFFFFE, 0x1FF]),
                       S.words)
code_addresses = st.deferred(lambda: st.integers(0x100000, sym("lguest_data")))

field_writes = st.one_of(
    st.tuples(st.just(Op.LD), st.sampled_from([ld(f) for f in FIELDS]), flag_words),
    st.tuples(st.just(Op.LD), st.just(ld("time") + 4), st.integers(-2**31, 2**31 - 1)),
    st.tuples(st.just(Op.LD), st.integers(0, abi.LGUEST_DATA_SIZE - 1), S.words),
    # a noirq window over (part of) the interpreter's own code
    st.builds(lambda a, b: [(Op.LD, ld("noirq_start"), min(a, b)),
                            (Op.LD, ld("noirq_end"), max(a, b))], code_addresses,
              code_addresses),
)
activity = st.one_of(
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.SET_CLOCKEVENT)),
              st.sampled_from([1, 10, 1000, 50_000, 0xFFFFFFFF])),
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.HALT))),
    st.tuples(st.just(Op.SPIN), st.integers(0, 4000)),
    st.tuples(st.just(Op.TRAP), st.sampled_from([1, 2, 3, 5]), st.just(0)),
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.FLUSH_ASYNC))),
    st.tuples(st.just(Op.ASYNC), st.integers(0, 63), st.sampled_from([0, 5, 8, 9, 10]),
              st.integers(0, 2), S.words),
)


def _flatten(items: list) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    for item in items:
        out += item if isinstance(item, list) else [item]
    return out


TICKING = [(Op.LD, ld("blocked_interrupts"), 0), (Op.LD, ld("irq_enabled"), 0x200),
           (Op.HCALL, int(abi.Hcall.SET_CLOCKEVENT), 2000)]


@FUZZ
@given(steps=st.lists(st.one_of(field_writes, activity), min_size=1, max_size=30),
       ticking=st.booleans())
def test_scribbled_lguest_data_ends_cleanly(lgemu_main, steps, ticking) -> None:
    program = (TICKING if ticking else []) + _flatten(steps)
    assert_deserved(run_program(lgemu_main, program[:48]), program[:48])


@FUZZ
@given(noise=st.lists(st.tuples(st.sampled_from(["cr2", "time", "reserve_mem", "tsc_khz",
                                                 "pgdir", "kernel_address", "syscall_vec"]),
                                S.words), max_size=8))
def test_fields_the_host_only_wrote_do_not_matter_after_init(lgemu_main, noise) -> None:
    """After LGUEST_INIT the Host never trusts these fields again: a ticking timer still
    reaches the guest whatever they hold."""
    program = [(Op.LD, ld(f), v) for f, v in noise] + TICKING + [(Op.SPIN, 4000)]
    status, out, err = run(lgemu_main, program)
    assert (status, err) == (0, "")
    assert out.startswith(b"done t=00000000 i=") and not out.endswith(b"i=00000000")
