"""TLS certificates in a running HAProxy: read them, replace them with no reload.

HAProxy (2.1+) keeps every certificate a `bind ... crt FILE` loaded in memory under the
file's name. `set ssl cert FILE <<` (the new PEM as payload) opens a transaction and
`commit ssl cert FILE` swaps it in: new TLS connections get the new certificate, open
ones keep theirs, and nothing reloads. HAProxy checks the PEM itself (a certificate, its
key, the two matching) and answers in words, so this module sends, reads the answer and
turns a refusal into one CertError carrying HAProxy's reason; the transaction is aborted
so the old certificate stays in use.

`show ssl cert FILE` answers the certificate's subject, issuer and validity, which is what
`lbsync status` reports: HAProxy's view, not the file's, is what clients get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..model import LbsyncError
from .runtime import Address, CLISession, parse_address


class CertError(LbsyncError):
    """HAProxy refused a certificate, or does not know the file."""


@dataclass(frozen=True)
class CertInfo:
    """One certificate as HAProxy serves it (`show ssl cert FILE`)."""

    filename: str
    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    dns_names: tuple[str, ...]  # HAProxy lists the DNS names of subjectAltName only
    sha1: str

    def expires_in(self, now: datetime) -> float:
        """Seconds until notAfter (negative once expired)."""
        return (self.not_after - now).total_seconds()


# `notAfter: Jan  1 20:45:43 2027 GMT`, OpenSSL's ASN1_TIME_print format.
_TIME = "%b %d %H:%M:%S %Y %Z"


def _when(text: str, field: str) -> datetime:
    try:
        return datetime.strptime(" ".join(text.split()), _TIME).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not a time like 'Jan  1 20:45:43 2027 GMT'") \
            from None


def parse_cert_info(text: str) -> CertInfo:
    """`show ssl cert FILE`'s answer; ValueError when a field lbsync needs is missing."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    missing = [k for k in ("Filename", "notBefore", "notAfter", "Subject") if k not in fields]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in the answer: {text.strip()[:200]!r}")
    sans = fields.get("Subject Alternative Name", "")
    return CertInfo(
        filename=fields["Filename"].lstrip("*"),  # '*' marks an uncommitted transaction
        subject=fields["Subject"],
        issuer=fields.get("Issuer", ""),
        serial=fields.get("Serial", ""),
        not_before=_when(fields["notBefore"], "notBefore"),
        not_after=_when(fields["notAfter"], "notAfter"),
        dns_names=tuple(n.strip()[4:] for n in sans.split(",") if n.strip().startswith("DNS:")),
        sha1=fields.get("SHA1 FingerPrint", ""),
    )


def parse_cert_files(text: str) -> list[str]:
    """`show ssl cert`'s list of loaded files (its `# transaction` part left out)."""
    files: list[str] = []
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            section = line.lstrip("# ").strip()
        elif line and section == "filename":
            files.append(line)
    return files


def payload_of(pem: str) -> str:
    """The PEM as a Runtime API payload: blank lines (allowed between PEM blocks) would
    end the payload early, so they go."""
    return "\n".join(line for line in pem.replace("\r\n", "\n").split("\n") if line.strip())


_OPENED = re.compile(r"Transaction (created|updated) for certificate ")
_COMMITTED = re.compile(r"Success!\s*$")


def _reason(answer: str) -> str:
    words = " ".join(line.strip() for line in answer.splitlines() if line.strip())
    return re.sub(r"^(\+ )+", "", words).strip() or "empty answer"


class Certificates:
    """The certificates of one HAProxy worker, through its Runtime API (level admin)."""

    def __init__(self, address: str | Address, timeout: float = 5.0):
        self.address = parse_address(address) if isinstance(address, str) else address
        self.timeout = timeout

    def files(self) -> list[str]:
        with CLISession(self.address, self.timeout) as session:
            return parse_cert_files(session.command("show ssl cert"))

    def info(self, filename: str) -> CertInfo:
        _check_name(filename)
        with CLISession(self.address, self.timeout) as session:
            answer = session.command(f"show ssl cert {filename}")
        try:
            return parse_cert_info(answer)
        except ValueError as e:
            raise CertError(f"HAProxy at {self.address.text} has no certificate "
                            f"{filename}: {_reason(answer) if 'Filename' not in answer else e}") \
                from None

    def replace(self, filename: str, pem: str, *, now: datetime | None = None) -> CertInfo:
        """Serve `pem` for `filename` from now on (new connections); the new CertInfo.

        HAProxy checks the PEM (parse, key match); lbsync adds the validity, read from the
        uncommitted transaction (`show ssl cert *FILE`): HAProxy would serve an expired or
        not yet valid certificate, and every client would refuse it. On any refusal the
        transaction is aborted and the old certificate stays."""
        _check_name(filename)
        now = now or datetime.now(UTC)
        with CLISession(self.address, self.timeout) as session:
            opened = session.command_with_payload(f"set ssl cert {filename}", payload_of(pem))
            if not _OPENED.search(opened):
                raise CertError(f"HAProxy refused the new certificate for {filename}: "
                                f"{_reason(opened)}")
            try:
                staged = parse_cert_info(session.command(f"show ssl cert *{filename}"))
            except ValueError as e:
                session.command(f"abort ssl cert {filename}")
                raise CertError(f"cannot read the new certificate for {filename} back from "
                                f"HAProxy: {e}") from None
            if problem := _validity_problem(staged, now):
                session.command(f"abort ssl cert {filename}")
                raise CertError(f"refusing the new certificate for {filename}: {problem}")
            committed = session.command(f"commit ssl cert {filename}")
            if not _COMMITTED.search(committed):
                session.command(f"abort ssl cert {filename}")
                raise CertError(f"HAProxy refused the new certificate for {filename}: "
                                f"{_reason(committed)}")
            answer = session.command(f"show ssl cert {filename}")
        return parse_cert_info(answer)


def _validity_problem(info: CertInfo, now: datetime) -> str | None:
    if info.not_after <= now:
        return f"it expired on {info.not_after:%Y-%m-%d %H:%M} UTC ({info.subject})"
    if info.not_before > now:
        return f"it is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC ({info.subject})"
    return None


def _check_name(filename: str) -> None:
    if not filename or any(ch.isspace() or ch == ";" or ord(ch) < 0x20 for ch in filename):
        raise CertError(f"certificate file name {filename!r} is empty or has a space, ';' "
                        "or a control character")


# --- the certificate files on disk -------------------------------------------------------

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*([A-Za-z0-9+/=\s]*?)\s*-----END \1-----")
# Files HAProxy reads beside a certificate in a `crt` folder, not certificates themselves.
_EXTRA_SUFFIXES = (".key", ".issuer", ".ocsp", ".sctl")


def pem_problem(text: str) -> str | None:
    """Why `text` is not what `crt` wants (a certificate and its private key in one PEM),
    or None. Whether the two match is HAProxy's to say (`haproxy -c`, `set ssl cert`)."""
    kinds = [m.group(1) for m in _PEM_BLOCK.finditer(text)]
    if "CERTIFICATE" not in kinds:
        return "no PEM certificate in it (-----BEGIN CERTIFICATE-----)"
    if not any(k.endswith("PRIVATE KEY") for k in kinds):
        return "no PEM private key in it: the certificate's key goes in the same file"
    return None


def fingerprint(text: str) -> str:
    """The SHA1 of the PEM's first certificate, as `show ssl cert FILE` spells it
    ("SHA1 FingerPrint": hex, upper case); '' when there is none."""
    import base64
    import hashlib

    for m in _PEM_BLOCK.finditer(text):
        if m.group(1) == "CERTIFICATE":
            der = base64.b64decode("".join(m.group(2).split()))
            return hashlib.sha1(der).hexdigest().upper()  # noqa: S324 (HAProxy's own id)
    return ""


def listed(path: Path) -> list[Path]:
    """The files `crt PATH` names, unchecked: PATH, or the certificates of the folder PATH
    (HAProxy's extra files and dot files left out); [] when there is nothing there."""
    try:
        if path.is_dir():
            return sorted(p for p in path.iterdir() if p.is_file()
                          and not p.name.startswith(".") and not p.name.endswith(_EXTRA_SUFFIXES))
    except OSError:
        return []
    return [path] if path.exists() else []


def cert_files(path: Path) -> list[Path]:
    """The certificate files `crt PATH` loads: PATH itself, or each file of the folder
    PATH (SNI picks among them). CertError naming the file when one is missing or is not
    a PEM with a key."""
    files = listed(path)
    if not files:
        raise CertError(f"{path} is a folder with no certificate file in it" if path.is_dir()
                        else f"{path} does not exist (a PEM with its key, or a folder of them)")
    for file in files:
        try:
            text = file.read_text(encoding="ascii", errors="replace")
        except OSError as e:
            raise CertError(f"{file}: cannot read it ({e.strerror})") from None
        if problem := pem_problem(text):
            raise CertError(f"{file}: {problem}")
        _check_name(str(file))
    return files
