"""`lbsync bench` and the lab's measure run the bench package of the checkout."""

from __future__ import annotations

import argparse
import os

import pytest

from bench.datapath import parse_wrk
from bench.run import parse_parts, scale_sizes
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
    assert parse_parts(p, "8") == {8}
    assert parse_parts(p, "9") == {9}
    for bad in ("10", "0", "", "9,x"):
        with pytest.raises(SystemExit):
            parse_parts(p, bad)


def test_scale_sizes() -> None:
    p = argparse.ArgumentParser()
    assert scale_sizes(p, None, True) == [50]
    assert scale_sizes(p, None, False) == [100, 200, 500]
    assert scale_sizes(p, "200,500", False) == [200, 500]
    for bad in ("", "two", "0", "961", "200,"):
        with pytest.raises(SystemExit):
            scale_sizes(p, bad, False)


WRK_OUT = """Running 10s test @ http://127.0.0.1:8080/info
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.20ms  40.00ms   90.00%
  Latency Distribution
     50%  812.00us
     75%    3.50ms
     90%    4.00ms
     99%    1.20s
  93480 requests in 10.00s, 12.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   9348.55
Transfer/sec:      1.20MB
"""


def test_parse_wrk() -> None:
    assert parse_wrk(WRK_OUT) == {"req_s": 9348.55, "p50_ms": 0.812, "p99_ms": 1200.0,
                                  "errors": 9}
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk("wrk: connection refused")
