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

From 2.6.25 the descriptor changed shape (ABI Appendix C): a 5-byte header (type, num_vq,
feature_len, config_len, status), the vqconfigs, the feature bits offered, the feature bits
the driver accepted, and a fixed config struct per device type.  Everything else — creation
order, IRQs, ring pages — stayed.  The two shapes are two `DescriptorFormat`s; the era picks
one (`descriptor_format`) and `lay_out_devices` is the same for both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..abi import (
    BLK_SEG_MAX,
    CONFIG_BLK_F_CAPACITY,
    CONFIG_BLK_F_SEG_MAX,
    CONFIG_F_VIRTQUEUE,
    CONFIG_FIELD_HDR,
    CONFIG_NET_MAC_F,
    DESC_V2_STATUS,
    DEVICE_DESC,
    DEVICE_DESC_V2,
    DEVICE_PAGES,
    LGUEST_IRQS,
    PAGE_SHIFT,
    PAGE_SIZE,
    U32,
    VIRTIO_BLK_CONFIG,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_NET_F_MAC,
    VIRTQUEUE_NUM,
    VQCONFIG,
    VRING_PAGES,
    DeviceType,
)
from ..errors import UserError
from ..record import Record, factory
from .pagetables import Ram

if TYPE_CHECKING:
    from ..abi_eras import Era

FIRST_DEVICE_IRQ = 1  # IRQ 0 is the timer
MAX_CONFIG_LEN = 0xFF  # config_len is one byte
_VQ_FIELD_SIZE = CONFIG_FIELD_HDR.size + VQCONFIG.size
_NOT_ENOUGH = "Not enough memory for devices"  # the Launcher's own words


def config_field(ftype: int, payload: bytes) -> bytes:
    """One config field: ``[type u8][len u8][payload]`` (ABI §10.1)."""
    if not 0 <= len(payload) <= 0xFF:
        raise ValueError(f"config field {ftype:#x} of {len(payload)} bytes")
    return CONFIG_FIELD_HDR.pack(ftype, len(payload)) + payload


class DeviceSpec(Record):
    """A device to put on the bus: its type, how many virtqueues, and what it tells the driver.

    `config` is the 2.6.24 form, already-encoded device-specific fields that follow the
    VIRTQUEUE fields (see `config_field`, `block_spec`, `net_spec`); `features` (bits
    offered) and `fixed_config` (the type's config struct) are the 2.6.25 form of the same
    facts.  Each `DescriptorFormat` writes the form its era reads.
    """

    type: int
    num_queues: int
    config: bytes = b""
    features: int = 0
    fixed_config: bytes = b""

    @property
    def config_len(self) -> int:
        """The 2.6.24 descriptor's ``config_len``: VIRTQUEUE fields plus the device fields."""
        return TLV_FORMAT.config_len(self)

    @property
    def descriptor_size(self) -> int:
        """Bytes the 2.6.24 descriptor takes in the device page."""
        return TLV_FORMAT.size(self)

    @property
    def feature_len(self) -> int:
        """Bytes of one feature bitmap (offered or accepted) in a 2.6.25 descriptor."""
        return (self.features.bit_length() + 7) // 8


class QueueLayout(Record):
    """Where one virtqueue lives and which IRQ it raises."""

    index: int  # queue number within its device (console: 0 input, 1 output)
    num: int
    irq: int
    pfn: int

    @property
    def address(self) -> int:
        """Guest-physical address of the ring (what the guest NOTIFYs with)."""
        return self.pfn << PAGE_SHIFT


class DeviceLayout(Record):
    """A device as placed: its descriptor's offset in the device page and its queues, and
    (2.6.25 on) where its status byte and feature bitmaps are."""

    spec: DeviceSpec
    offset: int
    queues: list[QueueLayout] = factory(list)
    status_field: int = 2  # the status byte's offset inside the descriptor (ABI §10.4)
    features_offset: int = 0  # offered bitmap in the device page (0: no bitmaps)
    feature_len: int = 0

    @property
    def status_offset(self) -> int:
        """Offset of the status byte (written by the guest, ABI §10.4) in the device page."""
        return self.offset + self.status_field

    @property
    def acked_offset(self) -> int:
        """Offset of the bitmap the driver writes its accepted features into."""
        return self.features_offset + self.feature_len


class DevicePage(Record):
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


def block_spec(capacity_sectors: int, read_only: bool = False,
               offers: int = 0) -> DeviceSpec:
    """A block device as 2.6.24's Launcher describes it: one queue, CAPACITY, then SEG_MAX;
    from 2.6.25 the SEG_MAX feature, the era's `offers` (the BARRIER or FLUSH bit,
    `Era.blk_offers`) and RO for a read-only disk (drivers that know the bit
    mount it read-only), with capacity and seg_max in `virtio_blk_config`."""
    config = config_field(CONFIG_BLK_F_CAPACITY, capacity_sectors.to_bytes(8, "little"))
    config += config_field(CONFIG_BLK_F_SEG_MAX, U32.pack(BLK_SEG_MAX))
    features = 1 << VIRTIO_BLK_F_SEG_MAX | (1 << VIRTIO_BLK_F_RO if read_only else 0) | offers
    return DeviceSpec(DeviceType.BLOCK, 1, config, features,
                      VIRTIO_BLK_CONFIG.pack(capacity_sectors, 0, BLK_SEG_MAX))


def net_spec(mac: bytes) -> DeviceSpec:
    """A network device: rx queue, tx queue, then the MAC field (from 2.6.25 the MAC
    feature and `virtio_net_config`, which is the MAC alone)."""
    if len(mac) != 6:
        raise ValueError(f"MAC address of {len(mac)} bytes")
    return DeviceSpec(DeviceType.NET, 2, config_field(CONFIG_NET_MAC_F, mac),
                      1 << VIRTIO_NET_F_MAC, mac)


class DescriptorFormat:
    """How one era writes a device's descriptor (a strategy `lay_out_devices` is given)."""

    name = ""

    def size(self, spec: DeviceSpec) -> int:
        """Bytes the descriptor takes in the device page."""
        raise NotImplementedError

    def fits(self, spec: DeviceSpec) -> bool:
        """Do the descriptor's one-byte length fields hold this device?"""
        raise NotImplementedError

    def write(self, spec: DeviceSpec, queues: list[QueueLayout], offset: int) -> tuple[
            bytes, DeviceLayout]:
        """The descriptor's bytes and the device's layout at `offset`."""
        raise NotImplementedError


class TlvFormat(DescriptorFormat):
    """2.6.24 (ABI §10.1): a 3-byte header, then VIRTQUEUE fields and the device's fields."""

    name = "2.6.24"

    def config_len(self, spec: DeviceSpec) -> int:
        """``config_len``: VIRTQUEUE fields plus the device fields."""
        return spec.num_queues * _VQ_FIELD_SIZE + len(spec.config)

    def size(self, spec: DeviceSpec) -> int:
        return DEVICE_DESC.size + self.config_len(spec)

    def fits(self, spec: DeviceSpec) -> bool:
        return self.config_len(spec) <= MAX_CONFIG_LEN

    def write(self, spec: DeviceSpec, queues: list[QueueLayout], offset: int) -> tuple[
            bytes, DeviceLayout]:
        fields = b"".join(config_field(CONFIG_F_VIRTQUEUE, VQCONFIG.pack(q.num, q.irq, q.pfn))
                          for q in queues) + spec.config
        return DEVICE_DESC.pack(spec.type, len(fields), 0) + fields, DeviceLayout(
            spec, offset, queues)


class VirtioFormat(DescriptorFormat):
    """2.6.25 on (ABI Appendix C): 5-byte header, vqconfigs, offered and accepted feature
    bitmaps (the accepted one starts zero: the driver fills it), fixed config."""

    name = "2.6.25"

    def size(self, spec: DeviceSpec) -> int:
        return (DEVICE_DESC_V2.size + spec.num_queues * VQCONFIG.size + 2 * spec.feature_len
                + len(spec.fixed_config))

    def fits(self, spec: DeviceSpec) -> bool:
        return (spec.num_queues <= 0xFF and spec.feature_len <= 0xFF
                and len(spec.fixed_config) <= MAX_CONFIG_LEN)

    def write(self, spec: DeviceSpec, queues: list[QueueLayout], offset: int) -> tuple[
            bytes, DeviceLayout]:
        flen = spec.feature_len
        header = DEVICE_DESC_V2.pack(spec.type, len(queues), flen, len(spec.fixed_config), 0)
        vqs = b"".join(VQCONFIG.pack(q.num, q.irq, q.pfn) for q in queues)
        features = spec.features.to_bytes(flen, "little") + bytes(flen)
        layout = DeviceLayout(spec, offset, queues, DESC_V2_STATUS,
                              offset + len(header) + len(vqs), flen)
        return header + vqs + features + spec.fixed_config, layout


TLV_FORMAT = TlvFormat()
VIRTIO_FORMAT = VirtioFormat()


def descriptor_format(era: Era) -> DescriptorFormat:
    """The descriptor shape `era`'s guests read (its `device_desc` header names it)."""
    return VIRTIO_FORMAT if "num_vq" in era.device_desc else TLV_FORMAT


def _check(specs: list[DeviceSpec], fmt: DescriptorFormat) -> None:
    """Refuse a bus the guest could not use; user-caused limits are `UserError`s."""
    for spec in specs:
        if not 1 <= spec.type <= 0xFF or spec.num_queues < 0 or not fmt.fits(spec):
            raise ValueError(f"impossible device {spec}")
    used = sum(fmt.size(spec) for spec in specs)
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


def lay_out_devices(ram: Ram, mem: int, specs: list[DeviceSpec],
                    fmt: DescriptorFormat = TLV_FORMAT) -> DevicePage:
    """Write the device page at `mem` in `fmt` and zero the vrings above it, in `specs` order.

    The caller lists devices in lguest's creation order (console last).  Returns where
    everything went; ``pfn_limit = (mem + 4096 + 8192 * queues) / 4096``.
    """
    if mem % PAGE_SIZE:
        raise ValueError(f"device page at unaligned address {mem:#x}")
    _check(specs, fmt)
    page = bytearray(PAGE_SIZE)  # unused bytes, including the terminator, stay 0
    next_pfn = (mem >> PAGE_SHIFT) + 1
    next_irq = FIRST_DEVICE_IRQ
    offset = 0
    devices = []
    for spec in specs:
        queues = []
        for index in range(spec.num_queues):
            queues.append(QueueLayout(index, VIRTQUEUE_NUM, next_irq, next_pfn))
            next_irq += 1
            next_pfn += VRING_PAGES
        descriptor, device = fmt.write(spec, queues, offset)
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
