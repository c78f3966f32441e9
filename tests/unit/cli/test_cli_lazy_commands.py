"""Each command loads only its own module (controller/cli/app.py, COMMAND_MODULES)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from controller.cli import cli
from controller.cli.app import COMMAND_MODULES

ROOT = Path(__file__).resolve().parents[3]


def test_the_command_map_names_every_command_of_every_module_and_no_other() -> None:
    declared: dict[str, str] = {}
    for module_name in set(COMMAND_MODULES.values()):
        module = importlib.import_module(f"controller.cli.{module_name}")
        for command in module.COMMANDS:
            assert command.name not in declared, f"{command.name} defined twice"
            declared[str(command.name)] = module_name
    assert declared == COMMAND_MODULES
    modules = {p.stem for p in (ROOT / "controller" / "cli").glob("*.py")
               if re.search(r"^COMMANDS = ", p.read_text(), re.MULTILINE)}
    assert modules == set(COMMAND_MODULES.values()), "a module with COMMANDS is not mapped"


def test_help_lists_every_command() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    for name in COMMAND_MODULES:
        assert f"  {name} " in out or f"  {name}\n" in out, name


def test_ls_loads_neither_the_image_tools_nor_the_runtime() -> None:
    probe = ("import sys\nfrom controller.cli import cli\n"
             "try:\n    cli(['ls', '--help'], prog_name='viridian')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith(('node_agent', "
             "'controller.cli.oci', 'controller.cli.image'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
