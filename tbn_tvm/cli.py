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


class _VersionAction(argparse.Action):
    """``--version``: tbn-tvm and what it builds with (TVM, ONNX, numpy, the Arm gcc, QEMU)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):  # noqa: A002
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    """The ``--version`` text: one line per component, looked up without importing TVM."""
    from tbn_tvm.versions import package_versions, toolchain_versions

    packages = package_versions()
    lines = [f"tbn-tvm {packages.pop('tbn_tvm')}"]
    labels = {"tvm": "Apache TVM", "onnx": "ONNX", "numpy": "numpy", "arm_gcc": "Arm gcc", "qemu": "QEMU"}
    for key, value in {**packages, **toolchain_versions()}.items():
        lines.append(f"  {labels.get(key, key):<11} {value}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors follow the house rule too
        raise TBNError(message, hint=f"see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = _Parser(prog="tbn-tvm", description="Compile sub-bit neural networks with Apache TVM.")
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="show the versions of tbn-tvm, TVM, ONNX, the Arm gcc and QEMU",
    )
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


_signalled: list[int] = []  # signals received during guarded(): TVM may wrap the exception they raise


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _signalled.append(signum)
    raise Terminated()


def _on_sigint(signum, frame) -> None:  # noqa: ARG001
    _signalled.append(signum)
    raise KeyboardInterrupt()


def _interrupted() -> int:
    """The exit for a run a signal ended, also when TVM turned it into an error of its own."""
    import signal

    term = signal.SIGTERM in _signalled
    print("error: terminated" if term else "error: interrupted", file=sys.stderr)
    return 143 if term else 130


def guarded(run: Callable[[], int]) -> int:
    """Call ``run`` and turn what it raises into the house rule: one ``error: ...`` line and exit
    status 2 for user errors, 1 for internal ones (``TBN_TVM_DEBUG=1`` shows the traceback).
    SIGTERM and Ctrl-C end the run cleanly (temporary files removed, earlier outputs intact)."""
    import signal

    _signalled.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        previous_int = signal.getsignal(signal.SIGINT)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: leave signals alone
        previous = previous_int = None
    try:
        return int(run() or 0)
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
    except TBNError as e:
        if _signalled:  # a signal TVM reported as an error of the step it interrupted
            return _interrupted()
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in tbn-tvm or TVM, not in the user's input
        if _signalled:
            return _interrupted()
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
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


def main(argv: Sequence[str] | None = None) -> int:
    def run() -> int:
        from tbn_tvm import progress

        args = build_parser().parse_args(argv)
        with progress.shown():  # long steps show a bar on a terminal (see tbn_tvm.progress)
            return _COMMANDS[args.command][2](args)

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
