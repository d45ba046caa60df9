"""The register set lgemu shows gdb, and the target description (`target.xml`) naming it.

gdb's i386 architecture accepts a target description only if its `org.gnu.gdb.i386.core`
feature has all 32 registers of gdb's own 32-bit core: the eight general registers, EIP,
EFLAGS, the six selectors, and the x87 unit (eight 80-bit data registers and eight control
words); with fewer it warns "Architecture rejected target-supplied description" and guesses.
The SSE feature is optional to gdb and lgemu does not describe it, so gdb shows no xmm
registers.

The control registers are a feature of lgemu's own (`org.lgemu.i386.cr`; gdb shows the
registers of a feature it does not know by their names, `p $cr3`), read-only, and they say
what the *guest* sees where the Host keeps a different value: `cr2` is the fault address
the guest reads from lguest_data, `cr3` the guest's own page directory (the one it gave
LHCALL_NEW_PGTABLE), while `shadow_cr3` is the Host's shadow directory the CPU really walks.
`cr0` and `cr4` are the CPU's (TS as the guest last asked for it).

`REGISTERS` is the one table both the XML and the `g` packet layout come from, so the two can
never disagree.
"""

from __future__ import annotations

from typing import NamedTuple


class Register(NamedTuple):
    """One register as gdb sees it."""

    name: str
    bits: int
    type: str
    group: str = ""


_GENERAL = [Register(name, 32, "data_ptr" if name in ("esp", "ebp") else "int32")
            for name in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")]
_CONTROL = [Register("eip", 32, "code_ptr"), Register("eflags", 32, "i386_eflags")]
_SELECTORS = [Register(name, 32, "int32") for name in ("cs", "ss", "ds", "es", "fs", "gs")]
_X87_DATA = [Register(f"st{i}", 80, "i387_ext") for i in range(8)]
_X87_CONTROL = [Register(name, 32, "int", "float")
                for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]

CORE: tuple[Register, ...] = (*_GENERAL, *_CONTROL, *_SELECTORS, *_X87_DATA, *_X87_CONTROL)
CONTROL_REGISTERS: tuple[Register, ...] = tuple(
    Register(name, 32, "int32", "system") for name in ("cr0", "cr2", "cr3", "cr4", "shadow_cr3"))
REGISTERS: tuple[Register, ...] = (*CORE, *CONTROL_REGISTERS)
FIRST_CONTROL = len(CORE)

# gdb's names for the EFLAGS bits (its i386_eflags type), so `info registers eflags` decodes.
_EFLAGS_BITS = ((0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"),
                (9, "IF"), (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"),
                (18, "AC"), (19, "VIF"), (20, "VIP"), (21, "ID"))


def target_xml() -> bytes:
    """The target description served for `qXfer:features:read:target.xml`."""
    lines = ['<?xml version="1.0"?>',
             '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             '<target version="1.0">',
             "  <architecture>i386</architecture>",
             '  <feature name="org.gnu.gdb.i386.core">',
             '    <flags id="i386_eflags" size="4">']
    lines += [f'      <field name="{name}" start="{bit}" end="{bit}"/>'
              for bit, name in _EFLAGS_BITS]
    lines.append("    </flags>")
    for n, reg in enumerate(REGISTERS):
        if n == FIRST_CONTROL:
            lines += ["  </feature>", '  <feature name="org.lgemu.i386.cr">']
        group = f' group="{reg.group}"' if reg.group else ""
        lines.append(f'    <reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" '
                     f'regnum="{n}"{group}/>')
    lines += ["  </feature>", "</target>", ""]
    return "\n".join(lines).encode()
