"""Native hook callbacks: hand-written x86-64 machine code that Unicorn calls directly.

A Python hook costs a ctypes call, a GIL round trip and a Python frame each time it fires,
about a microsecond; a block hook fires for every translated block the guest executes,
millions of times in a boot.  Where a hook only has to note something down, a few dozen
bytes of machine code do it for the price of a C call, and Python reads the notes later.

The facility is small and general: `executable(code)` copies position-independent code into
a page of its own, makes the page read+execute (never writable and executable at once) and
returns its address; Unicorn takes that address wherever it takes a callback.  Mappings live
as long as the process (a hook may still point at one) and are shared between callers of the
same code.  `executable` refuses, returning None, where the code cannot run: a host that is not
x86-64 with the System V calling convention (Linux, macOS), a system that refuses to make a
page executable, or ``LGEMU_NATIVE=0`` in the environment (which forces every user back to its
Python callback: the fallback stays tested).  Every user must therefore keep a Python path.

Each stub is kept here as assembly source (GNU as, Intel syntax) next to the bytes it
assembles to; tests/test_native.py re-assembles the source with ``as --64`` and checks the
bytes, as firmware/ is checked against guest_kernel/.

The one stub so far, `BLOCK_SET`, records the set of (address, size) pairs a block hook sees
(`--coverage`): see `BlockSet`.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Callable

PAGE = mmap.PAGESIZE

_mapped: dict[bytes, int] = {}  # code -> address of its executable copy (never unmapped)
_libc: ctypes.CDLL | None = None


def host_supported() -> bool:
    """Whether this host runs x86-64 code with the System V calling convention."""
    return (sys.platform.startswith(("linux", "darwin"))
            and os.uname().machine.lower() in ("x86_64", "amd64")
            and ctypes.sizeof(ctypes.c_void_p) == 8)


def enabled() -> bool:
    """False when ``LGEMU_NATIVE=0`` asks for the Python callbacks everywhere."""
    return os.environ.get("LGEMU_NATIVE", "1") != "0"


def _load_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long)
        libc.mprotect.restype = ctypes.c_int
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        _libc = libc
    return _libc


def executable(code: bytes) -> int | None:
    """The address of an executable copy of `code` (x86-64, position-independent), mapped
    once per process and never unmapped; None where native code cannot or must not run."""
    if not (enabled() and host_supported()):
        return None
    address = _mapped.get(code)
    if address is None:
        address = _map(code)
        if address is None:
            return None
        _mapped[code] = address
    return address


def _map(code: bytes) -> int | None:
    """Copy `code` into fresh pages, then make them read+execute (W^X: the pages are never
    writable and executable at the same time, which hardened systems refuse)."""
    try:
        libc = _load_libc()
    except (OSError, AttributeError):
        return None
    size = max(PAGE, -(-len(code) // PAGE) * PAGE)
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if address is None or address == ctypes.c_void_p(-1).value:
        return None
    ctypes.memmove(address, code, len(code))
    if libc.mprotect(address, size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        libc.munmap(address, size)
        return None
    return address


# -- BLOCK_SET: a block hook that records each distinct (address, size) once --------------
#
# Unicorn calls a block hook as  void cb(uc_engine *uc, uint64_t address, uint32_t size,
# void *user_data)  -- System V: rdi, rsi, edx, rcx.  user_data is a `BlockSetState`.
#
# The stub looks the pair up in a direct-mapped table of SLOTS slots (Fibonacci hashing of the
# address's low 32 bits: the product's top 16 bits), and returns at once when the slot holds
# it: the common case, a block seen before.  Otherwise it appends the pair to a log and writes
# it into the slot (evicting whatever was there: a pair that lost its slot is logged again
# when it next runs, so the log may repeat a pair, never miss one).  When the log is already
# full it does neither and jumps to `drain`, a Python callback with the hook's own signature
# (the arguments are still in their registers and the stack is as the stub found it, so the
# jump is a tail call): it adds the log and the pair it was called for to the Python set,
# then empties the log.  The stub never writes past the log, and if the callback is cut short
# (ctypes drops an exception raised in a callback, a signal handler's included) nothing is
# lost: the log is emptied last, and the pair, not in its slot, misses again next time.  What a
# run leaves in the log, `BlockSet.drain` moves when the reader asks.
#
# Slots and log entries are 16 bytes: the address, then the size with bit 32 set, so a used
# slot never reads as an empty (all-zero) one, even for a size-0 block.
SLOTS = 1 << 16
STATE_TABLE, STATE_LOG, STATE_COUNT, STATE_CAPACITY, STATE_DRAIN = 0, 8, 16, 24, 32

BLOCK_SET_SOURCE = """\
        .intel_syntax noprefix
        .text
        # rdi = uc, rsi = address, edx = size, rcx = state (BlockSetState)
        mov     eax, edx                # rax = size (zero-extended)
        bts     rax, 32                 #       | 1 << 32: the key's second word
        imul    r8d, esi, 0x61C88647    # Fibonacci hash of the address's low 32 bits
        shr     r8d, 16                 # its top 16 bits: the slot (SLOTS = 1 << 16)
        shl     r8, 4                   # 16 bytes a slot
        add     r8, [rcx + 0]           # + state.table
        cmp     [r8], rsi
        jne     1f
        cmp     [r8 + 8], rax
        jne     1f
        ret                             # seen before
1:      mov     r9, [rcx + 16]          # first sighting (or evicted since): state.count
        cmp     r9, [rcx + 24]          # state.capacity
        jae     2f
        mov     [r8], rsi               # take the slot
        mov     [r8 + 8], rax
        mov     r10, r9
        shl     r10, 4
        add     r10, [rcx + 8]          # state.log + 16 * count
        mov     [r10], rsi
        mov     [r10 + 8], rax
        inc     r9
        mov     [rcx + 16], r9
        ret
2:      jmp     [rcx + 32]              # the log is full: tail-call state.drain
"""

BLOCK_SET_CODE = bytes.fromhex(
    "89d0480fbae82044" "69c64786c86141c1" "e81049c1e0044c03" "0149393075074939"
    "40087501c34c8b49" "104c3b4918732149" "8930498940084d89" "ca49c1e2044c0351"
    "0849893249894208" "49ffc14c894910c3" "ff6120")


class BlockSetState(ctypes.Structure):
    """What the BLOCK_SET stub reads and writes (offsets: the STATE_* constants)."""

    _fields_ = [("table", ctypes.c_void_p), ("log", ctypes.c_void_p),
                ("count", ctypes.c_uint64), ("capacity", ctypes.c_uint64),
                ("drain", ctypes.c_void_p)]


# The drain callback's type: the block hook's own signature.
DRAIN_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                               ctypes.c_void_p)


class BlockSet:
    """Native recording of (address, size) pairs into a Python set.

    `code` and `user_data` are what to register as the block hook's callback and user data;
    `blocks` is complete once `drain()` has run after the last call (the stub also drains by
    itself whenever its log fills).  Keep this object alive while the hook exists."""

    def __init__(self, code: int, blocks: set[tuple[int, int]], capacity: int = 4096) -> None:
        self.code = code
        self.blocks = blocks
        self._table = (ctypes.c_uint64 * (2 * SLOTS))()
        self._log = (ctypes.c_uint64 * (2 * capacity))()
        self._drain_cb = DRAIN_CFUNC(self._on_full)  # must outlive the hook
        self.state = BlockSetState(ctypes.addressof(self._table), ctypes.addressof(self._log),
                                   0, capacity,
                                   ctypes.cast(self._drain_cb, ctypes.c_void_p).value)
        self.user_data = ctypes.addressof(self.state)
        self.drains = 0  # times the log filled during a run (for tests and measurement)

    @classmethod
    def create(cls, blocks: set[tuple[int, int]], capacity: int = 4096) -> BlockSet | None:
        """A recorder into `blocks`, or None where native code is unavailable."""
        code = executable(BLOCK_SET_CODE)
        return None if code is None else cls(code, blocks, capacity)

    def _on_full(self, uc: object, address: int, size: int, user_data: object) -> None:
        # Called from inside Unicorn when the log is full, for a pair the stub did not log.
        self.drains += 1
        self.blocks.add((address, size))
        self.drain()

    def drain(self) -> None:
        """Move the logged pairs into `blocks`, then empty the log."""
        n = self.state.count
        if n:
            words = memoryview(self._log).cast("B").cast("Q")[:2 * n]
            self.blocks.update(zip(words[0::2], [w & 0xFFFFFFFF for w in words[1::2]], strict=True))
            self.state.count = 0

    def caller(self) -> Callable[[int, int], None]:
        """The stub as a Python function of (address, size), calling it as Unicorn would
        (for tests: the same machine code, without a CPU)."""
        fn = DRAIN_CFUNC(self.code)
        return lambda address, size: fn(None, address, size, self.user_data)
