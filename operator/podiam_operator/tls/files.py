"""The operator's client certificate, key and CA bundle on disk, where its push client loads them.

Each file is replaced atomically (write a temporary file, then rename), and
only when its content changes, so a reader never sees a half-written file and
an unchanged renewal pass triggers no reload. The CA bundle goes first (during
a rotation it only grows before it shrinks), then the key, then the
certificate: a reader that reloads when the certificate changes finds the
matching key already in place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from podiam_operator.tls import checks


def _write_atomic(path: Path, content: bytes, mode: int) -> bool:
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return True


def write_client_material(cert_file: Path, key_file: Path, ca_file: Path, *, cert: bytes, key: bytes, ca: bytes) -> bool:
    """True when anything changed on disk."""
    try:
        changed = _write_atomic(ca_file, ca, 0o644)
        changed = _write_atomic(key_file, key, 0o600) or changed
        changed = _write_atomic(cert_file, cert, 0o644) or changed
    except OSError as error:
        raise checks.TlsProblem(
            "TLSFileNotWritable",
            f"cannot write the operator's TLS files ({error}); PODIAM_TLS_CLIENT_CERT_FILE, "
            "PODIAM_TLS_CLIENT_KEY_FILE and PODIAM_TLS_CA_FILE must point into a writable directory "
            "(the chart mounts an emptyDir) in tls mode auto",
        ) from None
    return changed


def write_server_pair(cert_file: Path, key_file: Path, *, cert: bytes, key: bytes) -> bool:
    """A server's certificate and key (the injection webhook's), key first; True when anything changed on disk."""
    try:
        changed = _write_atomic(key_file, key, 0o600)
        return _write_atomic(cert_file, cert, 0o644) or changed
    except OSError as error:
        raise checks.TlsProblem("TLSFileNotWritable", f"cannot write the webhook's TLS files ({error}); "
                                "--webhook-cert-file and --webhook-key-file (PODIAM_WEBHOOK_CERT_FILE, PODIAM_WEBHOOK_KEY_FILE) must be in a "
                                "writable directory (the chart mounts an emptyDir)") from None


def read_file(path: Path, what: str) -> bytes:
    """A mounted file, with a message that lists what the directory does hold when it is missing."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        try:
            present = sorted(name for name in os.listdir(path.parent) if not name.startswith(".."))
            holds = f"that directory holds: {', '.join(present)}" if present else "that directory is empty"
        except OSError:
            holds = "that directory does not exist either: is the Secret mounted?"
        raise checks.TlsProblem(
            checks.MISSING,
            f"the {what} file {path} does not exist ({holds}); check the Secret and its file names "
            "(chart: tls.operator.secretName and tls.*FileName, like the guide's tlsCerts.certFileName / "
            "keyFileName / caFileName)",
        ) from None
    except OSError as error:
        raise checks.TlsProblem(checks.MISSING, f"cannot read the {what} file {path}: {error}") from None
