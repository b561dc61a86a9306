"""`python -m mathrl ...` (and `torchrun -m mathrl ...`) runs the CLI."""

from mathrl.cli import main

main()
