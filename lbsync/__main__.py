"""`python -m lbsync` is the `lbsync` command."""

from .cli import main

main()
