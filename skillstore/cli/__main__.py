"""`python -m skillstore.cli` runs the command line."""

from . import main

main()
