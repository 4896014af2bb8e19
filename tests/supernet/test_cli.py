"""One error path: a user error is one line and exit code 2, a failed run 1, Ctrl-C 130, a defect a traceback."""

from __future__ import annotations

import pytest

from search_spaces import ConfigError, UserError
from supernet.cli import (
    FAILED,
    INTERRUPTED,
    USER_ERROR,
    ArgumentParser,
    CommandFailed,
    command,
)
from supernet.data.datasets import DataError
from supernet.io.checkpoint import CheckpointError
from supernet.settings import SettingsError


@pytest.mark.parametrize("error", [SettingsError("a.b: bad"), ConfigError("channels: bad"), DataError("data.root: bad"),
                                   CheckpointError("checkpoint: bad")])
def test_every_user_error_is_one_line_and_code_2(error: UserError, capsys: pytest.CaptureFixture[str]) -> None:
    @command()
    def main(argv: list[str] | None = None) -> int:
        raise error

    assert main([]) == USER_ERROR == 2
    assert capsys.readouterr().err == f"error: {error.args[0]}\n"


def test_a_multi_line_message_is_folded_into_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    @command()
    def main(argv: list[str] | None = None) -> int:
        raise SettingsError("first part\n   second part")

    main([])
    assert capsys.readouterr().err == "error: first part second part\n"


def test_failed_runs_and_interrupts_have_their_own_codes(capsys: pytest.CaptureFixture[str]) -> None:
    @command()
    def failing(argv: list[str] | None = None) -> int:
        raise CommandFailed("loss is not finite at step 3")

    @command(interrupted="interrupted: resume=true continues")
    def interrupted(argv: list[str] | None = None) -> int:
        raise KeyboardInterrupt

    assert failing([]) == FAILED == 1
    assert interrupted([]) == INTERRUPTED == 130
    assert capsys.readouterr().err.splitlines() == ["error: loss is not finite at step 3", "interrupted: resume=true continues"]


def test_defects_keep_their_traceback() -> None:
    @command()
    def main(argv: list[str] | None = None) -> int:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        main([])


def test_argument_errors_are_settings_errors() -> None:
    parser = ArgumentParser(prog="python -m tool")
    parser.add_argument("--sampler", choices=("nsga2", "tpe"))
    with pytest.raises(SettingsError, match=r"argument --sampler: invalid choice: 'cmaes'.*see python -m tool --help"):
        parser.parse_args(["--sampler", "cmaes"])
