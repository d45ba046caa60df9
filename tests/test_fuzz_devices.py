"""Property: no device page bytes, vring state or request a guest writes can make a device
read or write outside guest memory or outside its disk image.

The interpreter guest maps the device page and the rings (virtual = physical, through a page
table of its own at PDE 16), then writes random descriptor tables, avail rings and indices,
used rings, device page bytes (descriptor types, lengths, VIRTQUEUE fields, status bytes)
and virtio-blk request headers, and kicks queues — the right ones, the device page, the
second page of a ring.  Runs use ``-v`` so the end-of-run summary, which reads the device
page the guest scribbled on, is exercised too.  Disk images must keep their size, and a
read-only image its bytes; every run ends as its program deserves.
"""

from __future__ import annotations

import hashlib

import pytest
from fuzzguest import (
    FUZZ,
    MEM,
    SCRATCH,
    Op,
    assert_deserved,
    fuzz_settings,
    run_program,
    strategies,
)
from hypothesis import given
from hypothesis import strategies as st

from lgemu import abi

AVAIL, USED = abi.vring_offsets(abi.VIRTQUEUE_NUM)[1:]
DEVPT = SCRATCH + 0x200000  # the example's page table for the device pages
BUF = SCRATCH + 0x300000  # request headers and data buffers
SECTORS = 64


def layout(extra_queues: int) -> tuple[list[int], int]:
    """Ring addresses (creation order, console last) and the end of guest memory."""
    queues = extra_queues + 2
    rings = [MEM + abi.PAGE_SIZE * (1 + abi.VRING_PAGES * q) for q in range(queues)]
    return rings, MEM + abi.PAGE_SIZE * (1 + abi.VRING_PAGES * queues)


def map_devices(limit: int) -> list[tuple[int, ...]]:
    pages = (limit - MEM) // abi.PAGE_SIZE
    return [(Op.FILL, DEVPT, MEM | 0x67, pages, abi.PAGE_SIZE), (Op.PDE, MEM >> 22, DEVPT | 0x67)]


def device_steps(rings: list[int], limit: int):
    S = strategies(limit)
    ring_addr = st.sampled_from(rings)
    lengths = st.one_of(st.sampled_from([0, 1, 2, 23, 24, 25, 511, 512, 513, 4096, 0x10000,
                                         limit, 0x7FFFFFFF, 0xFFFFFFFF]), S.words)
    buffers = st.one_of(st.sampled_from([BUF, BUF + 24, BUF + 0x1000, MEM, limit - 1, limit,
                                         0xFFFFFFFF, 0x100000]), S.addresses)
    flag_words = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(0, 0xFFFF))
    nexts = st.one_of(st.integers(0, 8), st.sampled_from([127, 128, 0xFFFF]))

    def descriptor(ring: int, index: int, addr: int, hi: int, length: int, flags: int,
                   nxt: int) -> list[tuple[int, ...]]:
        base = ring + 16 * index
        return [(Op.POKE32, base, addr), (Op.POKE32, base + 4, hi),
                (Op.POKE32, base + 8, length), (Op.POKE32, base + 12, flags | nxt << 16)]

    def offer(ring: int, slot: int, head: int, idx: int) -> list[tuple[int, ...]]:
        return [(Op.POKE32, ring + AVAIL + 4 + 2 * (slot & ~1), head | head << 16),
                (Op.POKE32, ring + AVAIL, idx << 16)]

    def header(kind: int, sector: int) -> list[tuple[int, ...]]:
        return [(Op.POKE32, BUF, kind), (Op.POKE32, BUF + 8, sector & 0xFFFFFFFF),
                (Op.POKE32, BUF + 12, sector >> 32)]

    def request(ring: int, head: int, data_len: int, write: bool, kind: int, sector: int,
                idx: int) -> list[tuple[int, ...]]:
        """A well-formed virtio-blk chain (header, data, status) with hostile contents."""
        data_flags = 0 if write else abi.VRING_DESC_F_WRITE
        return (header(kind, sector)
                + descriptor(ring, head, BUF, 0, 24, 1, head + 1)
                + descriptor(ring, head + 1, BUF + 0x1000, 0, data_len, 1 | data_flags,
                             head + 2)
                + descriptor(ring, head + 2, BUF + 24, 0, 1, 2, 0)
                + offer(ring, idx - 1, head, idx) + [(Op.HCALL, int(abi.Hcall.NOTIFY), ring)])

    return st.one_of(
        st.builds(descriptor, ring_addr, st.integers(0, 8), buffers,
                  st.sampled_from([0, 0, 1, 0xFFFFFFFF]), lengths, flag_words, nexts),
        st.builds(offer, ring_addr, st.integers(0, 3), st.one_of(st.integers(0, 8), nexts),
                  st.one_of(st.integers(0, 4), st.sampled_from([128, 129, 0xFFFF]))),
        st.builds(lambda r, v: [(Op.HCALL, int(abi.Hcall.NOTIFY), r + v)], ring_addr,
                  st.sampled_from([0, 0, 0, 0x1000, 0x800, 1])),
        st.builds(lambda r, off, v: [(Op.POKE32, r + USED + off, v)], ring_addr,
                  st.sampled_from([0, 4, 8, 0x3FC]), S.words),
        st.builds(lambda off, v: [(Op.POKE8, MEM + off, v)],
                  st.one_of(st.integers(0, 0x40), st.integers(0, 0xFFF)), st.integers(0, 255)),
        st.builds(lambda off, v: [(Op.POKE32, MEM + off, v)], st.integers(0, 0x40), S.words),
        st.builds(request, ring_addr, st.integers(0, 4), lengths, st.booleans(),
                  st.sampled_from([abi.VIRTIO_BLK_T_IN, abi.VIRTIO_BLK_T_OUT,
                                   abi.VIRTIO_BLK_T_OUT | abi.VIRTIO_BLK_T_BARRIER,
                                   abi.VIRTIO_BLK_T_SCSI_CMD, 0xFFFFFFFF]),
                  st.one_of(st.sampled_from([0, SECTORS - 1, SECTORS, 2**32, 2**55, 2**63,
                                             2**64 - 1]), st.integers(0, 2**64 - 1)),
                  st.integers(1, 3)),
        st.just([(Op.SPIN, 500)]),
    )


CONSOLE_RINGS, CONSOLE_LIMIT = layout(0)
BLOCK_RINGS, BLOCK_LIMIT = layout(1)


@fuzz_settings(80)
@given(steps=st.lists(device_steps(CONSOLE_RINGS, CONSOLE_LIMIT), min_size=1, max_size=8),
       verbose=st.booleans())
def test_console_rings_and_device_page_end_cleanly(lgemu_main, steps, verbose) -> None:
    program = map_devices(CONSOLE_LIMIT) + [op for step in steps for op in step]
    outcome = run_program(lgemu_main, program[:48], extra=["-v"] if verbose else [])
    # -v: the layout and a summary around the outcome; the last line is the outcome's own
    assert_deserved(outcome, program[:48], verbose)


@pytest.fixture
def disk(tmp_path):
    def make(read_only: bool) -> tuple[str, object]:
        path = tmp_path / "disk.img"
        path.write_bytes(bytes(range(256)) * (SECTORS * 2))
        return str(path) + (",ro" if read_only else ""), path
    return make


@FUZZ
@given(steps=st.lists(device_steps(BLOCK_RINGS, BLOCK_LIMIT), min_size=1, max_size=6),
       read_only=st.booleans())
def test_block_requests_stay_inside_the_image(lgemu_main, disk, steps, read_only) -> None:
    option, path = disk(read_only)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    program = map_devices(BLOCK_LIMIT) + [op for step in steps for op in step]
    assert_deserved(run_program(lgemu_main, program[:48], extra=["--block", option]),
                    program[:48])
    assert path.stat().st_size == SECTORS * 512
    if read_only:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
