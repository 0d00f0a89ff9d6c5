"""A small HTTP load for tests that must count every failed request (not a benchmark)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests


@dataclass
class HttpLoad:
    """Threads sending GET `url` until stopped; every non-200 and every error counts.

    `sticky_to` adds one thread per session, each keeping its cookies (so its requests
    stay on one server until that server goes).
    """

    url: str
    threads: int = 4
    sticky_to: list[requests.Session] = field(default_factory=list)
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, client: requests.Session | None) -> None:
        while not self._stop.is_set():
            try:
                r = (client or requests).get(self.url, timeout=10)
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {r.status_code}")
            except requests.RequestException as e:
                self.failures.append(repr(e))
            time.sleep(0.005)

    def __enter__(self) -> HttpLoad:
        clients: list[requests.Session | None] = [None] * self.threads
        for c in clients + list(self.sticky_to):
            t = threading.Thread(target=self._run, args=(c,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(15)
