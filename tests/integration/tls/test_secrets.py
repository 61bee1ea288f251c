"""``secrets`` mode: the guide's cfssl certificates and cert-manager's Secrets, mounted as a kubelet
does; every mistake a user can make gets its message in the log, an Event and the status."""

from __future__ import annotations

import base64
import datetime
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podiam_operator import _settings
from podiam_operator.tls import pki
from localcluster.controlplane import controlplane as _cp
from tests.integration.tls import cfssl, secret_volume, support
from tests.integration.tls.conftest import events
from localcluster import proxy as proxy_support

pytestmark = pytest.mark.integration

UTC = datetime.timezone.utc


def _create_secret(controlplane: _cp.ControlPlane, namespace: str, name: str, data: dict[str, bytes], type_: str = "Opaque") -> None:
    """As ``kubectl create secret generic NAME --from-file=...`` (or a cert-manager Certificate) leaves it."""
    controlplane.api("POST", f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": type_,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    })


def _update_secret(controlplane: _cp.ControlPlane, namespace: str, name: str, data: dict[str, bytes]) -> None:
    controlplane.api("PATCH", f"/api/v1/namespaces/{namespace}/secrets/{name}",
                     {"data": {key: base64.b64encode(value).decode() for key, value in data.items()}})


def _guide_env(controlplane: _cp.ControlPlane, namespace: str, volume: secret_volume.SecretVolume, **settings: str) -> dict[str, str]:
    """The chart's secrets mode with the guide's values: tlsCerts certFileName server.pem, keyFileName server-key.pem, caFileName ca.pem."""
    files = support.ClientFiles(volume.path("server.pem"), volume.path("server-key.pem"), volume.path("ca.pem"))
    return support.agent_env(controlplane.kubeconfig, namespace, files, mode="secrets", **{
        "proxy_secret": "kiam-agent-tls", "proxy_cert_key": "agent.pem", "proxy_key_key": "agent-key.pem", "proxy_ca_key": "ca.pem",
        **settings,
    })


def _guide_secrets(controlplane: _cp.ControlPlane, namespace: str, tool: cfssl.Cfssl) -> None:
    """Step 3 of the guide: kubectl create secret generic kiam-server-tls / kiam-agent-tls --from-file=..."""
    _create_secret(controlplane, namespace, "kiam-server-tls",
                   {name: tool.read(name) for name in ("ca.pem", "server.pem", "server-key.pem")})
    _create_secret(controlplane, namespace, "kiam-agent-tls",
                   {name: tool.read(name) for name in ("ca.pem", "agent.pem", "agent-key.pem")})


def test_guides_cfssl_layout_with_the_proxy_name_in_agent_json(
    controlplane: _cp.ControlPlane, namespace: str, workdir: Path, cfssl_bin: Path,
    volumes: Callable[..., secret_volume.SecretVolume], proxies: Callable[..., proxy_support.ProxyProcess],
) -> None:
    tool = cfssl.Cfssl(cfssl_bin, workdir / "cfssl")
    tool.init_ca(cfssl.GUIDE_CA)
    tool.issue("server", cfssl.GUIDE_SERVER)
    tool.issue("agent", {**cfssl.GUIDE_AGENT, "hosts": ["podiam-proxy"]})  # the one change podiam needs
    assert tool.read("server-key.pem").startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1, as cfssl writes it
    _guide_secrets(controlplane, namespace, tool)
    operator_volume, agent_volume = volumes("kiam-server-tls"), volumes("kiam-agent-tls")

    # The guide's server certificate has no CN; its DNS name kiam-server is the operator's identity.
    result = support.check(_guide_env(controlplane, namespace, operator_volume, operator_identity="kiam-server"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: TLS mode secrets: operator certificate")
    assert "proxies' certificate CN=Kiam Agent" in result.stdout

    proxy = proxies(agent_volume.path("agent.pem"), agent_volume.path("agent-key.pem"), agent_volume.path("ca.pem"),
                    "--operator-identity", "kiam-server")
    files = support.ClientFiles(operator_volume.path("server.pem"), operator_volume.path("server-key.pem"), operator_volume.path("ca.pem"))
    pushed = support.push_once(proxy.host, proxy.control_port, files.context(), 1)
    assert pushed.ok, pushed.detail

    # Without the identity setting, the check says what to set before any push is refused.
    default = support.check(_guide_env(controlplane, namespace, operator_volume))
    assert default.returncode == 1
    assert "does not carry the identity 'podiam-operator'" in default.stdout and "'kiam-server'" in default.stdout
    assert "PODIAM_TLS_OPERATOR_IDENTITY" in default.stdout


def test_guides_agent_certificate_without_hosts_is_explained(
    controlplane: _cp.ControlPlane, namespace: str, workdir: Path, cfssl_bin: Path,
    volumes: Callable[..., secret_volume.SecretVolume], proxies: Callable[..., proxy_support.ProxyProcess],
) -> None:
    tool = cfssl.Cfssl(cfssl_bin, workdir / "cfssl")
    tool.init_ca(cfssl.GUIDE_CA)
    tool.issue("server", cfssl.GUIDE_SERVER)
    tool.issue("agent", cfssl.GUIDE_AGENT)  # verbatim: no hosts
    _guide_secrets(controlplane, namespace, tool)
    operator_volume, agent_volume = volumes("kiam-server-tls"), volumes("kiam-agent-tls")
    result = support.check(_guide_env(controlplane, namespace, operator_volume, operator_identity="kiam-server"))
    assert result.returncode == 1
    assert "the proxies' certificate" in result.stdout and "does not carry the DNS name 'podiam-proxy'" in result.stdout
    assert "it carries no DNS names at all" in result.stdout and 'the "hosts" list of agent.json' in result.stdout
    # What the check predicts is what a push meets.
    proxy = proxies(agent_volume.path("agent.pem"), agent_volume.path("agent-key.pem"), agent_volume.path("ca.pem"),
                    "--operator-identity", "kiam-server")
    files = support.ClientFiles(operator_volume.path("server.pem"), operator_volume.path("server-key.pem"), operator_volume.path("ca.pem"))
    pushed = support.push_once(proxy.host, proxy.control_port, files.context(), 1)
    assert not pushed.ok and "Hostname mismatch" in pushed.detail


# cert-manager -----------------------------------------------------------------


def _rsa_pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    # cert-manager's default privateKey.encoding is PKCS1.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _cert_manager_certificate(ca: pki.KeyPair, common_name: str, dns_names: list[str], usages: list[x509.ObjectIdentifier] | None) -> dict[str, bytes]:
    """What a cert-manager CA Issuer writes for a Certificate: tls.crt, tls.key, ca.crt in a kubernetes.io/tls Secret."""
    key = rsa.generate_private_key(65537, 2048)
    now = datetime.datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=90))
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False))
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return {"tls.crt": pki.certs_to_pem([cert]), "tls.key": _rsa_pkcs1(key), "ca.crt": ca.cert_pem()}


def test_cert_manager_layout(
    controlplane: _cp.ControlPlane, namespace: str, volumes: Callable[..., secret_volume.SecretVolume],
    proxies: Callable[..., proxy_support.ProxyProcess],
) -> None:
    ca_key = rsa.generate_private_key(65537, 2048)
    ca = pki.KeyPair((pki.issue_ca(ca_key, now=datetime.datetime.now(UTC), lifetime=datetime.timedelta(days=365)),), ca_key)
    # Certificate podiam-operator: commonName/dnsNames podiam-operator, usages [client auth];
    # Certificate podiam-proxy: dnsNames podiam-proxy, default usages (no extended key usage).
    _create_secret(controlplane, namespace, "podiam-operator-cert",
                   _cert_manager_certificate(ca, "podiam-operator", ["podiam-operator"], [ExtendedKeyUsageOID.CLIENT_AUTH]), "kubernetes.io/tls")
    _create_secret(controlplane, namespace, "podiam-proxy-cert",
                   _cert_manager_certificate(ca, "podiam-proxy", ["podiam-proxy"], None), "kubernetes.io/tls")
    operator_volume, proxy_volume = volumes("podiam-operator-cert"), volumes("podiam-proxy-cert")
    files = support.ClientFiles(operator_volume.path("tls.crt"), operator_volume.path("tls.key"), operator_volume.path("ca.crt"))
    result = support.check(support.agent_env(controlplane.kubeconfig, namespace, files, mode="secrets", proxy_secret="podiam-proxy-cert"))
    assert result.returncode == 0, result.stdout + result.stderr
    proxy = proxies(proxy_volume.path("tls.crt"), proxy_volume.path("tls.key"), proxy_volume.path("ca.crt"))
    pushed = support.push_once(proxy.host, proxy.control_port, files.context(), 1)
    assert pushed.ok, pushed.detail


# Mistakes ---------------------------------------------------------------------


def _ca() -> pki.KeyPair:
    key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    return pki.KeyPair((pki.issue_ca(key, now=datetime.datetime.now(UTC) - datetime.timedelta(days=30), lifetime=datetime.timedelta(days=3650)),), key)


def _leaf(ca: pki.KeyPair, name: str, *, server: bool, start: float = 0, days: float = 90) -> pki.KeyPair:
    key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    at = datetime.datetime.now(UTC) + datetime.timedelta(days=start)
    cert = pki.issue_leaf(ca, key, common_name=name, dns_names=[name], server=server, now=at, lifetime=datetime.timedelta(days=days))
    return pki.KeyPair((cert,), key)


def _layouts(mistake: str, ca: pki.KeyPair | None = None) -> tuple[dict[str, bytes], dict[str, bytes] | None]:
    """(kiam-server-tls, kiam-agent-tls) contents with one mistake; None: that Secret is absent."""
    ca, other = ca or _ca(), _ca()
    operator = _leaf(ca, "podiam-operator", server=False)
    proxy = _leaf(ca, "podiam-proxy", server=True)
    if mistake == "key mismatch":
        operator = pki.KeyPair(operator.chain, _leaf(ca, "podiam-operator", server=False).key)
    elif mistake == "expired":
        operator = _leaf(ca, "podiam-operator", server=False, start=-10, days=5)
    elif mistake == "not yet valid":
        operator = _leaf(ca, "podiam-operator", server=False, start=2)
    elif mistake == "operator from another CA":
        operator = _leaf(other, "podiam-operator", server=False)
    elif mistake == "proxy from another CA":
        proxy = _leaf(other, "podiam-proxy", server=True)
    server = {"ca.pem": ca.cert_pem(), "server.pem": operator.cert_pem(), "server-key.pem": operator.key_pem()}
    agent = {"ca.pem": ca.cert_pem(), "agent.pem": proxy.cert_pem(), "agent-key.pem": proxy.key_pem()}
    if mistake == "cert-manager names with the guide's file names":
        server = {"ca.crt": ca.cert_pem(), "tls.crt": operator.cert_pem(), "tls.key": operator.key_pem()}
    return server, (None if mistake == "missing proxy Secret" else agent)


MISTAKES = {
    "missing proxy Secret": ("TLSMaterialMissing", "kiam-agent-tls, which the proxies mount, does not exist"),
    "cert-manager names with the guide's file names": ("TLSMaterialMissing", "server.pem does not exist (that directory holds: ca.crt, tls.crt, tls.key)"),
    "key mismatch": ("TLSKeyMismatch", "server-key.pem does not belong to the certificate CN=podiam-operator"),
    "expired": ("TLSCertificateExpired", "server.pem expired at"),
    "not yet valid": ("TLSCertificateNotYetValid", "server.pem is not valid before"),
    "operator from another CA": ("TLSUnknownAuthority", "server.pem was issued by"),
    "proxy from another CA": ("TLSUnknownAuthority", "kiam-agent-tls key agent.pem was issued by"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_is_reported_in_status_log_and_event(
    mistake: str, controlplane: _cp.ControlPlane, namespace: str, volumes: Callable[..., secret_volume.SecretVolume],
) -> None:
    server, agent = _layouts(mistake)
    _create_secret(controlplane, namespace, "kiam-server-tls", server)
    if agent is not None:
        _create_secret(controlplane, namespace, "kiam-agent-tls", agent)
    pod = controlplane.api("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "podiam-operator-0"},
        "spec": {"containers": [{"name": "operator", "image": "podiam-operator"}]},
    })
    volume = volumes("kiam-server-tls")
    result = support.check(_guide_env(controlplane, namespace, volume, pod_name="podiam-operator-0"))
    reason, text = MISTAKES[mistake]
    assert result.returncode == 1, result.stdout
    assert result.stdout.startswith("error: ") and text in result.stdout, result.stdout
    assert f"ERROR podiam_operator.tls TLS: {result.stdout[len('error: '):].strip()}" in result.stderr  # the log line
    posted = events(controlplane, namespace, reason)
    assert len(posted) == 1, [e["reason"] for e in events(controlplane, namespace)]
    event: dict[str, Any] = posted[0]
    assert event["type"] == "Warning" and text in event["message"]
    assert event["involvedObject"]["kind"] == "Pod" and event["involvedObject"]["uid"] == pod["metadata"]["uid"]
    described = controlplane.kubectl("-n", namespace, "describe", "pod", "podiam-operator-0")
    assert reason in described


def test_a_fixed_secret_is_picked_up_without_a_restart(
    controlplane: _cp.ControlPlane, namespace: str, volumes: Callable[..., secret_volume.SecretVolume],
    agents: Callable[..., support.TlsAgent],
) -> None:
    ca = _ca()
    broken, agent_data = _layouts("expired", ca)
    _create_secret(controlplane, namespace, "kiam-server-tls", broken)
    assert agent_data is not None
    _create_secret(controlplane, namespace, "kiam-agent-tls", agent_data)
    volume = volumes("kiam-server-tls")
    agent = agents(_guide_env(controlplane, namespace, volume, check_interval="0.5"))
    agent.process.wait_until(lambda: "error: certificate CN=podiam-operator" in agent.log(), 30, "the expiry reported")
    # The user re-issues the operator's certificate from the same CA and updates the Secret.
    fixed, _ = _layouts("none", ca)
    _update_secret(controlplane, namespace, "kiam-server-tls", fixed)
    agent.process.wait_until(lambda: "ok: TLS mode secrets" in agent.log(), 30, "the fixed Secret picked up")
    assert agent.process.alive()
    assert len(events(controlplane, namespace, "TLSCertificateExpired")) == 1
    assert len(events(controlplane, namespace, "TLSReady")) == 1
