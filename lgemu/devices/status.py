"""Device status and feature negotiation on the 2.6.25+ lguest bus (ABI Appendix C).

From 2.6.25 each descriptor carries two feature bitmaps after its vqconfigs: the bits the
device offers, which the Launcher writes, and the bits the driver accepts, which the driver
writes.  2.6.26 added a report of every status write: the driver stores the new status byte
and makes ``LHCALL_NOTIFY(device page address + the descriptor's offset)`` — an address in the
device page, never a ring's, so the Host tells it from a virtqueue kick by the page alone.

Both bytes are guest-written and checked here before a device sees them:

* a status byte may only set the bits virtio defines (ACKNOWLEDGE, DRIVER, DRIVER_OK, FAILED);
* the accepted bitmap may only hold bits the offered one has — a device honours only what
  both sides agreed, so `Device.acked` is always a subset of its offer.

Status 0 is a reset, as lguest's Launcher treated it: the accepted bitmap is cleared, every
queue of the device is zeroed and starts over (`Vring.reset`), and the device forgets work in
progress (`Device.reset`).  2.6.25 reports nothing: there the Host reads the accepted bits,
with the same check, before each kick (`refresh_acked`); the one NOTIFY on a descriptor's
address is the driver's reset (made before every probe), which the Launcher carried out
whatever the status byte said, setting it to 0 itself (`reset_notified`).
"""

from __future__ import annotations

from ..abi import DeviceStatus
from ..errors import GuestKilled
from ..kills import BadDeviceStatus, UnofferedFeatures
from ..launcher.devicepage import DeviceLayout, DevicePage
from ..launcher.pagetables import Ram
from .base import Device

DEFINED_STATUS = sum(DeviceStatus)


def accepted_features(ram: Ram, page: DevicePage, layout: DeviceLayout, name: str) -> int:
    """The feature bits the driver accepted for `layout`'s device, checked against the offer
    (kills the guest for a bit never offered)."""
    if not layout.feature_len:
        return 0
    start = page.address + layout.acked_offset
    accepted = int.from_bytes(ram[start:start + layout.feature_len], "little")
    offered = layout.spec.features
    if accepted & ~offered:
        raise GuestKilled(UnofferedFeatures(name, accepted, offered))
    return accepted


def refresh_acked(ram: Ram, page: DevicePage, layout: DeviceLayout, device: Device) -> None:
    """2.6.25: the driver acknowledges a feature by setting its bit as it tests it, unreported;
    take the bits as they stand now."""
    device.acked = accepted_features(ram, page, layout, device.name)


def status_written(ram: Ram, page: DevicePage, layout: DeviceLayout, device: Device) -> int:
    """The driver reported a status write for `device` (2.6.26 on): check it and act on it.
    Returns the status byte."""
    status = ram[page.address + layout.status_offset]
    if status & ~DEFINED_STATUS:
        raise GuestKilled(BadDeviceStatus(device.name, status))
    if status == 0:
        _reset(ram, page, layout, device)
        return status
    device.acked = accepted_features(ram, page, layout, device.name)
    return status


def reset_notified(ram: Ram, page: DevicePage, layout: DeviceLayout, device: Device) -> None:
    """2.6.25: NOTIFY on the descriptor's address resets `device`, status byte included."""
    ram[page.address + layout.status_offset] = 0
    _reset(ram, page, layout, device)


def _reset(ram: Ram, page: DevicePage, layout: DeviceLayout, device: Device) -> None:
    start = page.address + layout.acked_offset
    ram[start:start + layout.feature_len] = bytes(layout.feature_len)
    for queue in device.queues:
        queue.reset()
    device.acked = 0
    device.reset()
