"""haproxy.cfg from a Jinja2 template (pure apart from reading the template).

The template wraps the server lines in `# lbsync:servers begin/end` markers. What lies
outside the markers is the config's *structure*: only a change there (an edited template
or new settings) needs a reload; membership changes travel through the Runtime API.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import jinja2

from . import __version__
from .desired import server_args
from .files import atomic_write, candidate_file
from .model import LbsyncError, Server
from .settings import Settings, is_unix_socket, parse_hostport

log = logging.getLogger("lbsync.render")

BEGIN = "# lbsync:servers begin"
END = "# lbsync:servers end"
DEFAULT_TEMPLATE = "haproxy.cfg.j2"


class RenderError(LbsyncError):
    """The template cannot be read, parsed or rendered, or lacks the server markers."""


def load_template(path: Path | None, name: str = DEFAULT_TEMPLATE) -> tuple[str, str]:
    """(label, source) of the user's template, or of the one shipped in the wheel."""
    if path is None:
        return f"lbsync:{name}", resources.files("lbsync.templates").joinpath(name).read_text(
            encoding="utf-8")
    try:
        return str(path), path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RenderError(f"template {path}: cannot read it ({e})") from None


@functools.lru_cache(maxsize=32)
def _compiled(source: str) -> jinja2.Template:
    """A template compiled once per source text: compiling took about a third of the
    daemon's time in a join storm, where every pass renders."""
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
        trim_blocks=True, lstrip_blocks=True,
    )
    return env.from_string(source)


def render_text(label: str, source: str, context: dict[str, object]) -> str:
    """Render any lbsync template; every error names the template and the line."""
    try:
        return _compiled(source).render(context)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(f"template {label}, line {e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise RenderError(f"template {label}: {e}") from None


# Mozilla's "intermediate" server profile (TLS 1.2 ciphers; TLS 1.3 suites).
TLS_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"))
TLS_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def haproxy_context(settings: Settings, servers: Sequence[Server],
                    explicit_cookies: bool) -> dict[str, object]:
    return {
        "lbsync_version": __version__,
        "s": settings,
        "runtime_unix": settings.runtime_socket.removeprefix("unix@")
        if is_unix_socket(settings.runtime_socket) else None,
        "state_file": str(settings.state_file),
        "explicit_cookies": explicit_cookies,
        "check_inter_ms": max(1, round(settings.check_inter * 1000)),
        "tls_ciphers": TLS_CIPHERS,
        "tls_ciphersuites": TLS_CIPHERSUITES,
        "tls_port": parse_hostport(settings.tls_bind, "--tls-bind", host_required=False)[1],
        # A cookie name is [A-Za-z0-9_.-]: only '.' means more in a regex.
        "cookie_regex": settings.cookie_name.replace(".", "\\."),
        "servers": [
            {"name": s.name, "hostport": f"{s.addr}:{s.port}", "args": server_args(s, settings)}
            for s in servers
        ],
    }


def render_haproxy(label: str, source: str, settings: Settings, servers: Sequence[Server],
                   explicit_cookies: bool) -> str:
    text = render_text(label, source, haproxy_context(settings, servers, explicit_cookies))
    lines = [ln.strip() for ln in text.splitlines()]
    if lines.count(BEGIN) != 1 or lines.count(END) != 1 or lines.index(BEGIN) > lines.index(END):
        raise RenderError(
            f"template {label}: the server lines must sit between one '{BEGIN}' line and one "
            f"'{END}' line")
    return text


def split_servers(text: str) -> tuple[list[str], list[str]]:
    """(lines outside the server markers, lines between them), the markers left out."""
    outside: list[str] = []
    inside: list[str] = []
    between = False
    for line in text.splitlines():
        marker = line.strip()
        if marker == BEGIN:
            between = True
        elif marker == END:
            between = False
        else:
            (inside if between else outside).append(line)
    return outside, inside


def structure(text: str) -> str:
    """The config without its server lines: equal structure means no reload is needed."""
    outside, _ = split_servers(text)
    return "\n".join(line for line in outside if not line.strip().startswith("#"))


def structure_hash(text: str) -> str:
    return hashlib.sha256(structure(text).encode()).hexdigest()[:16]


class ConfigPipeline:
    """The one way haproxy.cfg is written: render, `haproxy -c` on a candidate file beside
    the target, atomic swap. Unchanged text is not written again; on any failure (render,
    check) the old file stays as it was. `lbsync render` and the daemon write through it."""

    def __init__(self, settings: Settings, check: Callable[[Path], None],
                 target: Path | None = None) -> None:
        self.settings = settings
        self.check = check  # `haproxy -c`: raises LbsyncError (ConfigInvalid) on a bad file
        self.target = target or settings.haproxy_config
        self.label, self.source = load_template(settings.template)

    def render(self, servers: Sequence[Server], explicit_cookies: bool) -> str:
        return render_haproxy(self.label, self.source, self.settings, servers,
                              explicit_cookies)

    def install(self, text: str, *, check_unchanged: bool = False) -> bool:
        """Validate and swap in `text`; False when the file already held it (then checked
        again only with `check_unchanged`: `lbsync render` promises a validated file)."""
        try:
            if self.target.read_text(encoding="utf-8") == text and not check_unchanged:
                return False
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        with candidate_file(self.target, text) as candidate:
            self.check(candidate)
        return atomic_write(self.target, text)


class BackgroundInstall:
    """`ConfigPipeline.install` on a thread of its own, the latest text winning.

    A membership change is already live through the Runtime API; the file only has to
    follow, for the next start. Under a join storm on 2 vCPU, one `haproxy -c` plus the
    fsynced swap took 0.6-9 s, and the next members waited for it: the daemon hands the
    text here and goes on. A text submitted while another is being installed replaces any
    not started yet, so a burst costs one install after the current one. `flush()` waits
    until the file holds the last text submitted: the daemon calls it before a reload
    (HAProxy must read the new structure) and when HAProxy is down (it will start from
    the file).
    """

    def __init__(self, pipeline: ConfigPipeline) -> None:
        self.pipeline = pipeline
        self._cond = threading.Condition()
        self._pending: tuple[str, str] | None = None  # (text, what the log line says of it)
        self._installing = False
        self._closed = False
        # The last finished install's error, kept until an install succeeds: a rejected
        # candidate is reported by every pass until a good one replaces it.
        self.problem: str | None = None
        # Whether that error is worth trying again without a new text (a read-only or full
        # folder heals; a config `haproxy -c` rejected stays rejected).
        self.retry = False
        self._thread = threading.Thread(target=self._run, name="config-writer", daemon=True)
        self._thread.start()

    def submit(self, text: str, note: str = "") -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("BackgroundInstall.submit() after close()")
            self._pending = (text, note)
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until nothing is pending or being installed."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._installing)

    def close(self) -> None:
        """Install what is pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:  # closed and nothing left
                    return
                (text, note), self._pending = self._pending, None
                self._installing = True
            try:
                self._install(text, note)
            finally:
                with self._cond:
                    self._installing = False
                    self._cond.notify_all()

    def _install(self, text: str, note: str) -> None:
        started = time.monotonic()
        try:
            changed = self.pipeline.install(text)
        except LbsyncError as e:
            log.error("render rejected by haproxy -c, keeping %s: %s", self.pipeline.target, e)
            self.problem, self.retry = "haproxy -c rejected the rendered config", False
            return
        except OSError as e:
            log.error("cannot write %s, keeping the old file, will retry: %s",
                      self.pipeline.target, e)
            self.problem, self.retry = "writing haproxy.cfg failed", True
            return
        except Exception:
            # A bug must not kill the writer: the next text is tried.
            log.exception("writing %s crashed", self.pipeline.target)
            self.problem, self.retry = "writing haproxy.cfg failed", True
            return
        self.problem, self.retry = None, False
        if changed:
            log.info("write config=%s %s took=%.1fms background=yes", self.pipeline.target,
                     note, (time.monotonic() - started) * 1000)
