"""A test PKI for the operator ↔ proxy mutual TLS, written to files.

Built on trustme. Every certificate is written as ``<name>.pem`` and
``<name>-key.pem`` in the given directory, the CA as ``ca.pem`` (the guide's
file names), so tests pass paths exactly as the chart mounts Secrets.

``make_pki(directory)`` returns a :class:`Pki` holding:

- ``ca``: the CA every proxy and the operator trust;
- ``server``: the proxy's server certificate, DNS SAN ``wire.PROXY_SERVER_NAME``;
- ``operator``: the operator's client certificate, CN and DNS SAN ``wire.OPERATOR_IDENTITY``;
- ``operator_cn_only``: the operator identity in the CN only (no SAN), also valid;
- ``foreign``: names the operator identity but is signed by another CA;
- ``expired``: names the operator identity, signed by ``ca``, expired yesterday;
- ``other_identity``: valid and signed by ``ca``, but names someone else.

``Pki.issue(...)`` issues more (e.g. a renewed server certificate for
reload tests); ``Pki.rotate_ca(...)`` starts a new CA in the same files.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import trustme

from metadata_proxy import wire


@dataclasses.dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path

    @property
    def pair(self) -> tuple[str, str]:
        """``(certfile, keyfile)`` as ``ssl.SSLContext.load_cert_chain`` takes them."""
        return str(self.cert), str(self.key)


def _write(leaf: trustme.LeafCert, directory: Path, name: str) -> CertFiles:
    files = CertFiles(cert=directory / f"{name}.pem", key=directory / f"{name}-key.pem")
    # Write-then-rename, as kubelet updates a mounted Secret: a reader never
    # sees a half-written file.
    for path, data in ((files.key, leaf.private_key_pem.bytes()), (files.cert, b"".join(p.bytes() for p in leaf.cert_chain_pems))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return files


@dataclasses.dataclass
class Pki:
    directory: Path
    authority: trustme.CA
    ca: Path
    server: CertFiles
    operator: CertFiles
    operator_cn_only: CertFiles
    foreign: CertFiles
    expired: CertFiles
    other_identity: CertFiles

    def issue(
        self,
        name: str,
        *identities: str,
        common_name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        authority: trustme.CA | None = None,
    ) -> CertFiles:
        """Issue (or re-issue, replacing the files of) certificate ``name``."""
        leaf = (authority or self.authority).issue_cert(
            *identities, common_name=common_name, not_before=not_before, not_after=not_after
        )
        return _write(leaf, self.directory, name)

    def rotate_ca(self) -> trustme.CA:
        """A new CA written over ``ca.pem``; re-issue certificates with it afterwards."""
        self.authority = trustme.CA(organization_name="podiam test CA (rotated)")
        _write_ca(self.authority, self.ca)
        return self.authority


def _write_ca(authority: trustme.CA, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(authority.cert_pem.bytes())
    tmp.replace(path)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA(organization_name="podiam test CA")
    other = trustme.CA(organization_name="a foreign CA")
    ca = directory / "ca.pem"
    _write_ca(authority, ca)
    now = datetime.datetime.now(datetime.timezone.utc)
    ident = wire.OPERATOR_IDENTITY
    return Pki(
        directory=directory,
        authority=authority,
        ca=ca,
        server=_write(authority.issue_cert(wire.PROXY_SERVER_NAME, common_name=wire.PROXY_SERVER_NAME), directory, "server"),
        operator=_write(authority.issue_cert(ident, common_name=ident), directory, "operator"),
        operator_cn_only=_write(authority.issue_cert(common_name=ident), directory, "operator-cn-only"),
        foreign=_write(other.issue_cert(ident, common_name=ident), directory, "foreign"),
        expired=_write(
            authority.issue_cert(
                ident, common_name=ident,
                not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1),
            ),
            directory, "expired",
        ),
        other_identity=_write(authority.issue_cert("someone-else", common_name="someone-else"), directory, "other-identity"),
    )
