"""The `viridian` command line: a thin client of the public Controller API."""

from controller.cli.app import cli, main

__all__ = ["cli", "main"]
