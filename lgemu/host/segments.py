"""The host-owned GDT (ABI §6).

The CPU's GDTR points at a host page that appears at 0xFFC00000+4K in every address space.
The guest never writes it: LOAD_GDT and LOAD_TLS hand descriptors to the Host, which copies
the guest-controlled entries and applies lguest's fix-ups (ABI §6.2).  Entries 10, 11 and 16 are
the Host's own; 31 (the double-fault TSS) is never installed.

One hardening beyond 2.6.24: a present *system* descriptor (call gate, TSS, LDT) supplied by
the guest is stored not-present.  Real lguest let such a call gate reach ring 0; in Unicorn a
far call through one can even abort the process (Unicorn §8.1).  2.6.24 itself only
places system descriptors in the host-owned slots, so nothing it does changes.
"""

from __future__ import annotations

import struct

from ..abi import (
    DESC_GUEST_CS,
    DESC_GUEST_DS,
    DESC_LGUEST_CS,
    DESC_LGUEST_DS,
    GDT_ENTRIES,
    GDT_ENTRY_DOUBLEFAULT_TSS,
    GDT_ENTRY_KERNEL_CS,
    GDT_ENTRY_KERNEL_DS,
    GDT_ENTRY_LGUEST_CS,
    GDT_ENTRY_LGUEST_DS,
    GDT_ENTRY_TLS_ENTRIES,
    GDT_ENTRY_TLS_MIN,
    GDT_ENTRY_TSS,
    HOST_GDT_ENTRIES,
    PAGE_SIZE,
)

DESC_PRESENT = 1 << 47
DESC_SYSTEM_BIT = 1 << 44  # S: 1 for code/data, 0 for system descriptors
DESC_DPL_SHIFT = 45
DESC_ACCESSED = 1 << 40
TSS_LIMIT = 0x67

_GDT = struct.Struct(f"<{GDT_ENTRIES}Q")


def tss_descriptor(base: int) -> int:
    """A present, available 32-bit TSS descriptor (type 9, DPL 0) at `base`."""
    return (TSS_LIMIT | (base & 0xFFFFFF) << 16 | 0x89 << 40 | ((base >> 24) & 0xFF) << 56)


def fix_up(desc: int) -> int:
    """lguest's fix-up (ABI §6.2): DPL 0 becomes 1, accessed always set; plus system → absent."""
    if desc & DESC_PRESENT and not desc & DESC_SYSTEM_BIT:
        return desc & ~DESC_PRESENT
    if (desc >> DESC_DPL_SHIFT) & 3 == 0:
        desc |= 1 << DESC_DPL_SHIFT
    return desc | DESC_ACCESSED


class Gdt:
    """The 32 GDT entries the guest's segment loads see, kept in a host page."""

    def __init__(self, page: memoryview, tss_linear: int) -> None:
        assert len(page) >= PAGE_SIZE
        self._page = page
        self.entries = [0] * GDT_ENTRIES
        self.entries[GDT_ENTRY_KERNEL_CS] = DESC_GUEST_CS  # ABI §2: the boot segments
        self.entries[GDT_ENTRY_KERNEL_DS] = DESC_GUEST_DS
        self._host = {GDT_ENTRY_LGUEST_CS: DESC_LGUEST_CS, GDT_ENTRY_LGUEST_DS: DESC_LGUEST_DS,
                      GDT_ENTRY_TSS: tss_descriptor(tss_linear), GDT_ENTRY_DOUBLEFAULT_TSS: 0}
        self._publish()

    def load(self, descriptors: list[int]) -> None:
        """LHCALL_LOAD_GDT: take entries 0..n-1, then fix up all 32 (ABI §3.3, §6.2)."""
        for i, desc in enumerate(descriptors):
            self.entries[i] = desc
        self._fix_up(range(GDT_ENTRIES))

    def load_entry(self, index: int, desc: int) -> None:
        """LHCALL_LOAD_GDT_ENTRY (2.6.30 on): one entry (`index` already checked), fixed up
        like the rest; the Host's own entries stay the Host's."""
        self.entries[index] = desc
        self._fix_up(range(index, index + 1))

    def load_tls(self, descriptors: list[int]) -> None:
        """LHCALL_LOAD_TLS: entries 6, 7 and 8 (ABI §6.3)."""
        for i, desc in enumerate(descriptors[:GDT_ENTRY_TLS_ENTRIES]):
            self.entries[GDT_ENTRY_TLS_MIN + i] = desc
        self._fix_up(range(GDT_ENTRY_TLS_MIN, GDT_ENTRY_TLS_MIN + GDT_ENTRY_TLS_ENTRIES))

    def _fix_up(self, indices: range) -> None:
        for i in indices:
            if i not in HOST_GDT_ENTRIES:
                self.entries[i] = fix_up(self.entries[i])
        self._publish()

    def _publish(self) -> None:
        for i, desc in self._host.items():
            self.entries[i] = desc
        _GDT.pack_into(self._page, 0, *self.entries)

    def save_state(self) -> tuple[int, ...]:
        """Persist: the 32 descriptors (the host page holding them is saved with guest
        memory)."""
        return tuple(self.entries)

    def restore_state(self, state: tuple[int, ...]) -> None:
        """Persist: back to `state`."""
        self.entries = list(state)

    def stack_segment_ok(self, selector: int) -> bool:
        """Could ring 1 load `selector` into SS: a present, writable data segment of DPL 1
        with RPL 1?  (Checked before the Host switches stacks, so a bad SET_STACK is a kill,
        not a confused CPU.)"""
        index = selector >> 3
        if selector & 3 != 1 or index >= GDT_ENTRIES or index in HOST_GDT_ENTRIES:
            return False
        desc = self.entries[index]
        access = (desc >> 40) & 0xFF
        # present (0x80), DPL 1 (0x20), S=1 (0x10), data (bit 3 clear), writable (0x02)
        return access & 0xFA == 0xB2
