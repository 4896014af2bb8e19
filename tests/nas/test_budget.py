from __future__ import annotations

import pytest

from nas.budget import (
    Budget,
    BudgetError,
    check_budget_against,
    format_flops,
    format_seconds,
    parse_budget,
)

GOOD = [
    ("1GFLOP", "flops", 1e9),
    ("1GFLOPs", "flops", 1e9),
    ("1 gflops", "flops", 1e9),
    ("  1 GFLOPS  ", "flops", 1e9),
    ("300MFLOPs", "flops", 300e6),
    ("300mflop", "flops", 300e6),  # case-insensitive: m is mega, FLOPs have no milli
    ("5e8", "flops", 5e8),
    ("500000000", "flops", 5e8),
    ("1.5e9flops", "flops", 1.5e9),
    ("750kflops", "flops", 750e3),
    ("750KFLOPs", "flops", 750e3),
    ("2TFLOP", "flops", 2e12),
    ("123flops", "flops", 123.0),
    (".5GFLOP", "flops", 0.5e9),
    ("2.5ms", "latency", 2.5e-3),
    ("2.5 MS", "latency", 2.5e-3),
    ("200us", "latency", 200e-6),
    ("200µs", "latency", 200e-6),  # micro sign U+00B5
    ("200μs", "latency", 200e-6),  # greek mu U+03BC
    ("0.01s", "latency", 0.01),
    ("1e-3 s", "latency", 1e-3),
    ("5e5ns", "latency", 5e-4),
]


@pytest.mark.parametrize(("text", "kind", "value"), GOOD)
def test_parse_good(text: str, kind: str, value: float) -> None:
    budget = parse_budget(text)
    assert budget.kind == kind
    assert budget.value == pytest.approx(value, rel=1e-12)


def test_parse_numbers_from_config() -> None:
    assert parse_budget(500_000_000) == Budget("flops", 5e8)
    assert parse_budget(5e8) == Budget("flops", 5e8)


BAD = [
    ("1GB", "unknown unit"),
    ("5 parsecs", "unknown unit"),
    ("3 furlongs", "unknown unit"),
    ("2e", "unknown unit"),
    ("abc", "not a number"),
    ("1..2GFLOP", "not a number"),
    ("GFLOP", "not a number"),
    ("1 G FLOP", "not a number"),
    ("-1GFLOP", "positive"),
    ("-2.5ms", "positive"),
    ("0", "positive"),
    ("0ms", "positive"),
    ("nan", "finite"),
    ("inf", "finite"),
    ("-inf GFLOPs", "finite"),
    ("1e999", "finite"),
]


@pytest.mark.parametrize(("text", "reason"), BAD)
def test_parse_bad(text: str, reason: str) -> None:
    with pytest.raises(BudgetError) as excinfo:
        parse_budget(text)
    message = str(excinfo.value)
    assert repr(text) in message
    assert reason in message
    assert "1GFLOP" in message and "2.5ms" in message  # lists accepted forms
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_parse_empty(text: str) -> None:
    with pytest.raises(BudgetError, match="empty"):
        parse_budget(text)


def test_parse_rejects_bool() -> None:
    with pytest.raises(BudgetError):
        parse_budget(True)  # type: ignore[arg-type]


def test_budget_validates_fields() -> None:
    with pytest.raises(BudgetError, match="kind"):
        Budget("params", 1.0)  # type: ignore[arg-type]
    with pytest.raises(BudgetError, match="positive"):
        Budget("flops", 0.0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4.11e9, "4.11 GFLOPs"),
        (300e6, "300.00 MFLOPs"),
        (2.73e6, "2.73 MFLOPs"),
        (750e3, "750.00 kFLOPs"),
        (2e12, "2.00 TFLOPs"),
        (12.0, "12.00 FLOPs"),
        (999.999e6, "1.00 GFLOPs"),
    ],
)
def test_format_flops(value: float, text: str) -> None:
    assert format_flops(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.5e-3, "2.50 ms"), (200e-6, "200.00 us"), (1.5, "1.50 s"), (5e-9, "5.00 ns"), (0.9999999, "1.00 s")],
)
def test_format_seconds(value: float, text: str) -> None:
    assert format_seconds(value) == text


def test_str_round_trips() -> None:
    for text in ["300MFLOPs", "2.5ms", "200us", "4.11GFLOPs"]:
        budget = parse_budget(text)
        assert parse_budget(str(budget).replace(" ", "")).value == pytest.approx(budget.value)


def test_below_smallest_raises_with_smallest_cost() -> None:
    with pytest.raises(BudgetError) as excinfo:
        check_budget_against(parse_budget("1MFLOPs"), smallest=2.73e6, largest=4.11e9)
    message = str(excinfo.value)
    assert "1.00 MFLOPs" in message and "2.73 MFLOPs" in message and "smallest" in message


def test_below_smallest_latency_uses_time_units() -> None:
    with pytest.raises(BudgetError, match=r"\(1\.20 ms\)"):
        check_budget_against(parse_budget("200us"), smallest=1.2e-3, largest=8e-3)


@pytest.mark.parametrize("text", ["4.11GFLOPs", "10GFLOPs"])
def test_not_binding_warns(text: str) -> None:
    warning = check_budget_against(parse_budget(text), smallest=2.73e6, largest=4.11e9)
    assert warning is not None
    assert "does not bind" in warning and "4.11 GFLOPs" in warning


@pytest.mark.parametrize("text", ["2.73MFLOPs", "1GFLOP", "4.1GFLOPs"])
def test_binding_budget_is_silent(text: str) -> None:
    assert check_budget_against(parse_budget(text), smallest=2.73e6, largest=4.11e9) is None


def test_check_rejects_disordered_range() -> None:
    with pytest.raises(ValueError, match="smallest"):
        check_budget_against(parse_budget("1GFLOP"), smallest=5e9, largest=1e9)
