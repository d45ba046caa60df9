"""The bundled guest's C headers and lgemu.abi describe one ABI: every number they share must
agree.  (The guest is C and cannot import abi.py; this test is what keeps the two from
drifting apart, the way the guest's own _Static_asserts keep its structs honest.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lgemu import abi

GUEST = Path(__file__).resolve().parent.parent / "guest_kernel"
DEFINE = re.compile(r"^#define\s+(\w+)\s+(?:_UL\()?(0x[0-9A-Fa-f]+|\d+)\)?\b", re.MULTILINE)


def c_constants() -> dict[str, int]:
    """Every `#define NAME number` in the guest's headers."""
    found: dict[str, int] = {}
    for header in sorted(GUEST.glob("**/*.h")):
        for name, value in DEFINE.findall(header.read_text()):
            found[name] = int(value, 0)
    return found


SHARED = {
    "PAGE_OFFSET": abi.PAGE_OFFSET,
    "SWITCHER_ADDR": abi.SWITCHER_ADDR,
    "LOAD_PHYS": abi.KERNEL_LOAD_ADDR,
    "LGUEST_TRAP_ENTRY": abi.LGUEST_TRAP_ENTRY,
    "SYSCALL_VECTOR": abi.SYSCALL_VECTOR,
    "LHCALL_RING_SIZE": abi.LHCALL_RING_SIZE,
    "LGUEST_IRQS": abi.LGUEST_IRQS,
    "GUEST_PL": abi.GUEST_PL,
    "X86_EFLAGS_IF": abi.X86_EFLAGS_IF,
    "LHCALL_SLOT_FREE": abi.HCALL_STATUS_EMPTY,
    "FIRST_EXTERNAL_VECTOR": abi.FIRST_EXTERNAL_VECTOR,
    "LGUEST_DATA_SIZE": abi.LGUEST_DATA_SIZE,
    **{f"LHCALL_{call.name}": int(call) for call in abi.Hcall},
    **{f"LGUEST_DATA_{name}": getattr(abi.LguestData, name).offset
       for name, _ in abi.LguestData._fields_},
    "VIRTIO_ID_NET": abi.DeviceType.NET,
    "VIRTIO_ID_BLOCK": abi.DeviceType.BLOCK,
    "VIRTIO_ID_CONSOLE": abi.DeviceType.CONSOLE,
    "VIRTIO_CONFIG_F_VIRTIO": abi.CONFIG_F_VIRTIO,
    "VIRTIO_CONFIG_F_VIRTQUEUE": abi.CONFIG_F_VIRTQUEUE,
    "VIRTIO_CONFIG_FIELD_USED": abi.CONFIG_FIELD_USED,
    "VIRTIO_CONFIG_S_ACKNOWLEDGE": abi.DeviceStatus.ACKNOWLEDGE,
    "VIRTIO_CONFIG_S_DRIVER": abi.DeviceStatus.DRIVER,
    "VIRTIO_CONFIG_S_DRIVER_OK": abi.DeviceStatus.DRIVER_OK,
    "VIRTIO_CONFIG_S_FAILED": abi.DeviceStatus.FAILED,
    "VIRTIO_BLK_T_IN": abi.VIRTIO_BLK_T_IN,
    "VIRTIO_BLK_T_OUT": abi.VIRTIO_BLK_T_OUT,
    "VIRTIO_BLK_T_SCSI_CMD": abi.VIRTIO_BLK_T_SCSI_CMD,
    "VIRTIO_BLK_T_BARRIER": abi.VIRTIO_BLK_T_BARRIER,
    "VIRTIO_BLK_S_OK": abi.VIRTIO_BLK_S_OK,
    "VIRTIO_BLK_S_IOERR": abi.VIRTIO_BLK_S_IOERR,
    "VIRTIO_BLK_S_UNSUPP": abi.VIRTIO_BLK_S_UNSUPP,
    "VIRTIO_CONFIG_BLK_F": abi.CONFIG_BLK_F,
    "VIRTIO_CONFIG_BLK_F_CAPACITY": abi.CONFIG_BLK_F_CAPACITY,
    "VIRTIO_CONFIG_BLK_F_SIZE_MAX": abi.CONFIG_BLK_F_SIZE_MAX,
    "VIRTIO_CONFIG_BLK_F_SEG_MAX": abi.CONFIG_BLK_F_SEG_MAX,
    "VIRTIO_CONFIG_NET_F": abi.CONFIG_NET_F,
    "VIRTIO_CONFIG_NET_MAC_F": abi.CONFIG_NET_MAC_F,
    "VRING_DESC_F_NEXT": abi.VRING_DESC_F_NEXT,
    "VRING_DESC_F_WRITE": abi.VRING_DESC_F_WRITE,
    "VRING_USED_F_NO_NOTIFY": abi.VRING_USED_F_NO_NOTIFY,
    "VRING_AVAIL_F_NO_INTERRUPT": abi.VRING_AVAIL_F_NO_INTERRUPT,
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_guest_header_agrees_with_lgemu_abi(name: str) -> None:
    constants = c_constants()
    assert name in constants, f"{name} is not defined in guest_kernel's headers"
    assert constants[name] == SHARED[name], f"{name}: C {constants[name]:#x} != abi.py " \
                                            f"{SHARED[name]:#x}"
