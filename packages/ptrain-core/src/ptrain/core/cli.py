"""Helpers every ptrain command-line tool uses: one-line errors, --version, --json, progress.

A command is a ``main(argv: list[str] | None = None) -> int`` function wrapped with
``cli_entry(prog)``. A mistake by the user (``UserError``, a missing or unreadable file) is
reported as exactly one line ``"<prog>: error: <message>"`` on stderr with exit code 2, never a
traceback; set ``PTRAIN_DEBUG=1`` to see the traceback anyway. Bugs (any other exception) still
raise with their traceback.

Example::

    @cli_entry("ptrain-moe")
    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog="ptrain-moe")
        add_version_argument(parser, "ptrain-moe")
        add_json_argument(parser)
        args = parser.parse_args(argv)
        for batch in progress(loader, desc="train"):
            ...
        if args.json:
            write_json(args.json, results)
        return 0
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

__all__ = [
    "UserError",
    "add_json_argument",
    "add_version_argument",
    "cli_entry",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "progress",
    "write_json",
]

_T = TypeVar("_T")


class MainFunction(Protocol):
    """A CLI entry point: ``main(argv=None) -> int``."""

    def __call__(self, argv: list[str] | None = None, /) -> int: ...


DEBUG_ENV = "PTRAIN_DEBUG"
"""Set to ``1`` to re-raise user errors with their traceback instead of printing one line."""

NO_PROGRESS_ENV = "PTRAIN_NO_PROGRESS"
"""Set to ``1`` to disable progress bars even on a terminal."""


class UserError(Exception):
    """A mistake by the user (a bad file, a bad value); its message is one line.

    ``cli_entry`` prints it as ``"<prog>: error: <message>"`` and exits with code 2.
    """


def _env_flag(name: str) -> bool:
    """True when the environment variable is set to something other than '', '0' or 'false'."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    """Collapses a message to a single line."""
    return " ".join(text.split())


def _print_error(prog: str, message: str) -> None:
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)


def _describe_os_error(error: OSError) -> str:
    """``"No such file or directory: data/x.csv"``: names the file, unlike ``[Errno 2] ...``."""
    if error.filename is not None:
        reason = error.strerror or type(error).__name__
        text = f"{reason}: {error.filename}"
        if error.filename2 is not None:
            text += f" -> {error.filename2}"
        return text
    return str(error) or type(error).__name__


def cli_entry(prog: str) -> Callable[[MainFunction], MainFunction]:
    """Decorates ``main(argv=None) -> int`` so that user mistakes end in one line and exit code 2.

    Caught and reported as ``"{prog}: error: {message}"`` on stderr (one line, no traceback):
    ``UserError`` (and its subclasses, such as ``CheckpointError``) and ``FileNotFoundError``,
    ``IsADirectoryError``, ``PermissionError`` → return 2; ``KeyboardInterrupt`` → return 130.
    ``SystemExit`` raised inside (argparse's ``--help``, ``--version`` and usage errors) is turned
    into its return code, so ``main(argv)`` always returns an int. Every other exception is a bug
    and propagates with its traceback. With ``PTRAIN_DEBUG=1`` the caught errors are re-raised.

    Args:
        prog: the program name used in the error line.

    Returns:
        The decorator.
    """

    def decorate(main: MainFunction) -> MainFunction:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None, /) -> int:
            try:
                code = main(argv)
            except SystemExit as exit_request:
                return _exit_code(exit_request)
            except KeyboardInterrupt:
                if _env_flag(DEBUG_ENV):
                    raise
                _print_error(prog, "interrupted")
                return 130
            except UserError as error:
                if _env_flag(DEBUG_ENV):
                    raise
                _print_error(prog, str(error) or type(error).__name__)
                return 2
            except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
                if _env_flag(DEBUG_ENV):
                    raise
                _print_error(prog, _describe_os_error(error))
                return 2
            return 0 if code is None else int(code)

        return wrapper

    return decorate


def _exit_code(exit_request: SystemExit) -> int:
    """The status ``sys.exit`` would produce (a string is printed to stderr, status 1)."""
    code = exit_request.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (else a one-line usage error naming the value)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_version_argument(parser: argparse.ArgumentParser, distribution: str) -> None:
    """Adds ``--version``, printing ``"{prog} {version of distribution}"`` and exiting 0.

    Args:
        parser: the parser to extend.
        distribution: the installed distribution whose version is printed (e.g. ``"ptrain-moe"``).
    """
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {version}",
        help="print the version and exit",
    )


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--json PATH`` (default None): where to write machine-readable results.

    Args:
        parser: the parser to extend.
    """
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="write machine-readable results to PATH; '-' for stdout",
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"write_json: {type(value).__name__} is not JSON serializable: {value!r}")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes ``obj`` as JSON (indent 2, trailing newline) atomically, or to stdout for ``'-'``.

    The JSON text is built before the file is touched, so an object that cannot be serialized
    leaves a previous file intact; the write itself goes through ``checkpoint.atomic_write``.

    Args:
        path: the output file, or ``"-"`` for stdout. Paths are written as strings.
        obj: JSON-serializable data (``os.PathLike`` values are written as strings).

    Raises:
        TypeError: ``obj`` holds something JSON cannot represent.
        FileNotFoundError: the output directory does not exist (names ``path``).
    """
    # Imported here: checkpoint imports UserError from this module.
    from ptrain.core.checkpoint import atomic_write

    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    if os.fspath(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_write(Path(path), "w") as file:
        file.write(text)


def progress(
    iterable: Iterable[_T] | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    disable: bool | None = None,
    unit: str = "it",
) -> tqdm[_T]:
    """A tqdm progress bar on stderr that stays quiet in logs and pipelines.

    Args:
        iterable: what to iterate over; None for a manual bar (call ``.update(n)``).
        total: the expected number of items (taken from ``len(iterable)`` when available).
        desc: a label shown before the bar.
        disable: True/False to force; None (default) disables the bar when stderr is not a
            terminal or when the environment sets ``PTRAIN_NO_PROGRESS=1``.
        unit: the unit name shown in the rate.

    Returns:
        The tqdm object: iterate over it (it yields every item of ``iterable`` whether or not
        the bar is shown) or use it as a context manager.
    """
    if disable is None:
        is_terminal = getattr(sys.stderr, "isatty", lambda: False)()
        disable = (not is_terminal) or _env_flag(NO_PROGRESS_ENV)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=disable,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
    )
