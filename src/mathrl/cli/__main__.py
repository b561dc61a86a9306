"""`python -m mathrl.cli ...` runs the CLI (as `python -m mathrl` does)."""

from mathrl.cli import main

main()
