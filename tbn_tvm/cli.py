"""The ``tbn-tvm`` command line.  Thin: parse arguments, call the API, render errors.

Each sub-command is one module of :mod:`tbn_tvm.commands` whose ``run(args)`` is registered with
the :func:`command` and :func:`arg` decorators; heavy modules (TVM, torch) are imported inside
those functions so that ``tbn-tvm --help`` stays fast.  :func:`guarded` turns what a command
raises into one ``error: ...`` line and an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from tbn_tvm.errors import TBNError

# name -> (help, add_arguments(parser), run(args) -> exit status)
_COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


def command(name: str, help: str):  # noqa: A002 - mirrors argparse
    """Register a sub-command: decorate ``run(args)``; its ``.arguments`` adds the options."""

    def wrap(run):
        def add(parser: argparse.ArgumentParser) -> None:
            for args, kwargs in getattr(run, "_arguments", []):
                parser.add_argument(*args, **kwargs)

        _COMMANDS[name] = (help, add, run)
        return run

    return wrap


def arg(*args, **kwargs):
    """Attach one ``add_argument`` call to a command function (use below ``@command``)."""

    def wrap(run):
        run._arguments = [(args, kwargs)] + list(getattr(run, "_arguments", []))
        return run

    return wrap


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors follow the house rule too
        raise TBNError(message, hint=f"see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = _Parser(prog="tbn-tvm", description="Compile sub-bit neural networks with Apache TVM.")
    from tbn_tvm import __version__

    parser.add_argument("--version", action="version", version=f"tbn-tvm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (help_, add, _) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
    return parser


def _load_commands() -> None:
    # Importing these modules registers their commands; they keep heavy imports inside functions.
    from tbn_tvm import commands  # noqa: F401


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` cleans up what the run created."""


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise Terminated()


def guarded(run: Callable[[], int]) -> int:
    """Call ``run`` and turn what it raises into the house rule: one ``error: ...`` line and exit
    status 2 for user errors, 1 for internal ones (``TBN_TVM_DEBUG=1`` shows the traceback).
    SIGTERM and Ctrl-C end the run cleanly (temporary files removed, earlier outputs intact)."""
    import signal

    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return int(run() or 0)
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
    except TBNError as e:
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in tbn-tvm or TVM, not in the user's input
        if os.environ.get("TBN_TVM_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:400]
        print(
            f"error: internal error ({type(e).__name__}: {msg}); rerun with TBN_TVM_DEBUG=1 for a traceback "
            "and report it",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    def run() -> int:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command][2](args)

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
