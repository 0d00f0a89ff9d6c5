"""Certificate rotation: the files behind `--tls-cert` watched, each change served through
the Runtime API (lbsync.haproxy.certs: `set ssl cert` + `commit`), never a reload.

`CertWatch.poll()` stats each file (inode, size, mtime, ctime: an atomic rename, a copy
over and a `touch` all change one) and does nothing more while they stay the same, so the
loop can call it on every tick. On a change it reads the PEM. The first look at a file (the
agent's start) compares its certificate with what HAProxy serves under that name (`show
ssl cert FILE`'s SHA1): the same one costs nothing. Later, a file whose text changed is
sent even when its certificate is the one served (a new key, a new chain: HAProxy checks
the key at commit, so a key that does not match is refused now rather than at the next
reload); one only touched costs nothing. HAProxy refusing it (expired, a key that does
not match, not a PEM) is one error in the log and the old certificate stays served; the
file is tried again when it changes again. HAProxy not answering is no verdict: the next
poll tries again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .haproxy.certs import CertError, CertInfo, fingerprint, pem_problem
from .model import LbsyncError

log = logging.getLogger("lbsync.certs")

_Signature = tuple[int, int, int, int]


class CertRuntime(Protocol):
    """What the watch needs of lbsync.haproxy.certs.Certificates."""

    def info(self, filename: str) -> CertInfo: ...
    def replace(self, filename: str, pem: str) -> CertInfo: ...


class CertWatch:
    def __init__(self, files: Callable[[], list[Path]], certs: CertRuntime) -> None:
        self.files = files  # the certificate files, listed again on each poll (a folder)
        self.certs = certs
        self.seen: dict[Path, _Signature] = {}  # the files settled: served, or refused
        self.texts: dict[Path, str] = {}  # the text of each file when it settled
        self.rotations = 0
        self.refusals = 0

    def poll(self) -> list[Path]:
        """Look at every file once; the files whose new certificate HAProxy now serves."""
        rotated = []
        for path in self.files():
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone between the listing and the stat: the next poll sees
            signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self.seen.get(path) == signature:
                continue
            try:
                settled = self._check(path, first=path not in self.seen)
            except LbsyncError as e:  # HAProxy not answering: no verdict, try again
                self.texts.pop(path, None)
                log.warning("certificate %s changed; HAProxy cannot be asked now (%s): "
                            "will retry", path, e)
                continue
            self.seen[path] = signature
            if settled:
                rotated.append(path)
        return rotated

    def _check(self, path: Path, *, first: bool) -> bool:
        """True when HAProxy serves the file's new certificate now; CertError handled,
        other LbsyncErrors raised (HAProxy unreachable)."""
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError as e:
            self._refused(path, f"cannot read it ({e.strerror})")
            return False
        if self.texts.get(path) == text:
            return False  # only touched: settled already
        self.texts[path] = text
        if problem := pem_problem(text):
            self._refused(path, problem)
            return False
        try:
            served = self.certs.info(str(path))
        except CertError:
            # A file new in a --tls-cert folder: HAProxy loads it on its next reload.
            log.warning("certificate %s is not loaded in HAProxy (a new file in the "
                        "folder?): it is served after the next reload", path)
            return False
        if first and served.sha1 and served.sha1 == fingerprint(text):
            return False  # the agent's start: HAProxy serves this file already
        try:
            info = self.certs.replace(str(path), text)
        except CertError as e:
            self._refused(path, str(e), served)
            return False
        self.rotations += 1
        log.info("rotated certificate=%s subject=%s names=%s not_after=%s serial=%s "
                 "(was serial=%s, no reload)", path, info.subject, ",".join(info.dns_names),
                 f"{info.not_after:%Y-%m-%dT%H:%M:%SZ}", info.serial, served.serial)
        return True

    def _refused(self, path: Path, reason: str, served: CertInfo | None = None) -> None:
        self.refusals += 1
        kept = (f"HAProxy keeps serving {served.subject} (not after "
                f"{served.not_after:%Y-%m-%d})" if served else "HAProxy keeps the old one")
        log.error("certificate %s not rotated: %s; %s", path, reason, kept)
