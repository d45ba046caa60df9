"""The lguest bus: one page of device descriptors above RAM, then the vrings (ABI §1.4, §10).

2.6.24's lguest has no PCI.  A guest finds its devices in the page right after the end of RAM
(``max_pfn << 12``): a packed list of 3-byte descriptors (type, config length, status), each
followed by config fields ``[type][len][bytes]``, ended by a type-0 byte.  Every virtqueue is a
VIRTQUEUE field (num, irq, pfn) pointing at two pages of vring further up.

The layout is fixed by the order the Launcher creates things in (ABI §10.3), and guests can tell:
IRQ numbers and ring addresses are handed out in creation order, queue by queue, starting at
IRQ 1 (0 is the timer) and at the page after the descriptor page.  So devices are laid out in
the order given — lguest's command-line order, with the console last — and each descriptor
holds its VIRTQUEUE fields first, in queue order, then the device-specific fields.

The guest-physical space ends right after the last vring: that is the ``pfn_limit`` the Host
enforces on every address a guest hands it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..abi import (
    BLK_SEG_MAX,
    CONFIG_BLK_F_CAPACITY,
    CONFIG_BLK_F_SEG_MAX,
    CONFIG_F_VIRTQUEUE,
    CONFIG_FIELD_HDR,
    CONFIG_NET_MAC_F,
    DEVICE_DESC,
    DEVICE_PAGES,
    LGUEST_IRQS,
    PAGE_SHIFT,
    PAGE_SIZE,
    U32,
    VIRTQUEUE_NUM,
    VQCONFIG,
    VRING_PAGES,
    DeviceType,
)
from ..errors import UserError
from .pagetables import Ram

FIRST_DEVICE_IRQ = 1  # IRQ 0 is the timer
MAX_CONFIG_LEN = 0xFF  # config_len is one byte
_VQ_FIELD_SIZE = CONFIG_FIELD_HDR.size + VQCONFIG.size
_NOT_ENOUGH = "Not enough memory for devices"  # the Launcher's own words


def config_field(ftype: int, payload: bytes) -> bytes:
    """One config field: ``[type u8][len u8][payload]`` (ABI §10.1)."""
    if not 0 <= len(payload) <= 0xFF:
        raise ValueError(f"config field {ftype:#x} of {len(payload)} bytes")
    return CONFIG_FIELD_HDR.pack(ftype, len(payload)) + payload


@dataclass
class DeviceSpec:
    """A device to put on the bus: its type, how many virtqueues, and its other config fields.

    `config` is the already-encoded device-specific fields that follow the VIRTQUEUE fields
    (see `config_field`, `block_spec`, `net_spec`).
    """

    type: int
    num_queues: int
    config: bytes = b""

    @property
    def config_len(self) -> int:
        """The descriptor's ``config_len``: VIRTQUEUE fields plus the device fields."""
        return self.num_queues * _VQ_FIELD_SIZE + len(self.config)

    @property
    def descriptor_size(self) -> int:
        """Bytes the descriptor takes in the device page."""
        return DEVICE_DESC.size + self.config_len


@dataclass
class QueueLayout:
    """Where one virtqueue lives and which IRQ it raises."""

    index: int  # queue number within its device (console: 0 input, 1 output)
    num: int
    irq: int
    pfn: int

    @property
    def address(self) -> int:
        """Guest-physical address of the ring (what the guest NOTIFYs with)."""
        return self.pfn << PAGE_SHIFT


@dataclass
class DeviceLayout:
    """A device as placed: its descriptor's offset in the device page and its queues."""

    spec: DeviceSpec
    offset: int
    queues: list[QueueLayout] = field(default_factory=list)

    @property
    def status_offset(self) -> int:
        """Offset of the status byte (written by the guest, ABI §10.4) in the device page."""
        return self.offset + 2


@dataclass
class DevicePage:
    """The whole bus: device page address, devices in order, and the end of guest memory."""

    address: int
    devices: list[DeviceLayout]
    pfn_limit: int

    def queues(self) -> list[QueueLayout]:
        """Every queue, in creation order."""
        return [queue for device in self.devices for queue in device.queues]


def console_spec() -> DeviceSpec:
    """The console every lguest guest gets: input queue, output queue, no other fields."""
    return DeviceSpec(DeviceType.CONSOLE, 2)


def block_spec(capacity_sectors: int) -> DeviceSpec:
    """A block device as 2.6.24's Launcher describes it: one queue, CAPACITY, then SEG_MAX."""
    config = config_field(CONFIG_BLK_F_CAPACITY, capacity_sectors.to_bytes(8, "little"))
    config += config_field(CONFIG_BLK_F_SEG_MAX, U32.pack(BLK_SEG_MAX))
    return DeviceSpec(DeviceType.BLOCK, 1, config)


def net_spec(mac: bytes) -> DeviceSpec:
    """A network device: rx queue, tx queue, then the MAC field."""
    if len(mac) != 6:
        raise ValueError(f"MAC address of {len(mac)} bytes")
    return DeviceSpec(DeviceType.NET, 2, config_field(CONFIG_NET_MAC_F, mac))


def _check(specs: list[DeviceSpec]) -> None:
    """Refuse a bus the guest could not use; user-caused limits are `UserError`s."""
    for spec in specs:
        if not 1 <= spec.type <= 0xFF or spec.num_queues < 0 or spec.config_len > MAX_CONFIG_LEN:
            raise ValueError(f"impossible device {spec}")
    used = sum(spec.descriptor_size for spec in specs)
    if used > PAGE_SIZE:
        raise UserError(f"{_NOT_ENOUGH}: {len(specs)} device descriptors need {used} bytes, "
                        f"the device page holds {PAGE_SIZE}")
    queues = sum(spec.num_queues for spec in specs)
    # The Host delivers only LGUEST_IRQS lines and IRQ 0 is the timer; lguest would hand out
    # IRQ 32 and up anyway and the guest would simply never hear from those queues.
    if FIRST_DEVICE_IRQ + queues > LGUEST_IRQS:
        raise UserError(f"Too many devices: {queues} virtqueues, but lguest has only "
                        f"{LGUEST_IRQS - FIRST_DEVICE_IRQ} interrupt lines for them")
    if 1 + queues * VRING_PAGES > DEVICE_PAGES:
        raise UserError(f"{_NOT_ENOUGH}: {queues} virtqueues need {queues * VRING_PAGES} "
                        f"pages of vring, only {DEVICE_PAGES - 1} are reserved")


def lay_out_devices(ram: Ram, mem: int, specs: list[DeviceSpec]) -> DevicePage:
    """Write the device page at `mem` and zero the vrings above it, in `specs` order.

    The caller lists devices in lguest's creation order (console last).  Returns where
    everything went; ``pfn_limit = (mem + 4096 + 8192 * queues) / 4096``.
    """
    if mem % PAGE_SIZE:
        raise ValueError(f"device page at unaligned address {mem:#x}")
    _check(specs)
    page = bytearray(PAGE_SIZE)  # unused bytes, including the terminator, stay 0
    next_pfn = (mem >> PAGE_SHIFT) + 1
    next_irq = FIRST_DEVICE_IRQ
    offset = 0
    devices = []
    for spec in specs:
        device = DeviceLayout(spec, offset)
        fields = bytearray()
        for index in range(spec.num_queues):
            queue = QueueLayout(index, VIRTQUEUE_NUM, next_irq, next_pfn)
            fields += config_field(CONFIG_F_VIRTQUEUE, VQCONFIG.pack(queue.num, queue.irq,
                                                                     queue.pfn))
            device.queues.append(queue)
            next_irq += 1
            next_pfn += VRING_PAGES
        fields += spec.config
        descriptor = DEVICE_DESC.pack(spec.type, len(fields), 0) + fields
        page[offset:offset + len(descriptor)] = descriptor
        offset += len(descriptor)
        devices.append(device)

    rings_end = next_pfn << PAGE_SHIFT
    if rings_end > len(ram):
        raise ValueError(f"device area ends at {rings_end:#x}, memory at {len(ram):#x}")
    ram[mem:mem + PAGE_SIZE] = page
    # The guest never clears ring memory: it relies on used.idx etc. starting at 0 (ABI §11.3).
    ram[mem + PAGE_SIZE:rings_end] = bytes(rings_end - mem - PAGE_SIZE)
    return DevicePage(mem, devices, next_pfn)
