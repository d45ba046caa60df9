"""Property: no GDT, TLS or IDT entry a guest can hand the Host gives it ring 0, reaches the
Host's own descriptors, or crashes the emulator.

The guest writes random descriptors into its GDT image and loads them (LOAD_GDT with any
count, LOAD_TLS from anywhere), installs random gates (LOAD_IDT_ENTRY with random words), then
loads segment registers with interesting selectors, jumps, calls and returns through them,
and traps from ring 1 and ring 3.  Besides lguest's fix-ups (ABI §6.2) this exercises lgemu's
own hardening: guest *system* descriptors are stored not-present, because Unicorn can abort
the whole process on a far call through a call gate (Unicorn §8.1).
"""

from __future__ import annotations

from fuzzguest import (
    FUZZ,
    MEM,
    NVARIANTS,
    Op,
    assert_deserved,
    fuzz_settings,
    run_program,
    strategies,
    sym,
)
from hypothesis import example, given
from hypothesis import strategies as st

from lgemu import abi

LIMIT = MEM + 0x5000
S = strategies(LIMIT)


def descriptor(base: int, limit: int, access: int, flags: int) -> int:
    return ((limit & 0xFFFF) | (base & 0xFFFF) << 16 | ((base >> 16) & 0xFF) << 32
            | access << 40 | ((limit >> 16) & 0xF) << 48 | flags << 52
            | ((base >> 24) & 0xFF) << 56)


descriptors = st.one_of(
    st.integers(0, 2**64 - 1),
    st.builds(descriptor,
              st.one_of(st.just(0), st.sampled_from([MEM, 0xFFC00000, 0xFFFFF000]),
                        st.integers(0, 2**32 - 1)),
              st.one_of(st.just(0xFFFFF), st.integers(0, 0xFFFFF)),
              st.one_of(st.sampled_from([0x9A, 0x92, 0xFA, 0xF2, 0xBA, 0xB2, 0x9E, 0x96,
                                         0x89, 0x8B, 0x82, 0x8C, 0xEC, 0x85, 0xE5, 0x8E, 0x8F,
                                         0x1A, 0x12]),
                        st.integers(0, 255)),
              st.one_of(st.just(0xC), st.integers(0, 15))),
)
# Selectors of the entries a program may rewrite, and some it may not.
selectors = st.one_of(S.selectors, st.builds(lambda i, rpl, ti: i << 3 | ti << 2 | rpl,
                                             st.integers(0, 40), st.integers(0, 3),
                                             st.integers(0, 1)))


def _write_descriptor(index: int, value: int) -> list[tuple[int, ...]]:
    address = sym("gdt_table") + 8 * index
    return [(Op.POKE32, address, value & 0xFFFFFFFF), (Op.POKE32, address + 4, value >> 32)]


gdt_writes = st.builds(_write_descriptor, st.integers(0, 31), descriptors)
gdt_loads = st.one_of(
    st.builds(lambda n: [(Op.HCALL, int(abi.Hcall.LOAD_GDT), sym("gdt_table"), n)],
              st.one_of(st.integers(0, 33), st.just(32), st.just(32))),
    st.builds(lambda i: [(Op.HCALL, int(abi.Hcall.LOAD_TLS), sym("gdt_table") + 8 * i)],
              st.integers(0, 29)),
)
tls_anywhere = st.builds(lambda a: [(Op.HCALL, int(abi.Hcall.LOAD_TLS), a)], S.addresses)
gates = st.builds(lambda vector, lo, hi: [(Op.HCALL, int(abi.Hcall.LOAD_IDT_ENTRY), vector, lo,
                                           hi)],
                  st.one_of(st.integers(0, 255), st.sampled_from([256, 0xFFFFFFFF])),
                  st.one_of(S.words, st.builds(lambda sel, off: sel << 16 | off, selectors,
                                               st.integers(0, 0xFFFF))),
                  st.one_of(S.words, st.builds(lambda flags: flags << 8,
                                               st.integers(0, 0xFF))))
uses = st.builds(lambda op, variant, esp, ebx, ecx, edx: [(op, variant, esp, ebx, ecx, edx)],
                 st.sampled_from([Op.TRAP, Op.TRAP, Op.USER]), st.integers(0, NVARIANTS - 1),
                 st.sampled_from([SCRATCH_STACK := 0x1800000, 0, MEM]),
                 selectors, st.one_of(st.integers(0, 0xFFFF), S.words),
                 st.one_of(st.integers(0, 0x2000), S.addresses))


@FUZZ
@given(steps=st.lists(st.one_of(gdt_writes, gdt_writes, gdt_loads, gdt_loads, gates, uses, uses,
                                uses, tls_anywhere), min_size=1, max_size=20))
def test_random_descriptors_and_gates_end_cleanly(lgemu_main, steps) -> None:
    program = [op for step in steps for op in step]
    assert_deserved(run_program(lgemu_main, program[:48]), program[:48])


@fuzz_settings(200)
@given(index=st.integers(0, 31), value=descriptors, variant=st.integers(0, NVARIANTS - 1),
       rpl=st.integers(0, 3))
# Found by a soak: sysenter's #GP is delivered between slices, through the kernel code
# segment this example has just emptied (SECURITY.md, "Segments the Host must load").
@example(index=12, value=0, variant=21, rpl=0)
def test_one_descriptor_loaded_and_used_ends_cleanly(lgemu_main, index, value, variant,
                                                     rpl) -> None:
    """The smallest case, tried many times: one random entry, loaded, then used as a
    selector by a random instruction in ring 1 and in ring 3."""
    selector = index << 3 | rpl
    program = [*_write_descriptor(index, value),
               (Op.HCALL, int(abi.Hcall.LOAD_GDT), sym("gdt_table"), 32),
               (Op.TRAP, variant, 0, selector, 0, 0x1000),
               (Op.USER, variant, SCRATCH_STACK, selector, 0, 0x1000)]
    assert_deserved(run_program(lgemu_main, program), program)
