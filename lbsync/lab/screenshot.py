"""A PNG of a page, taken with headless Chromium (Debian package `chromium`), and the
checks that tell a real screenshot from a file that only carries the name."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

from .spec import LabError

WIDTH, HEIGHT = 1400, 900
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# As root Chromium needs --no-sandbox; the others keep it from reaching for the network
# (this machine has none) and from leaving a profile behind.
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}")


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise LabError("Chromium is not installed, and the stats page screenshot needs it: "
                   "apt-get install -y chromium (or bash scripts/setup.sh)")


def screenshot(url: str, timeout: float = 60.0) -> bytes:
    binary = find_chromium()
    with tempfile.TemporaryDirectory(prefix="lbsync-chromium-") as tmp:
        target = Path(tmp) / "shot.png"
        argv = [binary, *_FLAGS, f"--user-data-dir={tmp}/profile", f"--screenshot={target}",
                url]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise LabError(f"Chromium took more than {timeout:g}s to screenshot {url}") from None
        if not target.is_file():
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise LabError(f"Chromium made no screenshot of {url} (exit {r.returncode}): {tail}")
        data = target.read_bytes()
    if problem := png_problem(data):
        raise LabError(f"Chromium's screenshot of {url} is not usable: {problem}")
    return data


def png_size(data: bytes) -> tuple[int, int]:
    if not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def png_problem(data: bytes, min_size: tuple[int, int] = (800, 400)) -> str | None:
    """Why `data` is not a real screenshot (not a PNG, too small, one flat colour), or None."""
    try:
        width, height = png_size(data)
    except ValueError as e:
        return str(e)
    if width < min_size[0] or height < min_size[1]:
        return f"{width}x{height} pixels, smaller than a page ({min_size[0]}x{min_size[1]})"
    idat, pos = b"", 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    try:
        pixels = zlib.decompress(idat)
    except zlib.error:
        return "its image data is damaged"
    # A blank page compresses to a few distinct byte values (filter bytes + one colour).
    if len(set(pixels[: 1 << 20])) < 8:
        return "the image is blank (one flat colour)"
    return None
