"""`lbsync bench` and the lab's measure run the bench package of the checkout."""

from __future__ import annotations

import argparse
import os

import pytest

from bench.run import parse_parts
from lbsync import BENCH_RUN, CHECKOUT, bench_command


def test_bench_command_runs_the_package_with_the_checkout_first_on_the_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    argv, env = bench_command("--quick", "--out", "x.json")
    assert argv[1:] == ["-P", "-m", "bench.run", "--quick", "--out", "x.json"]
    assert env["PYTHONPATH"].split(os.pathsep) == [str(CHECKOUT), "/elsewhere"]
    assert BENCH_RUN.is_file() and (CHECKOUT / "bench" / "__init__.py").is_file()


def test_bench_command_without_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)
    _, env = bench_command()
    assert env["PYTHONPATH"] == str(CHECKOUT)


def test_quick_parts_parse() -> None:
    p = argparse.ArgumentParser()
    assert parse_parts(p, "1,2,3,4,5,6") == {1, 2, 3, 4, 5, 6}
    with pytest.raises(SystemExit):
        parse_parts(p, "8")
