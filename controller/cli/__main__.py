"""`python -m controller.cli` runs the viridian CLI."""

from controller.cli.app import main

main()
