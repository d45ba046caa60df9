"""One guest put together: its options checked, then the step between the Launcher and the
run loop.

`lgemu boot` and `lgemu lab` both begin their set-up with `check_config` and end it with
`assemble_guest`.  The era chosen once from the kernel
(`lgemu.launcher.era.boot_era`) decides how the devices are announced: on the lguest bus's
device page, which the Launcher lays out (2.6.24 to 3.x), or as PCI functions on bus 0, which
the Host answers (4.x, docs/eras.md).  Everything else is the same for every era.
"""

from __future__ import annotations

from pathlib import Path

from .abi import PAGE_SIZE
from .abi_eras import DeviceBus, Era
from .config import BootConfig
from .devices.base import Device
from .devices.console import ConsoleOutput
from .errors import UserError
from .host.clock import Clock
from .host.guest import Guest
from .launcher import KernelImage, launch
from .launcher.bootparams import command_line_bytes
from .launcher.lowmem import ram_the_kernel_uses
from .machine.memory import GuestMemory


def check_config(config: BootConfig) -> int:
    """Every check of the options that needs nothing loaded or opened, so a bad command line
    (or lab file) is refused before the kernel is read, Unicorn tested or a device opened
    (UserError).  Returns the guest RAM size in bytes."""
    from .debug import check_options as check_debugging
    from .devices import check_options as check_devices
    from .launcher import check_memory_size

    problem = config.contradictions()
    if problem is not None:
        raise UserError(problem)
    mem = check_memory_size(config.mem_mib)
    check_devices(config)
    check_debugging(config)
    return mem


def assemble_guest(kernel: KernelImage, era: Era, mem: int, cmdline: str,
                   initrd: Path | None, devices: list[Device], output: ConsoleOutput,
                   clock: Clock) -> Guest:
    """A guest of `mem` bytes running `kernel` with `devices` (the console last), laid out by
    the Launcher for `era`, ready for its first instruction."""
    for device in devices:
        device.era = era
    mem, ram_where = ram_the_kernel_uses(
        kernel, command_line_bytes(cmdline, era.cmdline_trailing_space), mem)
    memory = GuestMemory(mem)
    # 4.x: no device page, PCI bus 0 instead; 2.6.23: the DMA bus's own descriptors
    elsewhere = era.device_bus in (DeviceBus.PCI, DeviceBus.LGUEST_DMA)
    info = launch(memory, kernel, cmdline, initrd,
                  [] if elsewhere else [d.spec() for d in devices], era)
    info.ram_where = ram_where
    dma = None
    if era.device_bus is DeviceBus.LGUEST_DMA:  # its pages must exist before the CPU maps RAM
        from .devices.dma_bus import DmaBus  # 2.6.23's alone: no other boot imports it

        dma = DmaBus(memory, devices, mem)
        info.pfn_limit = memory.limit // PAGE_SIZE
    guest = Guest(memory, info, [] if elsewhere else devices, output, clock)
    if era.device_bus is DeviceBus.PCI:
        guest.attach_pci(devices)
    elif dma is not None:
        guest.attach_dma(dma, devices)
    return guest
