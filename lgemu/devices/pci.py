"""PCI bus 0 as lguest 4.x guests probe it: a host bridge behind configuration mechanism #1.

From 4.1 on an lguest guest finds its devices by normal PCI probing (docs/eras.md): it writes
an address (enable bit, bus, device, function, register) to port 0xCF8 and reads or writes
the register through ports 0xCFC-0xCFF.  lguest's Launcher answered those port accesses for
one bus, function 0 only, with a dummy host bridge in slot 0 (Linux's conf1 sanity check
wants a host bridge on the bus) and a virtio function in each further slot.  lgemu does the
same; everything here is guest-driven and checked:

* an access to the data ports that would run past 0xCFF, or a 2-byte one at an odd port,
  is no access a driver makes: the guest is killed;
* a register of an absent function, another bus or function, or with the enable bit clear
  reads as all ones and ignores writes, as on hardware;
* each function's 256-byte configuration space has a mask of the bits the guest may
  change; everything else (IDs, class, capability list) is read-only.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import GuestKilled
from ..kills import BadMmio, BadPciAccess

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC
CONFIG_END = 0xD00  # one past the last data port
ADDRESS_ENABLE = 1 << 31
CONFIG_SPACE_SIZE = 256
MAX_SLOTS = 32  # five bits of device number

# Type-0 header offsets (PCI Local Bus 3.0, the same as Linux's pci_regs.h).
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_SUBCLASS = 0x0A
PCI_CLASS = 0x0B
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
PCI_STATUS_CAP_LIST = 0x10
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_CAP_ID_VNDR = 0x09
CLASS_BRIDGE, SUBCLASS_HOST = 0x06, 0x00


class PciFunction(Protocol):
    """What a function on the bus answers: reads and writes of its configuration space
    (offset and size already checked to stay inside one aligned dword); a function with
    registers in memory also has a BAR (`bar`, 0 for none, and `bar_size`) and answers
    `mmio_read`/`mmio_write` with offsets into it."""

    name: str

    def config_read(self, offset: int, size: int) -> int:
        """The value of `size` bytes at `offset`."""
        ...

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Store `size` bytes at `offset` (only the bits the guest may change)."""
        ...


class ConfigSpace:
    """256 bytes of configuration space and, per byte, the bits the guest may write."""

    def __init__(self) -> None:
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.writable = bytearray(CONFIG_SPACE_SIZE)

    def put(self, offset: int, size: int, value: int, writable: int = 0) -> None:
        """Set a field as the host builds the space (and which of its bits the guest may
        change)."""
        self.data[offset:offset + size] = value.to_bytes(size, "little")
        self.writable[offset:offset + size] = writable.to_bytes(size, "little")

    def read(self, offset: int, size: int) -> int:
        """Little-endian value of `size` bytes at `offset`."""
        return int.from_bytes(self.data[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write: only the writable bits change."""
        for i in range(size):
            mask = self.writable[offset + i]
            byte = (value >> 8 * i) & 0xFF
            self.data[offset + i] = (self.data[offset + i] & ~mask & 0xFF) | (byte & mask)


class HostBridge:
    """Slot 0: a host bridge with no vendor, so Linux's conf1 probe accepts the bus."""

    name = "host bridge"

    def __init__(self) -> None:
        self.space = ConfigSpace()
        self.space.put(PCI_SUBCLASS, 1, SUBCLASS_HOST)
        self.space.put(PCI_CLASS, 1, CLASS_BRIDGE)

    def config_read(self, offset: int, size: int) -> int:
        """See `PciFunction`."""
        return self.space.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """See `PciFunction` (nothing of a host bridge is writable)."""
        self.space.write(offset, size, value)


class PciBus:
    """Bus 0 behind configuration mechanism #1 (ports 0xCF8-0xCFF)."""

    def __init__(self) -> None:
        self.address = 0  # the last dword written to CONFIG_ADDRESS
        self.slots: dict[int, PciFunction] = {0: HostBridge()}

    def add(self, function: PciFunction) -> int:
        """Put `function` in the next free slot; returns the slot."""
        slot = next(s for s in range(MAX_SLOTS) if s not in self.slots)
        self.slots[slot] = function
        return slot

    @staticmethod
    def handles(port: int) -> bool:
        """Is `port` one of the configuration ports this bus answers?"""
        return CONFIG_ADDRESS <= port < CONFIG_END

    def _target(self, port: int, size: int) -> tuple[PciFunction, int] | None:
        """The function and register offset a data-port access reaches, or None (no such
        function: all ones, writes dropped)."""
        index = port - CONFIG_DATA
        if index + size > 4:
            raise GuestKilled(BadPciAccess(port, size, "runs past the data port 0xcff"))
        if size == 2 and index & 1:
            raise GuestKilled(BadPciAccess(port, size, "misaligned on the data port"))
        address = self.address
        if not address & ADDRESS_ENABLE or (address >> 16) & 0xFF or (address >> 8) & 7:
            return None
        function = self.slots.get((address >> 11) & 0x1F)
        if function is None:
            return None
        return function, (address & 0xFC) + index

    def port_in(self, port: int, size: int) -> int:
        """The value an `in` of `size` bytes from `port` reads."""
        mask = (1 << 8 * size) - 1
        if port < CONFIG_DATA:
            if port == CONFIG_ADDRESS and size == 4:
                return self.address
            return mask  # the address register is only a register as a whole dword
        target = self._target(port, size)
        if target is None:
            return mask
        function, offset = target
        return function.config_read(offset, size) & mask

    def port_out(self, port: int, size: int, value: int) -> None:
        """An `out` of `size` bytes of `value` to `port`."""
        value &= (1 << 8 * size) - 1
        if port < CONFIG_DATA:
            if port == CONFIG_ADDRESS and size == 4:
                self.address = value & 0x80FFFFFC
            return  # byte writes to 0xCFB are Linux's probe for mechanism #2: ignored
        target = self._target(port, size)
        if target is not None:
            function, offset = target
            function.config_write(offset, size, value)

    def mmio_read(self, addr: int, size: int) -> int:
        """A guest load of `size` bytes at guest-physical `addr` in the memory window."""
        function, offset = self._bar_at(addr, size)
        return function.mmio_read(offset, size)  # type: ignore[attr-defined]

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        """A guest store of `size` bytes of `value` at guest-physical `addr`."""
        function, offset = self._bar_at(addr, size)
        function.mmio_write(offset, size, value)  # type: ignore[attr-defined]

    def _bar_at(self, addr: int, size: int) -> tuple[PciFunction, int]:
        """The function whose BAR holds [addr, addr+size) whole, and the offset in it; the
        guest is killed if none does (a BAR it moved, an access across two)."""
        for function in self.slots.values():
            base = getattr(function, "bar", 0)
            if base and base <= addr and addr + size <= base + function.bar_size:  # type: ignore[attr-defined]
                return function, addr - base
        raise GuestKilled(BadMmio(addr, size))

    def save_state(self) -> int:
        """Persist: the address register (functions keep their own state)."""
        return self.address

    def restore_state(self, state: int) -> None:
        """Persist: back to `state`."""
        self.address = state
