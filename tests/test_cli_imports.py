"""A subcommand whose module cannot import a dependency is never silently dropped.

Each case runs the real CLI in a fresh interpreter where one import really fails (``None`` in
``sys.modules`` makes Python raise ``ImportError`` for that name, as for a package that is absent).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

LAUNCH = "import sys; sys.modules[{blocked!r}] = None; from napari_medseg.cli import main; sys.exit(main(sys.argv[1:]))"


def _medseg(blocked: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH.format(blocked=blocked), *args],
                          capture_output=True, text=True, encoding="utf-8", check=False)


def test_the_command_table_matches_what_each_module_adds():
    import argparse
    import importlib

    from napari_medseg.cli import _COMMAND_MODULES, build_parser

    listed = build_parser()._subparsers._group_actions[0].choices
    assert list(listed) == [c for commands in _COMMAND_MODULES.values() for c in commands]
    for module, commands in _COMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"napari_medseg.cli.{module}").add_parser(sub)
        assert tuple(sub.choices) == commands, module


def test_a_missing_dependency_keeps_the_commands_and_names_the_package():
    # json is imported at the top of most command modules: they cannot load, their commands stay
    help_text = _medseg("json", "--help")
    assert help_text.returncode == 0
    for command in ("info", "evaluate", "postprocess", "models", "predict", "jobs"):
        assert command in help_text.stdout
    assert "(unavailable: cannot import json)" in help_text.stdout
    for args in (("evaluate", "--pred", "a", "--ref", "b"), ("info", "--help")):
        proc = _medseg("json", *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (
            f"medseg {args[0]}: error: this command needs the Python package 'json', which cannot be imported "
            "(import of json halted; None in sys.modules); install it into this environment"
        )


def test_a_dependency_missing_at_run_time_is_exit_2_with_its_name(tmp_path):
    # rich is imported only when 'models list' prints its table
    proc = _medseg("rich", "models", "list")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "medseg models: error: this command needs the Python package 'rich'" in proc.stderr


@pytest.mark.parametrize("broken", ["napari_medseg.cli._evaluate", "napari_medseg.cli._inputs"])
def test_a_broken_module_of_our_own_fails_loudly(broken):
    # formerly a missing napari_medseg.cli module made its commands vanish without a word
    proc = _medseg(broken, "info", "x.nii.gz")
    assert proc.returncode == 1
    assert f"ModuleNotFoundError: import of {broken} halted" in proc.stderr and "Traceback" in proc.stderr
