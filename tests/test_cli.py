"""The command line: one `fastnas` console script with a sub-command per tool, and the `python -m
fastnas.X` forms of earlier releases, which keep working."""

import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_module

from fastnas.cli.main import COMMANDS, main

PYPROJECT = (ROOT / "pyproject.toml").read_text()


def test_console_script_is_declared():
    assert re.search(r'^fastnas = "fastnas\.cli\.main:main"$', PYPROJECT, flags=re.M)


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert sorted(COMMANDS) == sorted(p.stem for p in (ROOT / "fastnas" / "cli").glob("*.py")
                                      if p.stem not in ("__init__", "common", "main"))


def test_unknown_command_is_one_line(capsys):
    assert main(["serach"]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown command 'serach'; choose one of "
                                               f"{', '.join(COMMANDS)} (see --help)")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_answers_help_through_the_dispatcher(command, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's --help exits 0 after printing
        import importlib

        importlib.import_module(f"fastnas.cli.{command}").parse_args(["--help"])
    assert exc.value.code == 0
    assert f"fastnas {command}" in capsys.readouterr().out


# Each case starts an interpreter (about 3 s on 2 cores): the umbrella command and the main job's module
# in the default tier, the other modules in the slow one.
@pytest.mark.parametrize("module", ["fastnas", "fastnas.search"] + [
    pytest.param(m, marks=pytest.mark.slow)
    for m in ("fastnas.train", "fastnas.cost", "fastnas.evaluate", "fastnas.pipeline", "fastnas.study",
              "fastnas.info")])
def test_python_dash_m_forms_keep_working(module):
    args = ["--help"] if module != "fastnas" else ["info", "--json"]
    r = run_module(module, args)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_installed_console_script_runs():
    exe = shutil.which("fastnas") or str(Path(sys.executable).with_name("fastnas"))
    if not Path(exe).exists():
        pytest.skip("fastnas is not installed as a console script here (pip install -e .)")
    import subprocess

    r = subprocess.run([exe, "info", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
