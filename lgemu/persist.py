"""Persist: how a component of a running guest is saved and put back (snapshots, replay).

Every component that holds guest state implements the protocol below with a state type of its
own: an immutable value holding exactly what it must get back, nothing taken by reflection.
What a component does not list is, by that, declared not to be guest state (the streams it
writes to, the hooks it installed, the files it reads).  `lgemu.host.guest.Guest.save_state`
gathers the Host's; `lgemu.debug.snapshot` adds guest memory and the CPU.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

S = TypeVar("S")


class Persist(Protocol[S]):
    """A component whose state can be saved and restored."""

    def save_state(self) -> S:
        """The component's state now, as a value later changes cannot reach."""

    def restore_state(self, state: S) -> None:
        """Become exactly what `save_state` saw."""
