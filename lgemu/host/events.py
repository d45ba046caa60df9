"""The lguest event log: every sentence the Host tells its observers, worded once.

`Guest.emit(kind, text)` hands an event to whoever watches the run (the trace writers of
`lgemu.debug`); this module is where each `text` is made, so the wording stays stable and is
documented in one place (README, "Traces and the event log").  Events are things lguest's
Host did on an exit from the guest:

* ``hcall``  — ``hcall NAME args`` for every hypercall, synchronous or from the async ring
  (``[async]`` at the end), arguments decoded by name: ``hcall LOAD_IDT_ENTRY vec=0x20
  handler=0xc0100190 sel=0x60 type=intr dpl=0``;
* ``trap``   — ``trap #PF eip=… err=… cr2=…`` for a CPU exception, ``trap int $0x80 eip=…
  cpl=3`` for a software interrupt (EIP after the instruction);
* ``irq``    — ``irq 1 → vec 0x21 eip=…``: an interrupt delivered into the guest;
* ``vring``  — ``vring console.1 head=0 len=47 avail 3 → used 3``: a device returned a chain
  (the guest's avail.idx then, the used.idx after the push);
* ``device`` — ``device vda status 0x07 features=0x5``: a driver reported a status write
  (2.6.26 on; status 0 is a reset) and the features it had accepted by then;
* ``pgfill`` — ``pgfill eip=… cr2=… err=…``: a #PF the Host absorbed by filling its shadow page
  directory (lguest's demand_page); the guest never sees it, so trace writers leave it out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..abi import GATE_INTERRUPT, GATE_TRAP, Gate, Vector, hcall_name


class Observer(Protocol):
    """Whoever watches the event log (`Guest.observers`): called with the number of the
    instruction that caused the event, its kind (``hcall``, ``trap``, …) and its text."""

    def __call__(self, icount: int, kind: str, text: str) -> None:
        """One event."""

TRAP_NAMES = {int(vector): f"#{vector.name}" for vector in Vector}  # NMI (2) has no mnemonic
GATE_TASK = 0x5
GATE_TYPES = {GATE_TASK: "task", GATE_INTERRUPT: "intr", GATE_TRAP: "trap"}


def device_status(name: str, status: int, features: int) -> str:
    """A device status write the driver reported (2.6.26 on)."""
    return f"device {name} status {status:#04x} features={features:#x}"


def _idt_entry(vector: int, lo: int, hi: int) -> str:
    """A gate as lguest reads it (ABI §5.1): handler, selector, type, DPL, present."""
    gate = Gate.decode(lo, hi)
    text = (f"vec={vector:#x} handler={gate.handler:#x} sel={gate.selector:#x} "
            f"type={GATE_TYPES.get(gate.type, hex(gate.type))} dpl={gate.dpl}")
    return text if gate.present else text + " not-present"


# Argument names per hypercall (ABI §3.3); a callable where a plain format cannot say it.
_ARGS: dict[str, str | Callable[[int, int, int], str]] = {
    "FLUSH_ASYNC": "",
    "LGUEST_INIT": "lguest_data={0:#x}",
    "CRASH": "message={0:#x}",
    "LOAD_GDT": "table={0:#x} entries={1}",
    "NEW_PGTABLE": "pgdir={0:#x}",
    "FLUSH_TLB": lambda a1, a2, a3: "user+kernel" if a1 else "user",
    "LOAD_IDT_ENTRY": _idt_entry,
    "SET_STACK": "ss={0:#x} esp={1:#x} pages={2}",
    "TS": "ts={0}",
    "SET_CLOCKEVENT": "delta_ns={0}",
    "HALT": "",
    "SET_PTE": "pgdir={0:#x} vaddr={1:#x} pte={2:#x}",
    "SET_PMD": "pgdir={0:#x} index={1}",
    "LOAD_TLS": "descriptors={0:#x} cpu={1}",
    "NOTIFY": "addr={0:#x}",
    # later eras' calls (lgemu.abi_eras)
    "SHUTDOWN": lambda a1, a2, a3: f"reason={a1:#x} " + {1: "poweroff", 2: "restart"}.get(
        a2, f"how={a2}"),
    "LOAD_GDT_ENTRY": lambda a1, a2, a3: f"index={a1} desc={a3 << 32 | a2:#018x}",
    "SET_PGD": "pgdir={0:#x} index={1}",
    "SEND_INTERRUPTS": "",
}


def hcall(nr: int, a1: int, a2: int, a3: int, from_ring: bool = False,
          name: str | None = None) -> str:
    """``hcall NAME args`` (``[async]`` when it came from the async ring).  `name` is the
    guest's era's name for `nr` (`HypercallTable.name`); the arguments are decoded by it."""
    if name is None:
        name = hcall_name(nr)
    spec = _ARGS.get(name)
    if spec is None:
        args = f"{a1:#x} {a2:#x} {a3:#x}"
    elif callable(spec):
        args = spec(a1, a2, a3)
    else:
        args = spec.format(a1, a2, a3)
    text = f"hcall {name} {args}" if args else f"hcall {name}"
    return text + " [async]" if from_ring else text


VMCALL_REWRITTEN = " vmcall → int $0x1f"


def vmcall_rewritten(eip: int) -> str:
    """2.6.30-2.6.33: ``trap #UD eip=… vmcall → int $0x1f`` (the Host patched the guest's
    code: whoever caches decoded instructions forgets those three bytes)."""
    return f"trap #UD eip={eip:#x}{VMCALL_REWRITTEN}"


def trap(vector: int, eip: int, error_code: int, cr2: int | None = None) -> str:
    """A CPU exception: ``trap #GP eip=… err=…`` (and ``cr2=…`` for #PF)."""
    detail = f" cr2={cr2:#x}" if cr2 is not None else ""
    return f"trap {TRAP_NAMES.get(vector, vector)} eip={eip:#x} err={error_code:#x}{detail}"


def software_interrupt(vector: int, eip: int, cpl: int) -> str:
    """``int $n`` (also int3, into): EIP is already past the instruction."""
    return f"trap int ${vector:#x} eip={eip:#x} cpl={cpl}"


def page_fill(eip: int, cr2: int, error_code: int) -> str:
    """A #PF the Host absorbed by filling its shadow page directory."""
    return f"pgfill eip={eip:#x} cr2={cr2:#x} err={error_code:#x}"


def irq(line: int, vector: int, eip: int) -> str:
    """An interrupt delivered through the guest's IDT."""
    return f"irq {line} → vec {vector:#x} eip={eip:#x}"


def vring(name: str, head: int, length: int, avail: int, used: int) -> str:
    """A chain returned to the guest on queue `name`."""
    return f"vring {name} head={head} len={length} avail {avail} → used {used}"
