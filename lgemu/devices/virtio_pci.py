"""Virtio 1.0 ("modern") PCI functions: how lguest 4.x guests reach console, block and net.

Each function wraps one of the existing device back-ends (`Console`, `Block`, `Net`) and
gives it the PCI face lguest 4.x's Launcher gave it: vendor 0x1AF4, device 0x1040 + the
virtio type, one 32-bit memory BAR (BAR0) above guest RAM, no MSI-X, and an INTx line
whose number is in PCI_INTERRUPT_LINE (the guest's lguest_enable_irq reads it there).

BAR0 holds, back to back, the structures the capability list points at:

    0   struct virtio_pci_common_cfg (56 bytes: features, status, queue set-up)
    56  the notify register (u16: the queue index; every queue shares it)
    58  the ISR byte (bit 0: a queue interrupt; reading clears it)
    60  the device's own configuration (virtio_console_config, virtio_blk_config, ...)

and the capability list in configuration space is common (0x40), notify (0x50), ISR
(0x64), device config (0x74) and the PCI configuration access window (0x84) through which
the 4.x early console writes `virtio_console_config.emerg_wr` one character at a time.

Everything the guest writes is checked: an access must lie inside one of the structures
above with a width the field has (1, 2 or 4 bytes; 64-bit queue addresses as two halves);
a queue is enabled only with a power-of-two size no larger than the device offers and
rings inside guest memory (`Vring.placed`); notify names an enabled queue.  Breaking a
rule kills the guest with `BadVirtioPci` naming the function and the rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..abi import DeviceType
from ..errors import GuestKilled
from ..kills import BadVirtioPci
from ..machine.memory import GuestMemory
from .base import Device
from .console import Console
from .pci import (
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_VNDR,
    PCI_CAPABILITY_LIST,
    PCI_CLASS,
    PCI_COMMAND,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_DEVICE_ID,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_REVISION_ID,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PCI_SUBCLASS,
    PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID,
    PCI_VENDOR_ID,
    ConfigSpace,
    PciBus,
)
from .vring import Vring, WrittenPages

VIRTIO_VENDOR = 0x1AF4
VIRTIO_MODERN_DEVICE_BASE = 0x1040  # device ID = 0x1040 + virtio device type
VIRTIO_F_VERSION_1 = 1 << 32
VIRTIO_CONSOLE_F_EMERG_WRITE = 1 << 2
VIRTIO_BLK_F_SEG_MAX = 1 << 2
VIRTIO_NET_F_MAC = 1 << 5
VIRTIO_MSI_NO_VECTOR = 0xFFFF
QUEUE_SIZE = 256  # the largest ring each queue offers (lguest 4.x's VIRTQUEUE_NUM)
BLK_SEG_MAX = 126

# virtio_pci_cap cfg_type values.
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG = 1, 2, 3, 4, 5
# Where each capability sits in configuration space, and the access window's registers.
CAP_AT = {CAP_COMMON: 0x40, CAP_NOTIFY: 0x50, CAP_ISR: 0x64, CAP_DEVICE: 0x74,
          CAP_PCI_CFG: 0x84}
CFG_BAR, CFG_OFFSET, CFG_LENGTH = 0x84 + 4, 0x84 + 8, 0x84 + 12
CFG_WINDOW = 0x84 + 16

# BAR0's layout.
COMMON_LEN = 56
NOTIFY_AT, ISR_AT, DEVICE_AT = 56, 58, 60
BAR_SIZE = 4096  # a page per function: the Host traps BAR pages whole

# virtio_pci_common_cfg: offset -> (name, width).  The 64-bit queue addresses are two
# 32-bit registers each, as the driver writes them.
COMMON_FIELDS: dict[int, tuple[str, int]] = {
    0: ("device_feature_select", 4), 4: ("device_feature", 4),
    8: ("driver_feature_select", 4), 12: ("driver_feature", 4),
    16: ("msix_config", 2), 18: ("num_queues", 2), 20: ("device_status", 1),
    21: ("config_generation", 1), 22: ("queue_select", 2), 24: ("queue_size", 2),
    26: ("queue_msix_vector", 2), 28: ("queue_enable", 2), 30: ("queue_notify_off", 2),
    32: ("queue_desc_lo", 4), 36: ("queue_desc_hi", 4), 40: ("queue_avail_lo", 4),
    44: ("queue_avail_hi", 4), 48: ("queue_used_lo", 4), 52: ("queue_used_hi", 4),
}
STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK = 1, 2, 4, 8
STATUS_FAILED = 0x80

# PCI class (class, subclass) per virtio type, as virtio's PCI binding suggests.
_CLASS = {DeviceType.NET: (0x02, 0x00), DeviceType.BLOCK: (0x01, 0x80),
          DeviceType.CONSOLE: (0x07, 0x80)}
EMERG_WR = 8  # virtio_console_config: cols u16, rows u16, max_nr_ports u32, emerg_wr u32


@dataclass
class QueueSetup:
    """What the driver wrote for one queue before enabling it."""

    size: int = QUEUE_SIZE
    desc: int = 0
    avail: int = 0
    used: int = 0
    ring: Vring | None = None


def modern_config(device: Device) -> tuple[int, bytes]:
    """The features a device offers over virtio 1.0 and its device-config bytes."""
    if device.type == DeviceType.CONSOLE:
        return VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_EMERG_WRITE, bytes(12)
    if device.type == DeviceType.BLOCK:
        capacity: int = getattr(device, "capacity", 0)
        # what 4.4's Launcher offered (SEG_MAX), and anything the era adds (it adds nothing)
        return (VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | device.era.blk_offers,
                capacity.to_bytes(8, "little") + bytes(4) + BLK_SEG_MAX.to_bytes(4, "little"))
    if device.type == DeviceType.NET:
        mac: bytes = getattr(device, "mac", bytes(6))
        return VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC, mac + bytes(2)
    return VIRTIO_F_VERSION_1, b""


class VirtioPciFunction:
    """One virtio device as a PCI function: configuration space plus BAR0's registers."""

    bar_size = BAR_SIZE

    def __init__(self, device: Device, memory: GuestMemory, irq: int, bar: int,
                 raise_line: Callable[[int], None], written: WrittenPages | None = None,
                 emergency: Callable[[int], None] | None = None) -> None:
        self.device = device
        self.memory = memory
        self.irq = irq
        self.raise_line = raise_line
        self.written = written
        self.emergency = emergency  # emerg_wr's byte goes here (the console's output)
        self.on_push: Callable[[Vring, int, int], None] | None = None  # as `Vring.on_push`
        self.name = device.name
        self.features, config = modern_config(device)
        self.device_config = bytearray(config)
        self.space = ConfigSpace()
        self._build_space(bar)
        self.reset()

    # -- configuration space ---------------------------------------------------------------
    def _build_space(self, bar: int) -> None:
        s, kind = self.space, self.device.type
        s.put(PCI_VENDOR_ID, 2, VIRTIO_VENDOR)
        s.put(PCI_DEVICE_ID, 2, VIRTIO_MODERN_DEVICE_BASE + kind)
        s.put(PCI_COMMAND, 2, 0, writable=PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        s.put(PCI_STATUS, 2, PCI_STATUS_CAP_LIST)
        s.put(PCI_REVISION_ID, 1, 1)  # non-transitional: no legacy I/O BAR
        klass, subclass = _CLASS.get(DeviceType(kind), (0xFF, 0x00))
        s.put(PCI_SUBCLASS, 1, subclass)
        s.put(PCI_CLASS, 1, klass)
        # BAR0: 32-bit memory; only the bits above its size may be written (BAR sizing).
        s.put(PCI_BASE_ADDRESS_0, 4, bar, writable=~(BAR_SIZE - 1) & 0xFFFFFFFF)
        s.put(PCI_SUBSYSTEM_VENDOR_ID, 2, VIRTIO_VENDOR)
        s.put(PCI_SUBSYSTEM_ID, 2, kind)
        s.put(PCI_CAPABILITY_LIST, 1, CAP_AT[CAP_COMMON])
        s.put(PCI_INTERRUPT_LINE, 1, self.irq, writable=0xFF)
        s.put(PCI_INTERRUPT_PIN, 1, 1)
        caps = ((CAP_COMMON, 0, COMMON_LEN), (CAP_NOTIFY, NOTIFY_AT, 2), (CAP_ISR, ISR_AT, 1),
                (CAP_DEVICE, DEVICE_AT, len(self.device_config)), (CAP_PCI_CFG, 0, 0))
        for i, (kind_, offset, length) in enumerate(caps):
            at = CAP_AT[kind_]
            following = CAP_AT[caps[i + 1][0]] if i + 1 < len(caps) else 0
            cap_len = {CAP_NOTIFY: 20, CAP_PCI_CFG: 20}.get(kind_, 16)
            s.put(at, 1, PCI_CAP_ID_VNDR)
            s.put(at + 1, 1, following)
            s.put(at + 2, 1, cap_len)
            s.put(at + 3, 1, kind_)
            s.put(at + 8, 4, offset)
            s.put(at + 12, 4, length)
        # notify_off_multiplier 0: every queue is notified at the same register.
        s.put(CAP_AT[CAP_NOTIFY] + 16, 4, 0)
        s.put(CFG_BAR, 1, 0, writable=0xFF)
        s.put(CFG_OFFSET, 4, 0, writable=0xFFFFFFFF)
        s.put(CFG_LENGTH, 4, 0, writable=0xFFFFFFFF)
        s.put(CFG_WINDOW, 4, 0, writable=0xFFFFFFFF)

    @property
    def bar(self) -> int:
        """BAR0's guest-physical base address as the guest last programmed it."""
        return self.space.read(PCI_BASE_ADDRESS_0, 4) & ~0xF

    def config_read(self, offset: int, size: int) -> int:
        """A configuration-space read (the access window reads BAR0 through itself)."""
        if CFG_WINDOW <= offset < CFG_WINDOW + 4:
            bar_offset, length = self._window()
            value = self.mmio_read(bar_offset, length)
            self.space.put(CFG_WINDOW, 4, value, writable=0xFFFFFFFF)
        return self.space.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A configuration-space write (the access window writes BAR0 through itself)."""
        self.space.write(offset, size, value)
        if CFG_WINDOW <= offset < CFG_WINDOW + 4:
            bar_offset, length = self._window()
            data = self.space.read(CFG_WINDOW, 4) & ((1 << 8 * length) - 1)
            self.mmio_write(bar_offset, length, data)

    def _window(self) -> tuple[int, int]:
        """The BAR0 offset and length the access window's registers name, checked."""
        bar = self.space.read(CFG_BAR, 1)
        offset = self.space.read(CFG_OFFSET, 4)
        length = self.space.read(CFG_LENGTH, 4)
        if bar != 0 or length not in (1, 2, 4) or offset % length \
                or offset + length > BAR_SIZE:
            raise self._kill(f"configuration access window names bar {bar} offset "
                             f"{offset:#x} length {length}")
        return offset, length

    # -- BAR0 --------------------------------------------------------------------------------
    def _kill(self, what: str) -> GuestKilled:
        return GuestKilled(BadVirtioPci(self.name, what))

    def _field(self, offset: int, size: int) -> str:
        found = COMMON_FIELDS.get(offset)
        if found is None or found[1] != size:
            raise self._kill(f"{size}-byte access at common config offset {offset} is not a "
                             "whole register")
        return found[0]

    def mmio_read(self, offset: int, size: int) -> int:
        """A read of `size` bytes at `offset` in BAR0."""
        if offset < COMMON_LEN:
            return self._common_read(self._field(offset, size))
        if offset == NOTIFY_AT and size == 2:
            return 0
        if offset == ISR_AT and size == 1:
            isr, self.isr = self.isr, 0  # reading the ISR acknowledges the interrupt
            return isr
        return int.from_bytes(self.device_config[self._config_range(offset, size)], "little")

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        """A write of `size` bytes of `value` at `offset` in BAR0."""
        if offset < COMMON_LEN:
            self._common_write(self._field(offset, size), value)
        elif offset == NOTIFY_AT and size == 2:
            self._notify(value)
        elif offset == ISR_AT and size == 1:
            raise self._kill("write to the read-only ISR")
        else:
            at = self._config_range(offset, size).start
            if self.device.type == DeviceType.CONSOLE and at == EMERG_WR and size == 4:
                if self.emergency is not None:
                    self.emergency(value & 0xFF)
                return
            raise self._kill(f"write to read-only device config at offset {at}")

    def _config_range(self, offset: int, size: int) -> slice:
        at = offset - DEVICE_AT
        if size not in (1, 2, 4) or at < 0 or at + size > len(self.device_config):
            raise self._kill(f"{size}-byte access at BAR0 offset {offset:#x} is outside "
                             "its registers")
        return slice(at, at + size)

    # -- common configuration ----------------------------------------------------------------
    def reset(self) -> None:
        """Device status 0: forget features, queues and the interrupt."""
        self.status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.queue_select = 0
        self.queues = [QueueSetup() for _ in range(self.device.num_queues)]
        self.attached = False
        self.isr = 0

    def _queue(self) -> QueueSetup | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _common_read(self, name: str) -> int:
        queue = self._queue()
        if name == "device_feature":
            return (self.features >> 32 * self.device_feature_select) & 0xFFFFFFFF \
                if self.device_feature_select < 2 else 0
        if name == "driver_feature":
            return (self.driver_features >> 32 * self.driver_feature_select) & 0xFFFFFFFF \
                if self.driver_feature_select < 2 else 0
        if name in ("msix_config", "queue_msix_vector"):
            return VIRTIO_MSI_NO_VECTOR
        if name == "num_queues":
            return len(self.queues)
        if name == "device_status":
            return self.status
        if name in ("config_generation", "queue_notify_off") or name.endswith("_hi"):
            return 0
        if name in ("device_feature_select", "driver_feature_select", "queue_select"):
            return getattr(self, name)
        if queue is None:
            return 0  # queue_size 0: no such queue
        if name == "queue_size":
            return queue.size
        if name == "queue_enable":
            return int(queue.ring is not None)
        return getattr(queue, name[6:-3])  # queue_desc_lo and friends: QueueSetup.desc

    def _common_write(self, name: str, value: int) -> None:
        if name in ("device_feature_select", "driver_feature_select", "queue_select"):
            setattr(self, name, value)
        elif name == "driver_feature":
            if self.driver_feature_select < 2:
                shift = 32 * self.driver_feature_select
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) \
                    | value << shift
        elif name == "device_status":
            self._set_status(value)
        elif name in ("msix_config", "queue_msix_vector"):
            pass  # no MSI-X: reading back NO_VECTOR tells the driver so
        elif name in ("device_feature", "num_queues", "config_generation",
                      "queue_notify_off"):
            raise self._kill(f"write to read-only {name}")
        else:
            self._queue_write(name, value)

    def _queue_write(self, name: str, value: int) -> None:
        queue = self._queue()
        if queue is None:
            raise self._kill(f"{name} written for queue {self.queue_select}, which does not "
                             "exist")
        if queue.ring is not None:
            raise self._kill(f"{name} written for queue {self.queue_select} after it was "
                             "enabled")
        if name.endswith("_hi"):
            if value:
                raise self._kill(f"{name} {value:#x}: queue addresses are 32-bit")
        elif name == "queue_size":
            if not 0 < value <= QUEUE_SIZE or value & (value - 1):
                raise self._kill(f"queue size {value} is not a power of two up to "
                                 f"{QUEUE_SIZE}")
            queue.size = value
        elif name == "queue_enable":
            if value != 1:
                raise self._kill(f"queue_enable written with {value}")
            queue.ring = Vring.placed(self.memory, f"{self.name}.{self.queue_select}",
                                      queue.desc, queue.avail, queue.used, queue.size,
                                      self.irq, self.written)
            queue.ring.on_push = self.on_push
        else:
            setattr(queue, name[6:-3], value)  # queue_desc_lo -> QueueSetup.desc

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            if self.driver_features & ~self.features or \
                    not self.driver_features & VIRTIO_F_VERSION_1:
                value &= ~STATUS_FEATURES_OK  # refused: the driver reads it back and fails
        self.status = value & 0xFF
        if value & STATUS_DRIVER_OK:
            self._attach()

    def _attach(self) -> None:
        """Give the back-end its rings once all are enabled (first DRIVER_OK or kick)."""
        if self.attached:
            return
        missing = [i for i, q in enumerate(self.queues) if q.ring is None]
        if missing:
            raise self._kill(f"queue {missing[0]} used before it was enabled")
        self.device.attach([q.ring for q in self.queues if q.ring is not None], self._raise)
        self.attached = True

    def _raise(self, line: int) -> None:
        """A back-end interrupts: ISR bit 0 says a queue did, then the INTx line."""
        self.isr |= 1
        self.raise_line(self.irq)

    def _notify(self, index: int) -> None:
        if index >= len(self.queues) or self.queues[index].ring is None:
            raise self._kill(f"notify names queue {index}, which is not enabled")
        self._attach()
        ring = self.queues[index].ring
        assert ring is not None
        self.device.kick(ring)


def pci_bus(devices: list[Device], memory: GuestMemory, window: int,
            raise_line: Callable[[int], None], written: WrittenPages) -> PciBus:
    """Bus 0 as lguest 4.x's Launcher populated it: the host bridge in slot 0, the console
    in slot 1 (where the guest's early console looks for it), then the other devices in
    command-line order; slot N's BAR0 is the N-th page of the memory `window` above RAM
    and its interrupt line is N (line 0 is the timer)."""
    bus = PciBus()
    ordered = [d for d in devices if isinstance(d, Console)] + \
        [d for d in devices if not isinstance(d, Console)]
    for slot, device in enumerate(ordered, start=1):
        emergency = None
        if isinstance(device, Console):
            console = device
            emergency = lambda byte, console=console: console.output.write(bytes([byte]))  # noqa: E731
        bus.add(VirtioPciFunction(device, memory, slot, window + slot * BAR_SIZE, raise_line,
                                  written, emergency))
    return bus
