"""``auto`` mode on the real API server with real proxies: bootstrap, refusals, renewal and rotation
without a single failed push."""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config

from podiam_operator import _settings
from podiam_operator.tls import auto, pki, report, store
from localcluster.controlplane import controlplane as _cp
from tests.integration.tls import secret_volume, support
from tests.integration.tls.conftest import events, secret
from localcluster import proxy as proxy_support

pytestmark = pytest.mark.integration

SECRETS = ("podiam-ca", "podiam-proxy-tls", "podiam-operator-tls")
FAST = {"check_interval": "0.5", "ca_overlap": "5"}  # overlap: many times the volume + reload delays, even on a loaded machine


def _files(directory: Path) -> support.ClientFiles:
    return support.ClientFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")


def _cert(data: dict[str, str], key: str = "tls.crt") -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(data[key]))


def _bundle(data: dict[str, str]) -> list[x509.Certificate]:
    return list(x509.load_pem_x509_certificates(base64.b64decode(data["ca.crt"])))


def _start_stack(
    controlplane: _cp.ControlPlane, namespace: str, workdir: Path,
    agents: Callable[..., support.TlsAgent], volumes: Callable[..., secret_volume.SecretVolume],
    proxies: Callable[..., proxy_support.ProxyProcess], count: int = 1, **settings: str,
) -> tuple[support.ClientFiles, list[proxy_support.ProxyProcess], support.TlsAgent]:
    files = _files(workdir / "operator")
    agent = agents(support.agent_env(controlplane.kubeconfig, namespace, files, **{**FAST, **settings}))
    agent.wait_ok()
    volume = volumes("podiam-proxy-tls")
    started = [proxies(volume.path("tls.crt"), volume.path("tls.key"), volume.path("ca.crt")) for _ in range(count)]
    return files, started, agent


def test_two_replicas_starting_together_create_each_secret_once(
    controlplane: _cp.ControlPlane, namespace: str, workdir: Path, agents: Callable[..., support.TlsAgent],
) -> None:
    first, second = _files(workdir / "replica-1"), _files(workdir / "replica-2")
    replicas = [agents(support.agent_env(controlplane.kubeconfig, namespace, files, **FAST), name=f"replica-{n}")
                for n, files in ((1, first), (2, second))]
    for replica in replicas:
        replica.wait_ok()
    versions = {name: secret(controlplane, namespace, name)["metadata"]["resourceVersion"] for name in SECRETS}
    time.sleep(2)  # several more checks by both replicas: nothing is rewritten
    assert versions == {name: secret(controlplane, namespace, name)["metadata"]["resourceVersion"] for name in SECRETS}
    assert len(events(controlplane, namespace, "TLSCACreated")) == 1
    issued = events(controlplane, namespace, "TLSCertificateIssued")
    assert sorted(e["message"].rsplit(" in Secret ", 1)[1] for e in issued) == [f"{namespace}/podiam-operator-tls", f"{namespace}/podiam-proxy-tls"]
    assert not events(controlplane, namespace, "TLSCertificateRenewed") and not events(controlplane, namespace, "TLSCARotation")
    operator_secret = secret(controlplane, namespace, "podiam-operator-tls")["data"]
    for files in (first, second):
        assert files.cert.read_bytes() == base64.b64decode(operator_secret["tls.crt"])
        assert files.key.read_bytes() == base64.b64decode(operator_secret["tls.key"])
        assert files.ca.read_bytes() == base64.b64decode(secret(controlplane, namespace, "podiam-ca")["data"]["ca.crt"])
    ca = secret(controlplane, namespace, "podiam-ca")
    assert ca["type"] == "kubernetes.io/tls" and ca["metadata"]["labels"]["app.kubernetes.io/part-of"] == "podiam"
    proxy_tls = secret(controlplane, namespace, "podiam-proxy-tls")["data"]
    assert _cert(proxy_tls).issuer == _cert(ca["data"]).subject
    assert pki.dns_names(_cert(proxy_tls)) == ["podiam-proxy"]


class _BarrierStore(store.SecretStore):
    """The real Secret calls; each replica's first read of each Secret waits until every replica has read it,
    so all of them see it absent and all try to create it: the race, made certain."""

    def __init__(self, api: client.ApiClient, namespace: str, barriers: dict[str, asyncio.Barrier]) -> None:
        super().__init__(client.CoreV1Api(api), namespace)
        self.barriers = barriers
        self.seen: set[str] = set()

    async def read(self, name: str) -> store.Stored | None:
        stored = await super().read(name)
        if name not in self.seen:
            self.seen.add(name)
            await self.barriers[name].wait()
        return stored


async def test_concurrent_creators_lose_to_the_first_and_adopt_its_secrets(
    controlplane: _cp.ControlPlane, namespace: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Four replicas' first passes at once: all read "absent", one create wins, three get 409 and adopt the winner's."""
    caplog.set_level(logging.INFO)
    api = await kube_config.new_client_from_config(config_file=str(controlplane.kubeconfig))
    try:
        settings = _settings.OperatorSettings(tls_namespace=namespace)
        logger = logging.getLogger("test.tls.race")
        barriers = {name: asyncio.Barrier(4) for name in SECRETS}
        replicas = [auto.AutoTls(_BarrierStore(api, namespace, barriers), settings, report.Reporter(logger, None)) for _ in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*(replica.sync(may_write=True) for replica in replicas)), 60)
    finally:
        await api.close()
    assert len({result.pair.cert.serial_number for result in results}) == 1
    assert len({result.bundle_pem for result in results}) == 1
    messages = [record.getMessage() for record in caplog.records]
    assert sum("created CA" in m for m in messages) == 1
    for name in SECRETS:
        assert sum(f"another replica created Secret {namespace}/{name} first" in m for m in messages) == 3, name
    assert sum(m.startswith("TLS: issued certificate") for m in messages) == 2


def test_proxy_accepts_the_operator_and_refuses_clients_without_a_good_certificate(
    controlplane: _cp.ControlPlane, namespace: str, workdir: Path, agents: Callable[..., support.TlsAgent],
    volumes: Callable[..., secret_volume.SecretVolume], proxies: Callable[..., proxy_support.ProxyProcess],
) -> None:
    files, (proxy,), _ = _start_stack(controlplane, namespace, workdir, agents, volumes, proxies)
    good = support.push_once(proxy.host, proxy.control_port, files.context(), 1)
    assert good.ok, good.detail
    assert good.server_cert == _cert(secret(controlplane, namespace, "podiam-proxy-tls")["data"])

    def context_with(pair: pki.KeyPair | None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
        if pair is not None:
            (workdir / "c.pem").write_bytes(pair.cert_pem())
            (workdir / "k.pem").write_bytes(pair.key_pem())
            context.load_cert_chain(str(workdir / "c.pem"), str(workdir / "k.pem"))
        return context

    ca_data = secret(controlplane, namespace, "podiam-ca")["data"]
    our_ca = pki.KeyPair((_cert(ca_data),), pki.key_from_pem(base64.b64decode(ca_data["tls.key"]), "tls.key"))
    foreign_key = pki.generate_key(_settings.KeyType.ECDSA_P256)
    foreign_ca = pki.KeyPair((pki.issue_ca(foreign_key, now=auto.utcnow(), lifetime=datetime.timedelta(days=1)),), foreign_key)

    def leaf(ca: pki.KeyPair, at: datetime.datetime, lifetime: datetime.timedelta) -> pki.KeyPair:
        key = pki.generate_key(_settings.KeyType.ECDSA_P256)
        cert = pki.issue_leaf(ca, key, common_name="podiam-operator", dns_names=["podiam-operator"], server=False, now=at, lifetime=lifetime)
        return pki.KeyPair((cert,), key)

    now = auto.utcnow()
    refused = {
        "no certificate": context_with(None),
        "another CA": context_with(leaf(foreign_ca, now, datetime.timedelta(hours=1))),
        "expired": context_with(leaf(our_ca, now - datetime.timedelta(days=2), datetime.timedelta(days=1))),
    }
    for what, context in refused.items():
        result = support.push_once(proxy.host, proxy.control_port, context, 2)
        assert not result.ok, f"{what}: {result.detail}"
    after = support.push_once(proxy.host, proxy.control_port, files.context(), 3)
    assert after.ok, after.detail


def _run_pushes_through(action: Callable[[], None], done: Callable[[], bool], pusher: support.Pusher, timeout: float = 60.0) -> None:
    pusher.start()
    try:
        time.sleep(1.0)
        action()
        _cp.wait_until(done, timeout, "the change to reach everyone", interval=0.2)
        time.sleep(1.0)  # and some more pushes on the final material
    finally:
        pusher.stop()


def test_forced_leaf_renewal_keeps_every_push_working(
    controlplane: _cp.ControlPlane, namespace: str, workdir: Path, agents: Callable[..., support.TlsAgent],
    volumes: Callable[..., secret_volume.SecretVolume], proxies: Callable[..., proxy_support.ProxyProcess],
) -> None:
    files, started, _ = _start_stack(controlplane, namespace, workdir, agents, volumes, proxies, count=2)
    pusher = support.Pusher(files, started)
    old_client = pusher.client_cert().serial_number
    old_proxy = _cert(secret(controlplane, namespace, "podiam-proxy-tls")["data"]).serial_number

    def renewed_everywhere() -> bool:
        new_proxy = _cert(secret(controlplane, namespace, "podiam-proxy-tls")["data"]).serial_number
        served = {cert.serial_number for cert in pusher.last_server_cert.values()}
        return new_proxy != old_proxy and served == {new_proxy} and pusher.client_cert().serial_number != old_client and pusher.reloads > 0

    _run_pushes_through(
        lambda: controlplane.api("PATCH", f"/api/v1/namespaces/{namespace}/secrets/podiam-ca",
                                 {"metadata": {"annotations": {"podiam.io/renew": "1"}}}),
        renewed_everywhere, pusher,
    )
    assert pusher.failures == [], pusher.failures[:5]
    assert pusher.pushes > 50
    assert len(events(controlplane, namespace, "TLSCertificateRenewed")) == 2
    assert secret(controlplane, namespace, "podiam-ca")["metadata"]["annotations"]["podiam.io/renew-handled"] == "1"


def test_ca_rotation_keeps_every_push_working(
    controlplane: _cp.ControlPlane, namespace: str, workdir: Path, agents: Callable[..., support.TlsAgent],
    volumes: Callable[..., secret_volume.SecretVolume], proxies: Callable[..., proxy_support.ProxyProcess],
) -> None:
    files, started, agent = _start_stack(controlplane, namespace, workdir, agents, volumes, proxies, count=2)
    pusher = support.Pusher(files, started)
    old_ca = _cert(secret(controlplane, namespace, "podiam-ca")["data"])

    def rotated_everywhere() -> bool:
        ca = secret(controlplane, namespace, "podiam-ca")
        if ca["metadata"]["annotations"].get("podiam.io/ca-rotation") != "steady":
            return False
        new_ca = _cert(ca["data"])
        proxy_tls = secret(controlplane, namespace, "podiam-proxy-tls")["data"]
        served = {cert.issuer for cert in pusher.last_server_cert.values()}
        return (new_ca != old_ca and _bundle(ca["data"]) == [new_ca] and _bundle(proxy_tls) == [new_ca]
                and served == {new_ca.subject} and pusher.client_cert().issuer == new_ca.subject
                and list(x509.load_pem_x509_certificates(files.ca.read_bytes())) == [new_ca])

    _run_pushes_through(
        lambda: controlplane.api("PATCH", f"/api/v1/namespaces/{namespace}/secrets/podiam-ca",
                                 {"metadata": {"annotations": {"podiam.io/rotate-ca": "1"}}}),
        rotated_everywhere, pusher,
    )
    assert pusher.failures == [], pusher.failures[:5]
    assert pusher.pushes > 100
    steps = [e["message"] for e in events(controlplane, namespace, "TLSCARotation")]
    assert len(steps) == 3, steps
    assert any("introduced CA" in step for step in steps) and any("now signs" in step for step in steps), steps
    assert any("CA rotation complete" in step for step in steps), steps
    assert "CA rotation complete" in agent.log()


def test_short_lived_leaves_renew_on_schedule_without_failed_pushes(
    controlplane: _cp.ControlPlane, namespace: str, workdir: Path, agents: Callable[..., support.TlsAgent],
    volumes: Callable[..., secret_volume.SecretVolume], proxies: Callable[..., proxy_support.ProxyProcess],
) -> None:
    files, started, _ = _start_stack(controlplane, namespace, workdir, agents, volumes, proxies, leaf_lifetime="8", renew_at="0.5")
    pusher = support.Pusher(files, started, interval=0.05)
    served: set[int] = set()
    pusher.start()
    try:
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            served |= {cert.serial_number for cert in pusher.last_server_cert.values()}
            time.sleep(0.1)
    finally:
        pusher.stop()
    assert pusher.failures == [], pusher.failures[:5]
    assert len(served) >= 3  # renewed every ~4 s, each time picked up by the proxy
    assert len(events(controlplane, namespace, "TLSCertificateRenewed")) >= 4


OPERATOR_TLS_RULES = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
]


def _service_account_with(controlplane: _cp.ControlPlane, namespace: str, rules: list[dict[str, list[str]]]) -> Path:
    base = f"/api/v1/namespaces/{namespace}"
    controlplane.api("POST", f"{base}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "podiam-operator"}})
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    controlplane.api("POST", f"{rbac}/roles", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                                               "metadata": {"name": "podiam-operator-tls"}, "rules": rules})
    controlplane.api("POST", f"{rbac}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "podiam-operator-tls"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "podiam-operator-tls"},
        "subjects": [{"kind": "ServiceAccount", "name": "podiam-operator", "namespace": namespace}],
    })
    return controlplane.kubeconfig_for_service_account(namespace, "podiam-operator")


def test_the_documented_rbac_is_enough(controlplane: _cp.ControlPlane, namespace: str, workdir: Path) -> None:
    kubeconfig = _service_account_with(controlplane, namespace, OPERATOR_TLS_RULES)
    controlplane.api("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "podiam-operator-0"},
        "spec": {"serviceAccountName": "podiam-operator", "containers": [{"name": "operator", "image": "podiam-operator"}]},
    })
    env = support.agent_env(kubeconfig, namespace, _files(workdir / "operator"), pod_name="podiam-operator-0")
    result = support.check(env)
    assert result.returncode == 0, result.stdout + result.stderr
    created = events(controlplane, namespace, "TLSCACreated")
    assert created and created[0]["involvedObject"]["kind"] == "Pod" and created[0]["involvedObject"].get("uid")
    controlplane.api("PATCH", f"/api/v1/namespaces/{namespace}/secrets/podiam-ca", {"metadata": {"annotations": {"podiam.io/renew": "x"}}})
    renewed = support.check(env)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert len(events(controlplane, namespace, "TLSCertificateRenewed")) == 2


def test_missing_rbac_is_explained(controlplane: _cp.ControlPlane, namespace: str, workdir: Path) -> None:
    kubeconfig = _service_account_with(controlplane, namespace, [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    result = support.check(support.agent_env(kubeconfig, namespace, _files(workdir / "operator")))
    assert result.returncode == 1
    assert f"error: the operator may not create Secret {namespace}/podiam-ca (HTTP 403)" in result.stdout
    assert "secrets get, create, update and patch in its own namespace" in result.stdout
