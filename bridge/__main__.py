"""`python -m bridge` runs the same program as `jobs-bridge`."""

from bridge.cli import main

main()
