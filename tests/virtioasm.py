"""Virtqueues driven by hand from tiny assembler guests, to test the host's devices.

A `guestasm` guest knows nothing of virtio, so these helpers write the ring the way a 2.6.24
driver would: descriptors, then the head in `avail.ring[avail.idx % 128]`, then `avail.idx`,
then LHCALL_NOTIFY with the ring's address (ABI §10.5, §11.3).

Rings live above RAM (ABI §1.4), which the Launcher's identity map leaves out, so a guest first
runs `map_device_pages(queues)`: one page table in .bss (`DEVPT_BSS`) for the 4 MiB above
RAM.  Queue *n* in creation order is at `ring(n)`; with `--block` first, the block queue is
queue 0 and the console's queues follow (ABI §10.3).

Everything is emitted as GNU as text for `guestasm.build_guest`; `MACROS` must come first in
the body.  The macros clobber EAX–EDX like `HCALL`.
"""

from __future__ import annotations

from lgemu.abi import PAGE_SIZE, VRING_PAGES, vring_offsets

MIB = 1 << 20
MEM = 64 * MIB  # the guests run with the default -m 64
NUM = 128
_, AVAIL, USED = vring_offsets(NUM)
F_NEXT, F_WRITE = 1, 2


def ring(queue: int) -> int:
    """Guest-physical (= virtual, once mapped) address of queue `queue`'s ring."""
    return MEM + PAGE_SIZE + queue * VRING_PAGES * PAGE_SIZE


def used_idx(queue: int) -> str:
    """An operand for `movzwl`: the used ring's index."""
    return f"{ring(queue) + USED + 2:#x}"


def used_len(queue: int, slot: int = 0) -> str:
    """An operand: `used.ring[slot].len`."""
    return f"{ring(queue) + USED + 4 + 8 * slot + 4:#x}"


def used_id(queue: int, slot: int = 0) -> str:
    """An operand: `used.ring[slot].id`."""
    return f"{ring(queue) + USED + 4 + 8 * slot:#x}"


def used_flags(queue: int) -> str:
    """An operand for `movzwl`: the used ring's flags (NO_NOTIFY is bit 0)."""
    return f"{ring(queue) + USED:#x}"


def avail_flags(queue: int) -> str:
    """An operand for `movw`: the avail ring's flags (NO_INTERRUPT is bit 0)."""
    return f"{ring(queue) + AVAIL:#x}"


def map_device_pages(queues: int) -> str:
    """Map the device page and `queues` rings (virtual = physical) through `devpt`."""
    return f"""
	movl	lguest_data+LD_PGDIR, %esi
	movl	$devpt, %edi
	movl	${MEM | 7:#x}, %eax
	movl	${1 + VRING_PAGES * queues}, %ecx
1:	movl	%eax, (%edi)
	addl	$0x1000, %eax
	addl	$4, %edi
	loop	1b
	movl	$devpt, %eax
	orl	$7, %eax
	movl	%eax, {MEM >> 22}*4(%esi)
"""


DEVPT_BSS = "\t.bss\n\t.balign 4096\ndevpt:\t.space 4096\n\t.data\n"

MACROS = rf"""
	.macro	DESC ring, i, addr, len, flags=$0, next=$0
	movl	\addr, \ring + 16*\i
	movl	$0, \ring + 16*\i + 4
	movl	\len, \ring + 16*\i + 8
	movw	\flags, \ring + 16*\i + 12
	movw	\next, \ring + 16*\i + 14
	.endm

	.macro	POST ring, head
	movzwl	\ring + {AVAIL + 2}, %eax
	andl	${NUM - 1}, %eax
	movw	\head, (\ring + {AVAIL + 4})(,%eax,2)
	incw	\ring + {AVAIL + 2}
	.endm

	.macro	KICK ring
	HCALL	$LHCALL_NOTIFY, $\ring
	.endm

	.macro	WAIT_USED ring, count
1:	cmpw	\count, \ring + {USED + 2}
	jne	1b
	.endm
"""


def chain(queue: int, buffers: list[tuple[str, str, bool]], first: int = 0,
          kick: bool = True) -> str:
    """Descriptors `first`, `first+1`, … for `buffers` (addr operand, len operand,
    device-writable), linked in order, posted as one chain and (by default) kicked."""
    r = ring(queue)
    lines = []
    for n, (addr, length, writable) in enumerate(buffers):
        last = n == len(buffers) - 1
        flags = (0 if last else F_NEXT) | (F_WRITE if writable else 0)
        nxt = 0 if last else first + n + 1
        lines.append(f"\tDESC\t{r:#x}, {first + n}, {addr}, {length}, ${flags}, ${nxt}")
    lines.append(f"\tPOST\t{r:#x}, ${first}")
    if kick:
        lines.append(f"\tKICK\t{r:#x}")
    return "\n".join(lines) + "\n"


def report(queue: int, slot: int = 0) -> str:
    """PUTHEX used.idx, used.ring[slot].id and used.ring[slot].len."""
    return f"""
	movzwl	{used_idx(queue)}, %eax
	PUTHEX	%eax
	PUTHEX	{used_id(queue, slot)}
	PUTHEX	{used_len(queue, slot)}
"""


def hexwords(*values: int) -> bytes:
    """What a run of PUTHEX prints."""
    return b"".join(f"{v & 0xFFFFFFFF:08x}".encode() for v in values)
