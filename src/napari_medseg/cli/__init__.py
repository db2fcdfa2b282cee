"""The ``medseg`` command line: one subcommand per core operation.

Exit codes: 0 success; 1 an unexpected internal error (a bug: please report it); 2 bad input or
usage, or the system refused (no space, permission, read-only, a closed output pipe; a one-line
message naming the file or parameter and the reason); 130 cancelled (Ctrl-C).

Each subcommand lives in its own module of this package with an ``add_parser(subparsers)``
function; handlers import the core lazily so ``medseg info`` does not pay for importing torch.
Run ``MEDSEG_DEBUG=1 medseg ...`` to see full tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from napari_medseg import __version__
from napari_medseg.choices import DEVICE_NAMES
from napari_medseg.errors import CancelledError, MedsegError

__all__ = ["main", "build_parser", "UsageError"]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130

# modules under napari_medseg.cli that each add subcommands, in the order --help lists them, with
# the subcommands each adds: a module that cannot be imported still lists its commands, which then
# say why they cannot run (tests/test_cli_imports.py checks this table against the parser)
_COMMAND_MODULES = {
    "_volume_commands": ("info", "convert", "sample-data"),
    "_evaluate": ("evaluate",),
    "_postprocess": ("postprocess",),
    "_register": ("register",),
    "_models": ("models",),
    "_predict": ("predict",),
    "_train": ("train", "finetune", "refine"),
    "_jobs": ("jobs",),
}


class UsageError(MedsegError):
    """A command-line argument is wrong."""


class MissingDependencyError(MedsegError):
    """A command needs a Python package that cannot be imported here (missing or broken install)."""


def _is_ours(exc: ImportError) -> bool:
    """Whether the import that failed is one of napari-medseg's own modules (then it is a bug)."""
    return (exc.name or "").split(".")[0] == __name__.split(".")[0]


def _dependency_message(exc: ImportError) -> str:
    package = (exc.name or "").split(".")[0]
    what = f"the Python package {package!r}" if package else "a Python package"
    return f"this command needs {what}, which cannot be imported ({exc}); install it into this environment"


def _add_unavailable(subparsers: argparse._SubParsersAction, command: str, exc: ImportError) -> None:
    """Register ``command`` so that running it says which dependency is missing (exit 2)."""

    def unavailable(args: argparse.Namespace) -> None:
        raise MissingDependencyError(_dependency_message(exc))

    if command in subparsers.choices:  # its module failed half-way through add_parser
        subparsers.choices[command].set_defaults(func=unavailable)
        return
    # no option prefix: every argument, --help too, reaches the handler, which says what is missing
    parser = subparsers.add_parser(command, help=f"(unavailable: cannot import {exc.name or exc})", add_help=False,
                                   prefix_chars="\0")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=unavailable)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``medseg`` parser with every available subcommand."""
    parser = _Parser(prog="medseg", description="napari-medseg: medical image segmentation from the command line.")
    parser.add_argument("--version", action="version", version=f"napari-medseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name, commands in _COMMAND_MODULES.items():
        try:
            importlib.import_module(f"napari_medseg.cli.{name}").add_parser(subparsers)
        except ImportError as exc:
            if _is_ours(exc):
                raise  # our own module is missing or broken: a bug, never a silently missing command
            for command in commands:  # a dependency is missing: the commands stay, and say so when run
                _add_unavailable(subparsers, command, exc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medseg`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # a warning is one line naming the command, like an error (not Python's file:line and source)
    warnings.formatwarning = lambda message, category, *_a, **_k: f"medseg {args.command}: warning: {message}\n"
    try:
        result = args.func(args)
        sys.stdout.flush()  # a closed pipe (medseg info --json X | head -c1) surfaces here
        return EXIT_OK if result is None else int(result)
    except BrokenPipeError:
        # the reader went away: say so once and keep Python from failing again at exit
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"medseg {args.command}: error: the output pipe was closed before all output was written", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CancelledError as exc:
        print(f"medseg {args.command}: cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print(f"medseg {args.command}: cancelled (interrupted); no partial output was written", file=sys.stderr)
        return EXIT_CANCELLED
    except MedsegError as exc:
        if os.environ.get("MEDSEG_DEBUG"):
            raise
        print(f"medseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as exc:
        # a package imported when the command runs (torch, rich...) is missing: the user's install,
        # not a bug, unless the module is one of ours (then it is reported as an internal error)
        if os.environ.get("MEDSEG_DEBUG"):
            raise
        if _is_ours(exc):
            print(f"medseg {args.command}: internal error: {type(exc).__name__}: {exc} "
                  "(run with MEDSEG_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
            return EXIT_INTERNAL
        print(f"medseg {args.command}: error: {_dependency_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        # the user's system (no space, permission, read-only, another file system), not a bug
        if os.environ.get("MEDSEG_DEBUG"):
            raise
        from napari_medseg.errors import os_error_reason

        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        print(f"medseg {args.command}: error: {where + ': ' if where else ''}{os_error_reason(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get("MEDSEG_DEBUG"):
            raise
        print(
            f"medseg {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run with MEDSEG_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def device_argument(text: str) -> str:
    """argparse ``type`` of ``--device``: a :class:`~napari_medseg.choices.Device` name (or ``cuda:N``),
    checked without torch; an unknown name exits 2 with the choices and a "did you mean"."""
    from napari_medseg.choices import parse_device

    try:
        parse_device(text, name="--device")
    except MedsegError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--device=")) from None  # argparse names the option
    return text.strip().lower()


#: ``metavar`` of ``--device`` in every subcommand's help, from the one list
DEVICE_METAVAR = "{" + ",".join(DEVICE_NAMES) + "}"


def parse_labels(text: str | None, *, option: str = "--labels") -> list[int] | None:
    """``--labels`` through the one label-list parser, :func:`napari_medseg._validate.parse_label_list`."""
    from napari_medseg._validate import parse_label_list

    return parse_label_list(text, name=option)
