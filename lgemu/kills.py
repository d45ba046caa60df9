"""Why the Host kills a guest: one kind per rule broken, with the values that broke it.

lguest's kill_guest took a format string; lgemu's Host raises `GuestKilled(kind)` with one of
the kinds below, so a caller (a test, a fuzzer, a tool) can tell *which* rule was broken, and
with what, without reading prose.  The sentence the user sees, `lgemu: guest killed: <text>`,
is made here and nowhere else (README, "Exit statuses"; SECURITY.md lists where each is
checked).
"""

from __future__ import annotations

from .record import Record


class Kill(Record, frozen=True):
    """A reason to kill the guest; `text()` is the wording on stderr.

    A kind lists the values that broke its rule as annotated fields, and a kill is a value: a
    frozen `Record` (made from its fields in order or by name, equal to and hashed like a kill
    of the same kind with equal fields, never changed).  Records, not dataclasses: generating
    a dataclass's methods for each of the 35 kinds was the largest single cost of lgemu's
    start-up (issue 12).
    """

    def text(self) -> str:
        """The reason as the user reads it."""
        raise NotImplementedError


# -- guest memory and the Host's own pages ---------------------------------------------------
class BadGuestAddress(Kill):
    """A guest-physical range the guest handed over is not inside its memory (ABI §1.4)."""

    access: str  # "read" or "write"
    addr: int
    length: int

    def text(self) -> str:
        return f"bad {self.access} address {self.addr:#x} len {self.length}"


class BadVirtualAddress(Kill):
    """The Host had to access a guest-virtual address that is not mapped (writable)."""

    vaddr: int

    def text(self) -> str:
        return f"Bad address {self.vaddr:#x}"


class SwitcherAccess(Kill):
    """The guest's page tables reach for the switcher's address range."""

    def text(self) -> str:
        return "attempt to access switcher pages"


class NotMemory(Kill):
    """A page table entry points beyond guest memory, found by the CPU's walk."""

    addr: int

    def text(self) -> str:
        return f"bad page table entry (physical address {self.addr:#x} is not memory)"


class BadPageTableEntry(Kill):
    """A PTE the Host would shadow has flags or a frame lguest refuses (ABI §7.1, §7.2)."""

    def text(self) -> str:
        return "bad page table entry"


class BadPageDirectoryEntry(Kill):
    """A PDE the Host would shadow has flags or a frame lguest refuses (ABI §7.1)."""

    def text(self) -> str:
        return "bad page directory entry"


class BadPageMiddleDirectoryEntry(Kill):
    """A PAE middle-directory entry the Host would shadow has flags or a frame lguest refuses
    (ABI §7.6)."""

    def text(self) -> str:
        return "bad page middle directory entry"


# -- hypercalls ---------------------------------------------------------------------------
class BadHypercall(Kill):
    """A hypercall number 2.6.24 does not have."""

    nr: int

    def text(self) -> str:
        return f"Bad hypercall {self.nr}"


class HypercallBeforeInit(Kill):
    """Any hypercall but LGUEST_INIT comes first."""

    nr: int

    def text(self) -> str:
        return f"hypercall {self.nr} before INIT"


class AlreadyInitialized(Kill):
    """A second LGUEST_INIT."""

    def text(self) -> str:
        return "already have lguest_data"


class BadLguestData(Kill):
    """LGUEST_INIT's `struct lguest_data` is not inside guest memory."""

    addr: int

    def text(self) -> str:
        return f"bad guest page {self.addr:#x}"


class BadSyscallVector(Kill):
    """lguest_data.syscall_vec is not 0x80."""

    def text(self) -> str:
        return "bad syscall vector"


class BadKernelAddress(Kill):
    """lguest_data.kernel_address lies in the switcher's slot."""

    addr: int

    def text(self) -> str:
        return f"bad kernel address {self.addr:#x}"


class TooManyGdtEntries(Kill):
    """LOAD_GDT with more than 32 entries."""

    count: int

    def text(self) -> str:
        return f"too many gdt entries {self.count}"


class BadStackSegment(Kill):
    """SET_STACK with a segment whose RPL is not 1."""

    segment: int

    def text(self) -> str:
        return f"bad stack segment {self.segment}"


class BadStackPages(Kill):
    """SET_STACK with more than two pages."""

    pages: int

    def text(self) -> str:
        return f"bad stack pages {self.pages}"


class BadStackPage(Kill):
    """A page of the kernel stack is not mapped writable when it is pinned (ABI §5.5)."""

    vaddr: int

    def text(self) -> str:
        return f"bad stack page {self.vaddr:#x}"


class BadIdtType(Kill):
    """LOAD_IDT_ENTRY with a present gate that is neither an interrupt nor a trap gate."""

    gate_type: int

    def text(self) -> str:
        return f"bad IDT type {self.gate_type}"


class BadNotifyAddress(Kill):
    """NOTIFY on an address that is neither a queue nor guest memory."""

    addr: int

    def text(self) -> str:
        return f"bad NOTIFY address {self.addr:#x}"


class BadShutdown(Kill):
    """LHCALL_SHUTDOWN (2.6.25 on) asked for neither power-off (1) nor restart (2)."""

    how: int

    def text(self) -> str:
        return f"bad SHUTDOWN request {self.how:#x} (1 powers off, 2 restarts)"


# -- the device page from 2.6.25 on (ABI Appendix C) -----------------------------------------
class BadStatusNotify(Kill):
    """NOTIFY inside the device page at an offset where no descriptor starts (2.6.25 resets
    a device, 2.6.26 on reports a status write, with the descriptor's own address)."""

    offset: int

    def text(self) -> str:
        return f"NOTIFY at device page offset {self.offset:#x}, where no device descriptor starts"


class BadDeviceStatus(Kill):
    """A device status byte with bits virtio does not define."""

    device: str
    status: int

    def text(self) -> str:
        return f"device {self.device}: status {self.status:#04x} sets undefined bits"


class UnofferedFeatures(Kill):
    """The driver accepted feature bits the device never offered."""

    device: str
    accepted: int
    offered: int

    def text(self) -> str:
        return (f"device {self.device}: driver accepted features {self.accepted:#x}, "
                f"only {self.offered:#x} were offered")


# -- traps and the CPU ----------------------------------------------------------------------
class UnhandledTrap(Kill):
    """A trap to deliver, and no gate for it in the guest's IDT."""

    vector: int
    eip: int
    detail: int  # the error code, or CR2 for a #PF

    def text(self) -> str:
        return f"unhandled trap {self.vector} at {self.eip:#x} ({self.detail:#x})"


class UnusableStackSegment(Kill):
    """A trap from ring 3 needs the SET_STACK segment, which ring 1 cannot load (lguest's
    switcher faulted: "trap 256")."""

    eip: int
    segment: int

    def text(self) -> str:
        return (f"unhandled trap 256 at {self.eip:#x} (stack segment {self.segment:#x} "
                "from SET_STACK is not a usable ring-1 data segment)")


class SegmentLoad(Kill):
    """Entering the guest failed to load a segment it gave the Host ("trap 256")."""

    detail: str  # the CPU's words: which register, which selector, which ring

    def text(self) -> str:
        return f"unhandled trap 256 ({self.detail})"


class CpuFailure(Kill):
    """The emulated CPU itself stopped with an error."""

    detail: str

    def text(self) -> str:
        return f"CPU error: {self.detail}"


class TripleFault(Kill):
    """The CPU stopped short of its budget with nothing to explain it: a fault it could not
    deliver (a triple fault on hardware)."""

    eip: int

    def text(self) -> str:
        return f"triple fault at {self.eip:#x}"


# -- virtqueues ---------------------------------------------------------------------------
class BrokenVring(Kill):
    """A virtqueue's indices or descriptors break the ring's rules (ABI §11)."""

    queue: str  # e.g. "console.1"
    detail: str

    def text(self) -> str:
        return f"vring {self.queue}: {self.detail}"


class BadRequest(Kill):
    """A chain whose buffers are not what the device's protocol needs."""

    queue: str
    head: int
    detail: str

    def text(self) -> str:
        return f"vring {self.queue}: request at head {self.head}: {self.detail}"


# -- PCI and virtio-PCI (the 4.x eras) ------------------------------------------------------
class BadPciAccess(Kill):
    """A configuration-mechanism #1 access (ports 0xCF8-0xCFF) no driver makes: it spans
    past the data port, or is misaligned against the register it names."""

    port: int
    size: int
    detail: str

    def text(self) -> str:
        return f"PCI config access of {self.size} bytes at port {self.port:#x}: {self.detail}"


class BadVirtioPci(Kill):
    """A virtio 1.0 PCI function's registers used against its rules: an access outside or
    across its BAR's structures, a bad width, a queue set up out of range."""

    device: str  # e.g. "00:01.0 console"
    detail: str

    def text(self) -> str:
        return f"virtio-pci {self.device}: {self.detail}"


class BadMmio(Kill):
    """A load or store in the PCI memory window that no BAR's registers cover whole."""

    addr: int
    size: int

    def text(self) -> str:
        return f"MMIO access of {self.size} bytes at {self.addr:#x}: no device register there"


# -- the DMA lguest bus (2.6.23) ------------------------------------------------------------
class BadDma(Kill):
    """A BIND_DMA or SEND_DMA whose `struct lguest_dma`, buffers or interrupt break the
    2.6.23 bus's rules (docs/eras.md, "2.6.23")."""

    call: str  # "BIND_DMA" or "SEND_DMA"
    detail: str

    def text(self) -> str:
        return f"{self.call}: {self.detail}"
