"""The CPU the guest is told it runs on: fixed `cpuid` answers and a virtual TSC.

Unicorn would answer `cpuid` and `rdtsc` from the host, so a run would depend on the machine
it ran on.  lgemu answers both itself: a 2007-era family-6 processor with only the features
Unicorn's TCG really implements, and a TSC that counts guest time at the virtual CPU's rate.
2.6.24 masks CPUID further itself (ABI §14 step 3) and ignores the TSC when `tsc_khz` is 0.
"""

from __future__ import annotations

VENDOR = b"GenuineIntel"
BRAND = "lgemu virtual CPU (lguest {era} ABI)"  # the guest's era named, 48 bytes at most

# Leaf 1 EDX: FPU, TSC, CX8, CMOV, MMX, FXSR, SSE, SSE2.  ECX: SSE3, SSSE3.
LEAF1_EDX = (1 << 0) | (1 << 4) | (1 << 8) | (1 << 15) | (1 << 23) | (1 << 24) | (1 << 25) \
    | (1 << 26)
LEAF1_ECX = (1 << 0) | (1 << 9)
LEAF1_EAX = 0x000006F6  # family 6, model 15, stepping 6
LEAF1_EBX = 0x00000800  # CLFLUSH line size 64
Leaves = dict[int, tuple[int, int, int, int]]


def _words(raw: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4))


def leaves(era: str) -> Leaves:
    """The `cpuid` answers of a virtual CPU running a guest of lguest era `era`, whose name
    the brand string carries (a 2.6.32 guest's /proc/cpuinfo says which ABI it was given)."""
    v, b = _words(VENDOR), _words(BRAND.format(era=era).encode().ljust(48, b"\0")[:48])
    return {
        0x0: (1, v[0], v[2], v[1]),  # EAX, EBX, ECX, EDX: "Genu" "ntel" "ineI"
        0x1: (LEAF1_EAX, LEAF1_EBX, LEAF1_ECX, LEAF1_EDX),
        0x80000000: (0x80000004, 0, 0, 0),
        0x80000002: b[0:4],
        0x80000003: b[4:8],
        0x80000004: b[8:12],
    }


def cpuid(table: Leaves, leaf: int) -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) for `leaf`; unknown leaves read as zeros."""
    return table.get(leaf, (0, 0, 0, 0))


def tsc(now_ns: int, ns_per_insn: int) -> int:
    """The time-stamp counter: one tick per virtual CPU cycle (one instruction)."""
    return (now_ns // ns_per_insn) & 0xFFFFFFFFFFFFFFFF
