"""The vring engine (ABI §11) against hand-made hostile rings: one test per check it makes.

Rings are written straight into a `GuestMemory` laid out like a console-only guest's (the ring
at the page after RAM, `limit` at the end of it); what a violation must produce is the
Launcher-style kill line naming the check, the queue and the index.
"""

from __future__ import annotations

import pytest
from guestasm import assert_killed
from handring import RAM, HandRing, HandRings
from virtioasm import DEVPT_BSS, MACROS, map_device_pages, ring

from lgemu.abi import (
    PAGE_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
)
from lgemu.devices.base import Device
from lgemu.devices.vring import Buffer, Vring, WrittenPages
from lgemu.errors import GuestKilled
from lgemu.kills import BrokenVring, Kill
from lgemu.machine.memory import GuestMemory

NUM = 128
PFN = RAM // PAGE_SIZE + 1
BASE = PFN * PAGE_SIZE
LIMIT = BASE + 2 * PAGE_SIZE
NEXT, WRITE = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE


def one_ring() -> HandRing:
    """One queue in a console-sized layout: the ring right after RAM, then the limit."""
    return HandRings(1).rings[0]


def killed(ring: HandRing) -> Kill:
    with pytest.raises(GuestKilled) as caught:
        ring.vring.pop()
    return caught.value.kill


# -- well-formed rings -----------------------------------------------------------------------

def test_a_chain_is_popped_with_its_buffers_in_order_and_pushed_back():
    r = one_ring()
    r.desc(5, 0x1000, 24, NEXT, 9)
    r.desc(9, 0x2000, 512, NEXT | WRITE, 2)
    r.desc(2, 0x3000, 1, WRITE)
    r.offer(5)
    chain = r.vring.pop()
    assert chain.head == 5
    assert chain.buffers == (Buffer(0x1000, 24, False), Buffer(0x2000, 512, True),
                             Buffer(0x3000, 1, True))
    assert r.vring.pop() is None
    r.vring.push(5, 513)
    assert r.used() == [(5, 513)]


def test_indices_wrap_at_65536():
    r = one_ring()
    r.vring.last_avail = 0xFFFF
    r.avail_idx = 0xFFFF
    r.desc(0, 0x1000, 8)
    r.desc(1, 0x2000, 8)
    r.offer(0, 1)
    assert r.avail_idx == 1
    assert [r.vring.pop().head, r.vring.pop().head] == [0, 1]
    assert r.vring.pop() is None


def test_a_chain_of_exactly_num_descriptors_is_allowed():
    r = one_ring()
    for i in range(NUM):
        r.desc(i, 0x1000 + i, 1, NEXT if i < NUM - 1 else 0, i + 1)
    r.offer(0)
    assert len(r.vring.pop().buffers) == NUM


def test_avail_may_run_exactly_num_ahead():
    r = one_ring()
    r.desc(0, 0x1000, 8)
    r.offer(*[0] * NUM)
    assert r.vring.pending() == NUM


def test_a_buffer_may_end_just_below_the_limit():
    r = one_ring()
    r.desc(0, LIMIT - 16, 15)
    r.offer(0)
    assert r.vring.pop().buffers == (Buffer(LIMIT - 16, 15, False),)


# -- one test per check ------------------------------------------------------------------------

def test_head_index_not_below_num_kills():
    r = one_ring()
    r.offer(NUM)
    assert killed(r) == BrokenVring("test.0", "head index 128 at avail slot 0 is not below 128")


def test_next_index_not_below_num_kills():
    r = one_ring()
    r.desc(3, 0x1000, 8, NEXT, 200)
    r.offer(3)
    assert killed(r) == BrokenVring("test.0", "descriptor 3 links to 200, not below 128")


@pytest.mark.parametrize("links", [[(0, 0)], [(0, 1), (1, 2), (2, 0)]])
def test_a_loop_kills(links):
    r = one_ring()
    for index, nxt in links:
        r.desc(index, 0x1000, 8, NEXT, nxt)
    r.offer(0)
    assert killed(r) == BrokenVring("test.0", "chain from head 0 is longer than 128 (a loop)")


def test_a_chain_longer_than_num_kills():
    r = one_ring()
    for i in range(NUM):
        r.desc(i, 0x1000, 8, NEXT, (i + 1) % NUM)  # 129th descriptor would be 0 again
    r.offer(0)
    assert killed(r) == BrokenVring("test.0", "chain from head 0 is longer than 128 (a loop)")


@pytest.mark.parametrize(("avail_idx", "text"), [
    (NUM + 1, "avail index moved from 0 to 129, more than the ring size 128"),
    (0xFFFF, "avail index moved from 0 to 65535, more than the ring size 128"),  # backwards
])
def test_avail_index_running_too_far_ahead_kills(avail_idx, text):
    r = one_ring()
    r.avail_idx = avail_idx
    assert killed(r) == BrokenVring("test.0", text)


def test_readable_after_writable_kills():
    r = one_ring()
    r.desc(0, 0x1000, 8, NEXT | WRITE, 1)
    r.desc(1, 0x2000, 8)
    r.offer(0)
    assert killed(r) == BrokenVring("test.0",
                                    "descriptor 1 is device-readable after a writable one")


@pytest.mark.parametrize(("addr", "length"), [
    (LIMIT, 0),  # starts at the limit
    (LIMIT - 16, 16),  # ends exactly at the limit: lguest wants it below
    (0x1000, LIMIT),  # too long
    (0xFFFFF000, 0x2000),  # wraps a 32-bit address
    (0xFFFFFFFF_FFFFF000, 0x2000),  # wraps the 64-bit descriptor address
    (1 << 32, 16),  # the high half of the address is not ignored
])
def test_buffer_outside_guest_memory_kills(addr, length):
    r = one_ring()
    r.desc(0, 0x1000, 8, NEXT, 7)
    r.desc(7, addr, length)
    r.offer(0)
    assert killed(r) == BrokenVring(
        "test.0", f"descriptor 7 buffer {addr:#x}+{length} is outside guest memory")


def test_more_requests_in_flight_than_the_ring_holds_kills():
    """A device holding chains must not be handed more than `num`: the guest re-offering
    heads the host still holds is refused."""
    r = one_ring()
    r.desc(0, 0x1000, 8)
    r.offer(*[0] * NUM)
    for _ in range(NUM):
        r.vring.pop()
    r.offer(0)
    assert killed(r) == BrokenVring("test.0", "more than 128 requests in flight at avail slot 0")
    r.vring.push(0, 0)  # one returned: one more may be taken
    assert r.vring.pop().head == 0


def test_a_ring_outside_guest_memory_is_refused():
    memory = GuestMemory(RAM)
    memory.limit = BASE + PAGE_SIZE  # only one of the ring's two pages
    with pytest.raises(GuestKilled):
        Vring(memory, "test.0", PFN, NUM, 1)


# -- flags ------------------------------------------------------------------------------------

def test_completion_honours_no_interrupt():
    r = one_ring()
    raised: list[int] = []
    device = Device()
    device.attach([r.vring], raised.append)
    device.interrupt(r.vring)
    r.avail_flags = VRING_AVAIL_F_NO_INTERRUPT
    device.interrupt(r.vring)
    assert raised == [1]


def test_no_notify_is_set_and_cleared_in_used_flags():
    r = one_ring()
    r.vring.set_no_notify(True)
    assert r.used_flags == VRING_USED_F_NO_NOTIFY
    r.vring.set_no_notify(False)
    assert r.used_flags == 0


# -- host writes -------------------------------------------------------------------------------

def test_writes_scatter_over_buffers_and_log_their_pages():
    pages = WrittenPages()
    memory = GuestMemory(RAM)
    memory.limit = LIMIT
    vring = Vring(memory, "test.0", PFN, NUM, 1, pages)
    buffers = (Buffer(0x1FFE, 4, True), Buffer(0x5000, 3, True), Buffer(0x9000, 100, True))
    assert vring.write(buffers, b"abcdefghi") == 9
    assert memory.ram[0x1FFE:0x2002] == b"abcd" and memory.ram[0x5000:0x5003] == b"efg"
    assert memory.ram[0x9000:0x9003] == b"hi\0"
    assert pages.take() == [1, 2, 5, 9]
    assert pages.take() == []
    vring.wrote(buffers, 5)
    assert pages.take() == [1, 2, 5]


# -- end to end: a violation is a one-line kill, never a traceback -------------------------------

def test_a_hostile_console_ring_kills_the_guest_with_one_line(asm_guest):
    out = ring(1)  # the console's output queue in a console-only guest
    run = asm_guest(MACROS + "\tINIT\n" + map_device_pages(2) + f"""
	DESC	{out:#x}, 0, $msg, $4, $1, $300
	POST	{out:#x}, $0
	KICK	{out:#x}
	POWER_DOWN
""", 'msg:\t.ascii "oops"\n' + DEVPT_BSS)
    assert_killed(run, BrokenVring("console.1", "descriptor 0 links to 300, not below 128"))
    assert run.out == b""
