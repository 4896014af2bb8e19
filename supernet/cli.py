"""One error path for every command: its ``main`` is decorated with :func:`command`.

* a :class:`search_spaces.UserError` (bad setting, path, checkpoint, budget, data) prints
  ``error: <one line>`` and exits with :data:`USER_ERROR` (2, argparse's code for bad usage);
* a :class:`CommandFailed` (training stopped on a non-finite loss, an export whose check failed)
  prints its line and exits with :data:`FAILED` (1);
* Ctrl-C prints what was kept and exits with 130;
* a command that stops cleanly on a signal (training: Ctrl-C or SIGTERM, after the current step and a
  checkpoint) raises :class:`Interrupted`: its line, and 128 + the signal's number (130, 143).

Anything else is a defect and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import NoReturn

from search_spaces import UserError
from supernet.settings import SettingsError

__all__ = ["FAILED", "INTERRUPTED", "TERMINATED", "USER_ERROR", "ArgumentParser", "CommandFailed", "Interrupted",
           "command", "run_main"]

Main = Callable[[list[str] | None], int]

USER_ERROR = 2
FAILED = 1
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C ended
TERMINATED = 143  # 128 + SIGTERM (a scheduler's preemption)


class CommandFailed(RuntimeError):
    """A command ran on good input and could not finish; what it had written is intact."""


class Interrupted(BaseException):
    """A command stopped on a signal after saving its state; ``exit_code`` is 128 + the signal's number and the
    message (empty on data-parallel ranks other than 0) says what was kept. A ``BaseException``, as
    ``KeyboardInterrupt`` is, so that no ``except Exception`` on the way out swallows a stop request."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`SettingsError` (one line, exit code 2) instead of usage text."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise SettingsError(f"{message}; see {self.prog} --help")


def command(*, interrupted: str = "interrupted; what was written so far is intact") -> Callable[[Main], Main]:
    """Decorate a command's ``main(argv) -> exit code`` with :func:`run_main`::

        @command()
        def main(argv: list[str] | None = None) -> int: ...

        if __name__ == "__main__":
            sys.exit(main())
    """

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def wrapped(argv: list[str] | None = None) -> int:
            return run_main(main, argv, interrupted=interrupted)

        return wrapped

    return decorate


def run_main(
    main: Main,
    argv: list[str] | None = None,
    *,
    interrupted: str = "interrupted; what was written so far is intact",
) -> int:
    """Run ``main(argv)`` and turn the errors a user can meet into one line and an exit code."""
    try:
        return main(argv)
    except UserError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return USER_ERROR
    except CommandFailed as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return FAILED
    except Interrupted as stopped:
        if str(stopped):
            print(_one_line(stopped), file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return INTERRUPTED


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if error.args else str(error)
    return " ".join(text.split()) or type(error).__name__
