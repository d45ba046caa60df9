"""The wording of every kind of kill, exactly as the user reads it after
`lgemu: guest killed: `.  Other tests assert which kind a run was killed for (and with what);
this table is where the sentences themselves are pinned down, so changing one is a visible
decision, and a new kind without its sentence here fails `test_every_kind_is_worded_here`."""

from __future__ import annotations

import pytest

from lgemu import kills
from lgemu.errors import ExitStatus, GuestKilled
from lgemu.kills import (
    AlreadyInitialized,
    BadDeviceStatus,
    BadDma,
    BadGuestAddress,
    BadHypercall,
    BadIdtType,
    BadKernelAddress,
    BadLguestData,
    BadMmio,
    BadNotifyAddress,
    BadPageDirectoryEntry,
    BadPageMiddleDirectoryEntry,
    BadPageTableEntry,
    BadPciAccess,
    BadRequest,
    BadShutdown,
    BadStackPage,
    BadStackPages,
    BadStackSegment,
    BadStatusNotify,
    BadSyscallVector,
    BadVirtioPci,
    BadVirtualAddress,
    BrokenVring,
    CpuFailure,
    HypercallBeforeInit,
    Kill,
    NotMemory,
    SegmentLoad,
    SwitcherAccess,
    TooManyGdtEntries,
    TripleFault,
    UnhandledTrap,
    UnofferedFeatures,
    UnusableStackSegment,
)

WORDING: list[tuple[Kill, str]] = [
    (BadGuestAddress("read", 0xFFFFFFFF, 128), "bad read address 0xffffffff len 128"),
    (BadGuestAddress("write", 0x1000, 4), "bad write address 0x1000 len 4"),
    (BadVirtualAddress(0x4fffff4), "Bad address 0x4fffff4"),
    (SwitcherAccess(), "attempt to access switcher pages"),
    (NotMemory(0x8000000), "bad page table entry (physical address 0x8000000 is not memory)"),
    (BadPageTableEntry(), "bad page table entry"),
    (BadPageDirectoryEntry(), "bad page directory entry"),
    (BadPageMiddleDirectoryEntry(), "bad page middle directory entry"),
    (BadHypercall(12), "Bad hypercall 12"),
    (HypercallBeforeInit(3), "hypercall 3 before INIT"),
    (AlreadyInitialized(), "already have lguest_data"),
    (BadLguestData(0x3fffff0), "bad guest page 0x3fffff0"),
    (BadSyscallVector(), "bad syscall vector"),
    (BadKernelAddress(0xffc00000), "bad kernel address 0xffc00000"),
    (TooManyGdtEntries(33), "too many gdt entries 33"),
    (BadStackSegment(104), "bad stack segment 104"),
    (BadStackPages(3), "bad stack pages 3"),
    (BadStackPage(0x800fff), "bad stack page 0x800fff"),
    (BadIdtType(5), "bad IDT type 5"),
    (BadNotifyAddress(0xffffffff), "bad NOTIFY address 0xffffffff"),
    (BadShutdown(3), "bad SHUTDOWN request 0x3 (1 powers off, 2 restarts)"),
    (BadStatusNotify(0x7), "NOTIFY at device page offset 0x7, where no device descriptor starts"),
    (BadDeviceStatus("vda", 0x40), "device vda: status 0x40 sets undefined bits"),
    (UnofferedFeatures("eth0", 0x21, 0x20),
     "device eth0: driver accepted features 0x21, only 0x20 were offered"),
    (UnhandledTrap(13, 0x100042, 0xfa), "unhandled trap 13 at 0x100042 (0xfa)"),
    (UnusableStackSegment(0x100042, 0x79),
     "unhandled trap 256 at 0x100042 (stack segment 0x79 from SET_STACK is not a usable "
     "ring-1 data segment)"),
    (SegmentLoad("cannot load CS with 0x61 in ring 1"),
     "unhandled trap 256 (cannot load CS with 0x61 in ring 1)"),
    (CpuFailure("Invalid instruction (UC_ERR_INSN_INVALID) at eip 0x100000"),
     "CPU error: Invalid instruction (UC_ERR_INSN_INVALID) at eip 0x100000"),
    (TripleFault(0x100000), "triple fault at 0x100000"),
    (BrokenVring("console.1", "descriptor 0 links to 300, not below 128"),
     "vring console.1: descriptor 0 links to 300, not below 128"),
    (BadRequest("vda.0", 0, "no device-writable status byte"),
     "vring vda.0: request at head 0: no device-writable status byte"),
    (BadPciAccess(0xCFE, 4, "runs past the data port 0xcff"),
     "PCI config access of 4 bytes at port 0xcfe: runs past the data port 0xcff"),
    (BadVirtioPci("console", "write to the read-only ISR"),
     "virtio-pci console: write to the read-only ISR"),
    (BadMmio(0x4100ffe, 4), "MMIO access of 4 bytes at 0x4100ffe: no device register there"),
    (BadDma("SEND_DMA", "buffer 0xfffff000 len 16 is not in guest memory"),
     "SEND_DMA: buffer 0xfffff000 len 16 is not in guest memory"),
]


@pytest.mark.parametrize(("kill", "text"), WORDING, ids=[type(k).__name__ for k, _ in WORDING])
def test_the_line_a_user_reads(kill: Kill, text: str) -> None:
    killed = GuestKilled(kill)
    assert killed.line() == f"lgemu: guest killed: {text}"
    assert killed.status == ExitStatus.KILLED and killed.kill is kill


def test_every_kind_is_worded_here() -> None:
    kinds = {obj for obj in vars(kills).values()
             if isinstance(obj, type) and issubclass(obj, Kill) and obj is not Kill}
    assert kinds == {type(kill) for kill, _ in WORDING}


def test_kinds_compare_by_their_values() -> None:
    assert BadHypercall(12) == BadHypercall(12) != BadHypercall(13)
    assert HypercallBeforeInit(12) != BadHypercall(12)
    assert {UnhandledTrap(13, 0x100042, 0xfa), UnhandledTrap(13, eip=0x100042, detail=0xfa)} \
        == {UnhandledTrap(vector=13, eip=0x100042, detail=0xfa)}
    assert SwitcherAccess() == SwitcherAccess() != BadPageTableEntry()


def test_a_kill_shows_and_keeps_its_values() -> None:
    kill = BadRequest("vda.0", 3, "no status byte")
    assert repr(kill) == "BadRequest(queue='vda.0', head=3, detail='no status byte')"
    with pytest.raises(AttributeError):  # a frozen value: what the kill says stays said
        kill.head = 4  # type: ignore[misc]
    assert kill.head == 3


@pytest.mark.parametrize(("values", "named"), [((13,), {}), ((13, 1, 2, 3), {}),
                                               ((13, 1, 2), {"eip": 1}),
                                               ((13, 1), {"cr2": 2})])
def test_a_kill_needs_exactly_its_fields(values: tuple, named: dict) -> None:
    with pytest.raises(TypeError):
        UnhandledTrap(*values, **named)
