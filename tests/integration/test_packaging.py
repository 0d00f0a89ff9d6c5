"""`pip install .` (not only editable) ships the templates, so a wheel alone can render, and
product code only: no test rig, no benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(tmp: Path) -> Path:
    """The wheel of a clean copy of the sources: setuptools packs whatever an old build/
    folder of the checkout still holds (a module since moved out of lbsync/ among it)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("lbsync", "templates", "labs"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("lbsync-*.whl")
    return wheel


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="render validates with haproxy -c")
def test_wheel_contains_templates_and_renders(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "lbsync/templates/haproxy.cfg.j2" in names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    registry = tmp_path / "nodes"
    registry.mkdir()
    (registry / "n1.json").write_text(
        '{"name": "n1", "address": "127.0.0.11", "tags": {"role": "edge"}, "status": "alive"}')
    out = tmp_path / "cfg" / "haproxy.cfg"
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run(
        [sys.executable, "-c", "import lbsync, sys; print(lbsync.__file__); "
         "from lbsync.cli import main; sys.argv[0] = 'lbsync'; main()",
         "render", "--registry-dir", str(registry), "--out", str(out),
         "--haproxy-config", str(out), "--runtime-socket", str(tmp_path / "cfg" / "admin.sock"),
         "--master-socket", str(tmp_path / "cfg" / "master.sock")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(str(target)), "imported the tree, not the wheel"
    assert "server n1 127.0.0.11:8080" in out.read_text()


CROSSBAR = Path(sys.executable).parent / "crossbar"


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lbsync installed from its wheel (not editable) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(tmp / "site"), str(wheel)], check=True, capture_output=True, timeout=300)
    return tmp / "site"


@pytest.mark.integration
def test_wheel_ships_no_test_or_bench_code(wheel_site: Path) -> None:
    top = {p.name for p in wheel_site.iterdir()}
    assert not top & {"bench", "tests", "rig"}, top
    shipped = [p.relative_to(wheel_site).as_posix() for p in (wheel_site / "lbsync").rglob("*")
               if p.suffix == ".py"]
    assert "lbsync/cli.py" in shipped  # the listing is the package's
    rigs = [f for f in shipped
            if any(word in f for word in ("devstack", "httpmember", "backend.py", "bench"))]
    assert rigs == [], "test or benchmark code in the wheel"


@pytest.mark.integration
@pytest.mark.skipif(not (shutil.which("haproxy") and shutil.which("serf") and CROSSBAR.exists()),
                    reason="needs haproxy, serf and the edge extra (crossbar)")
def test_installed_lbsync_runs_the_cluster_from_inside_the_checkout(
        wheel_site: Path, tmp_path: Path) -> None:
    # The wheel's lbsync comes first on the path (as a non-editable install would), and
    # the current folder is the source checkout, whose lbsync/ has no lbsync.templates:
    # every process the cluster starts (supervisord's programs, Crossbar's workers, the
    # sidecars, the agent) must import the installed package, not the tree.
    env = {**os.environ, "PYTHONPATH": str(wheel_site)}
    cluster = tmp_path / "c"
    lbsync = [sys.executable, "-P", "-c", "import sys; from lbsync.cli import main; "
              "sys.argv[0] = 'lbsync'; main()"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*lbsync, *args], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=240, check=False)

    try:
        up = run("up", "--nodes", "1", "--proxies", "1", "--dir", str(cluster), "--net", "153")
        logs = "".join(p.read_text(errors="replace")[-2000:]
                       for p in sorted((cluster / "logs").glob("*.log")))
        assert up.returncode == 0, up.stdout + up.stderr + logs
        assert "No module named" not in logs
        conf = (cluster / "supervisord.conf").read_text()
        assert f"{sys.executable} -P -m lbsync" in conf
    finally:
        down = run("down", "--dir", str(cluster))
        assert down.returncode == 0, down.stderr
