"""What every device behind the lguest bus provides, and how kicks reach it.

The Launcher lays devices out on the device page (`launcher.devicepage`); the Host routes a
LHCALL_NOTIFY whose page is a queue's to that queue's device (ABI §10.5).  Devices never import
the Host: they get their vrings, a way to raise an interrupt and the guest's wall clock.

Work that comes from the host side (console input, received frames) is done in `poll`, which
the Host calls at every slice boundary, never inside a kick.  A halted guest with no timer is
only kept waiting if some device names an IRQ it could still raise (`wake_irqs`) and a host
file descriptor to wait on (`wait_fds`); otherwise it is stuck.
"""

from __future__ import annotations

from collections.abc import Callable

from ..abi_eras import ERA_2_6_24, Era
from ..launcher.devicepage import DeviceSpec
from .vring import Chain, Vring


class Device:
    """Base class: a virtio device type with its queues."""

    type: int = 0
    name: str = "device"
    num_queues: int = 0

    def __init__(self) -> None:
        self.queues: list[Vring] = []
        self.raise_irq: Callable[[int], None] = lambda line: None
        self.wall_ns: Callable[[], int] = lambda: 0  # the guest's wall clock (set by the Host)
        self.era: Era = ERA_2_6_24  # whose protocols the driver speaks (set by build_devices)
        # Feature bits the driver accepted (2.6.25 on; set at each status write or read from
        # the device page by the Host, always a subset of `spec().features`).
        self.acked: int = 0
        self.icount: Callable[[], int] = lambda: 0  # instructions executed (set by the Host)

    def spec(self) -> DeviceSpec:
        """How the Launcher describes this device on the device page (a device with config
        fields of its own says so here)."""
        return DeviceSpec(self.type, self.num_queues, b"")

    def attach(self, queues: list[Vring], raise_irq: Callable[[int], None]) -> None:
        """Receive the vrings the Launcher allocated, in queue order."""
        self.queues = queues
        self.raise_irq = raise_irq

    def kick(self, queue: Vring) -> None:
        """The guest notified `queue` (LHCALL_NOTIFY with its pfn << 12)."""

    def reset(self) -> None:
        """The driver wrote status 0 (2.6.26 on): the Host has emptied the queues; forget
        anything half-done with them (the base keeps nothing)."""

    def poll(self) -> None:
        """Slice boundary: move host input (if any) into buffers the guest has posted."""

    def wake_irqs(self) -> list[int]:
        """IRQ lines this device could still raise while the guest sleeps (host input that
        may arrive into buffers already posted, on a queue that wants interrupts)."""
        return []

    def wait_fds(self) -> list[int]:
        """Host file descriptors whose input the device is waiting for (for `select`)."""
        return []

    def polled_fds(self) -> list[int]:
        """Live host input the guest collects by polling on its timer rather than through an
        interrupt (the 2.6.24 console): while the guest sleeps, waiting for it in real time
        keeps an idle interactive guest from spinning through virtual time."""
        return []

    def run_starts(self) -> None:
        """The guest is about to run (a console terminal goes raw)."""

    def run_ends(self) -> None:
        """The run is over: give back what only a running guest needed (a terminal's mode),
        before lgemu prints its summary and ending."""

    def input_ended(self) -> bool:
        """Did this device's host input come to its end (end of file, pipe closed)?"""
        return False

    def summary(self) -> str:
        """One line of what the device did, for `-v`."""
        return ""

    def interrupt(self, queue: Vring) -> None:
        """Raise the queue's IRQ unless the guest asked for none (ABI §11.3)."""
        if queue.wants_interrupt():
            self.raise_irq(queue.irq)

    def serve(self, queue: Vring, handle: Callable[[Chain], int],
              more: Callable[[], bool] = lambda: True) -> None:
        """Complete available chains in order while `more()`: `handle` does the work and
        returns the bytes it wrote into the guest's buffers; one interrupt for them all."""
        served = False
        while more() and (chain := queue.pop()) is not None:
            queue.push(chain.head, handle(chain))
            served = True
        if served:
            self.interrupt(queue)

    def save_state(self) -> object:
        """Persist: the device's own state beyond its vrings (None: it keeps none that can be
        replayed; `lgemu.debug.snapshot` refuses time travel with such devices)."""
        return None

    def restore_state(self, state: object) -> None:
        """Persist: back to `state`."""

    def close(self) -> None:
        """Release host resources (files, sockets)."""
