"""The bundled guest's C headers and lgemu.abi describe one ABI: every number they share must
agree.  (The guest is C and cannot import abi.py; this test is what keeps the two from
drifting apart, the way the guest's own _Static_asserts keep its structs honest.)"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from lgemu import abi
from lgemu.host.traps import GATE_INTERRUPT, GATE_TRAP

GUEST = Path(__file__).resolve().parent.parent / "guest_kernel"
DEFINE = re.compile(r"^#define\s+(\w+)[ \t]+([^\n]*?)\s*(?:/\*.*)?$", re.MULTILINE)
UL = re.compile(r"\b_UL\(([^()]*)\)")
OPERATORS: dict[type, Callable[..., int]] = {
    ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.Add: operator.add,
    ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Invert: operator.invert,
}


def evaluate(text: str, known: dict[str, int]) -> int | None:
    """The value of a C constant expression made of numbers, names defined before it and
    integer operators (`(__KERNEL_CS | 1)`, `_UL(0xC0000000)`); None for anything else
    (strings, macros with arguments, casts)."""
    text = UL.sub(r"(\1)", text)
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.expr) -> int | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            return known.get(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            left, right = value(node.left), value(node.right)
            return None if left is None or right is None else OPERATORS[type(node.op)](left,
                                                                                      right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
            operand = value(node.operand)
            return None if operand is None else OPERATORS[type(node.op)](operand)
        return None
    return value(tree)


def c_definitions(headers: list[Path], root: Path = GUEST) -> dict[str, list[tuple[int, str]]]:
    """Every `#define NAME constant-expression` in `headers`: name → [(value, where)], one
    entry per definition (`where` relative to `root`), so a name defined twice is seen
    twice."""
    found: dict[str, list[tuple[int, str]]] = {}
    known: dict[str, int] = {}
    for header in headers:
        text = header.read_text()
        for match in DEFINE.finditer(text):
            name, expression = match.groups()
            result = evaluate(expression, known)
            if result is None:
                continue
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(name, []).append((result, f"{header.relative_to(root)}:{line}"))
            known[name] = result
    return found


def guest_headers() -> list[Path]:
    return sorted(GUEST.glob("**/*.h"))


def c_constants() -> dict[str, int]:
    """Every `#define NAME constant` in the guest's headers (each defined once: see
    `test_no_constant_is_defined_twice_with_different_values`)."""
    return {name: values[0][0] for name, values in c_definitions(guest_headers()).items()}


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
    # The conformance programs' own view (guest_kernel/tests/ktest.h): selectors and gates.
    "__KERNEL_CS": abi.KERNEL_CS,
    "__KERNEL_DS": abi.KERNEL_DS,
    "__USER_CS": abi.USER_CS,
    "__USER_DS": abi.USER_DS,
    "GUEST_CS": abi.GUEST_CS,
    "GUEST_DS": abi.GUEST_DS,
    "GATE_INTERRUPT": GATE_INTERRUPT,
    "GATE_TRAP": GATE_TRAP,
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_guest_header_agrees_with_lgemu_abi(name: str) -> None:
    constants = c_constants()
    assert name in constants, f"{name} is not defined in guest_kernel's headers"
    assert constants[name] == SHARED[name], f"{name}: C {constants[name]:#x} != abi.py " \
                                            f"{SHARED[name]:#x}"


def conflicts(definitions: dict[str, list[tuple[int, str]]]) -> dict[str, list[tuple[int, str]]]:
    """The names given more than one value."""
    return {name: values for name, values in definitions.items()
            if len({value for value, _ in values}) > 1}


def test_no_constant_is_defined_twice_with_different_values() -> None:
    """Two headers (or two lines) giving one name different numbers would make the checks
    above compare only one of them, and the guest's meaning depend on include order."""
    found = conflicts(c_definitions(guest_headers()))
    assert not found, "conflicting #defines: " + "; ".join(
        f"{name} = " + ", ".join(f"{value:#x} ({where})" for value, where in values)
        for name, values in sorted(found.items()))


def test_conflicting_defines_are_found(tmp_path: Path) -> None:
    """The duplicate check sees a redefinition in another header, and values given by
    expressions over earlier names; a repeated identical value is no conflict."""
    (tmp_path / "a.h").write_text("#define SEL\t0x60\n#define RPL1\t(SEL | 1)\n"
                                  "#define SAME\t_UL(4096)\n")
    (tmp_path / "b.h").write_text("#define SEL\t0x68\t/* another view */\n"
                                  "#define SAME\t0x1000\n#define RPL1\t0x61\n")
    found = c_definitions(sorted(tmp_path.glob("*.h")), tmp_path)
    assert found["RPL1"] == [(0x61, "a.h:2"), (0x61, "b.h:3")]
    assert conflicts(found) == {"SEL": [(0x60, "a.h:1"), (0x68, "b.h:1")]}


@pytest.mark.parametrize("header", ["tests/ktest.h"])
def test_every_number_a_conformance_header_defines_is_checked(header: str) -> None:
    """The conformance programs restate ABI numbers (selectors, gate types) for their own
    use; each one must be in the comparison above, so none can drift unnoticed."""
    defined = c_definitions([GUEST / header])
    unchecked = sorted(set(defined) - set(SHARED))
    assert not unchecked, f"{header} defines {unchecked}, which no test compares with abi.py"
