"""lgemu: Linux lguest guests on a portable Unicorn CPU, Host and Launcher in Python.

Reading order for a boot, from `lgemu boot` to the first console byte (docs/architecture.md
says what each step holds; tests/test_docs.py keeps the two lists equal):

1. `lgemu/cli.py`
2. `lgemu/abi.py`
3. `lgemu/launcher/`
4. `lgemu/machine/`
5. `lgemu/host/guest.py`
6. `lgemu/devices/`
7. `guest_kernel/`
8. `lgemu/debug/`
9. `tests/`

The lguest ABI is docs/abi.md (cited as "ABI §N"); the Unicorn behaviours lgemu relies on
are docs/unicorn.md ("Unicorn §N").
"""

__version__ = "0.1.0"
