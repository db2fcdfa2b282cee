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

# modules under napari_medseg.cli that each add subcommands, in the order --help lists them
_COMMAND_MODULES = (
    "_volume_commands",
    "_evaluate",
    "_postprocess",
    "_register",
    "_models",
    "_predict",
    "_train",
    "_jobs",
)


class UsageError(MedsegError):
    """A command-line argument is wrong."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``medseg`` parser with every available subcommand."""
    parser = _Parser(prog="medseg", description="napari-medseg: medical image segmentation from the command line.")
    parser.add_argument("--version", action="version", version=f"napari-medseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"napari_medseg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"napari_medseg.cli.{name}":
                continue  # that face of the CLI is not part of this build yet
            raise
        module.add_parser(subparsers)
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
