"""The one error type a user can cause, shared by every package (this one imports nothing of ours).

Every command catches :class:`UserError` in one place (``supernet.cli.run_main``) and prints its
message as one line: what was wrong, then what would be right. Subclasses only say where the
error arose (a config, the data, a checkpoint, a budget, ...).
"""

from __future__ import annotations

__all__ = ["UserError", "first_line"]


class UserError(ValueError):
    """A setting, file or argument the user can fix; the message names it and what would be right."""


def first_line(error: BaseException, *, limit: int = 200) -> str:
    """The first non-empty line of ``error``'s message (or its type name), at most ``limit`` characters.

    Third-party exceptions (PIL, torch.load, SQLAlchemy, Hydra) often carry multi-line messages;
    quoting only their first line keeps our own messages one line long.

    >>> first_line(ValueError("bad value\\n  full traceback text"))
    'bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    for line in str(error).splitlines():
        if line.strip():
            return " ".join(line.split())[:limit]
    return type(error).__name__
