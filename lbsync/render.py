"""haproxy.cfg from a Jinja2 template (pure apart from reading the template).

The template wraps the server lines in `# lbsync:servers begin/end` markers. What lies
outside the markers is the config's *structure*: only a change there (an edited template
or new settings) needs a reload; membership changes travel through the Runtime API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import jinja2

from . import __version__
from .desired import server_args
from .model import LbsyncError, Server
from .settings import Settings, is_unix_socket

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


def render_text(label: str, source: str, context: dict[str, object]) -> str:
    """Render any lbsync template; every error names the template and the line."""
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
        trim_blocks=True, lstrip_blocks=True,
    )
    try:
        return env.from_string(source).render(context)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(f"template {label}, line {e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise RenderError(f"template {label}: {e}") from None


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


def structure(text: str) -> str:
    """The config without its server lines: equal structure means no reload is needed."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        marker = line.strip()
        if marker == BEGIN:
            inside = True
        elif marker == END:
            inside = False
        elif not inside and not marker.startswith("#"):
            out.append(line)
    return "\n".join(out)


def structure_hash(text: str) -> str:
    return hashlib.sha256(structure(text).encode()).hexdigest()[:16]
