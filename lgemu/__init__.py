"""lgemu: Linux 2.6.24 lguest guests on a portable Unicorn CPU, Host and Launcher in Python.

Reading order for a boot, from `lgemu boot` to the first console byte:

1. `lgemu.cli`            — options → `BootConfig`, exit statuses.
2. `lgemu.launcher`       — loader (vmlinux/bzImage), zero page, page tables, device page.
3. `lgemu.machine`        — the only code that touches Unicorn: memory and the CPU.
4. `lgemu.host.guest`     — the run loop; `host.hypercalls`, `host.traps`, `host.interrupts`,
                            `host.segments`, `host.paging`, `host.clock` do the Host's work.
5. `lgemu.devices`        — the vring engine and the console behind LHCALL_NOTIFY.
"""

__version__ = "0.1.0"
