"""The wheel carries every package and every YAML setting, so an installed (not editable) copy runs.

``.ci/wheel-smoke`` installs the wheel into a fresh environment and runs the entry points from
outside the checkout; these tests pin what goes into it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setuptools["packages"]


def test_declared_packages_are_the_packages_on_disk():
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("nas", "search_spaces", "supernet")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    declared = set(_declared_packages())
    assert declared - {"supernet.configs"} == on_disk, "pyproject.toml [tool.setuptools] packages is out of date"
    assert "supernet.configs" in declared


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True, text=True)
    (path,) = out.glob("slimnas-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_wheel_holds_every_yaml_setting(wheel: zipfile.ZipFile):
    names = set(wheel.namelist())
    expected = {f"supernet/configs/{path.relative_to(ROOT / 'configs').as_posix()}"
                for path in (ROOT / "configs").rglob("*.yaml")}
    assert len(expected) > 20  # train, search, and the groups
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"


def test_wheel_holds_every_module(wheel: zipfile.ZipFile):
    names = set(wheel.namelist())
    expected = {path.relative_to(ROOT).as_posix()
                for top in ("nas", "search_spaces", "supernet") for path in (ROOT / top).rglob("*.py")
                if "__pycache__" not in path.parts}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert not any(name.startswith(("tests/", "benchmarks/", "configs/")) for name in names)
