"""Command line: ``efficientdet <command> ...``. Parses arguments and calls the library, nothing else.

One module per command (``cli/<command>.py``: ``add_parser(subparsers)`` registers it, ``run(args)``
carries it out); :mod:`.common` holds the parser class, argument types and the model options they share.
Errors caused by input (files, fields, options) print one line on stderr and exit with code 2;
``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Any

from ..errors import EfficientDetError
from .common import Parser

#: the sub-commands, in the order ``--help`` lists them (module names in this package)
COMMANDS = ("predict", "train", "eval", "export", "benchmark", "models", "synth", "serve", "anchors")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="efficientdet", description="EfficientDet object detection: predict, train, evaluate, "
                    "export, benchmark and serve.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"efficientdet {__import__('efficientdet').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:  # an import error here is a bug: it fails the command line loudly
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..memory import tune_malloc

    tune_malloc()  # reuse freed large blocks instead of page-faulting them in again (memory.py)
    previous = _terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except EfficientDetError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (``| head``): stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except OSError as exc:  # file-system problems: name the path, no traceback
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check the path and its permissions", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _terminate_as_interrupt() -> Any:
    """SIGTERM (``timeout``, ``kill``, process managers) stops a command as Ctrl-C does: videos and JSON
    files are finalised and the exit code is 130. ``train`` and ``serve`` install their own handlers
    while they run. Returns the previous handler (None off the main thread, where none can be set)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (main() called from a thread)
        return None


if __name__ == "__main__":
    sys.exit(main())
