"""`python -m lgemu` is the `lgemu` command."""

from .cli import main

raise SystemExit(main())
