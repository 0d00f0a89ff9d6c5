"""`pip install .` (not only editable) ships the templates: a wheel alone can render."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="render validates with haproxy -c")
def test_wheel_contains_templates_and_renders(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("lbsync-*.whl")
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
