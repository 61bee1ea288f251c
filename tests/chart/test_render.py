"""helm lint and helm template on charts/podiam: what each value turns into, and what the schema refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from localcluster import helm as _helm

pytestmark = pytest.mark.chart

CI_VALUES = sorted((_helm.CHART / "ci").glob("*.yaml"))
GUIDE_VALUES = _helm.CHART / "ci" / "kiam-guide-values.yaml"


# -- lint, CRDs ----------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_lint_passes(helm: _helm.Helm, values_file: Path | None) -> None:
    out = helm.lint(values_files=[values_file] if values_file else [])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_chart_crds_are_byte_identical_copies_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in (_helm.REPO / "crds").glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in (_helm.CHART / "crds").glob("*.yaml")}
    assert source, "crds/ is empty"
    assert sorted(copy) == sorted(source), "charts/podiam/crds/ must hold exactly the files of crds/ (cp crds/*.yaml charts/podiam/crds/)"
    for name, content in source.items():
        assert copy[name] == content, f"charts/podiam/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/podiam/crds/"


def test_include_crds_renders_the_podrolebinding_crd(helm: _helm.Helm) -> None:
    rendered = helm.template(include_crds=True)
    crds = {o["metadata"]["name"] for o in rendered.objects if o["kind"] == "CustomResourceDefinition"}
    assert "podrolebindings.podiam.io" in crds and "clusterkopfpeerings.kopf.dev" in crds


# -- defaults ----------------------------------------------------------------------


def test_default_objects(helm: _helm.Helm) -> None:
    rendered = helm.template()
    assert sorted(rendered.kinds()) == sorted([
        "ServiceAccount", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
        "Deployment", "DaemonSet", "PodDisruptionBudget", "Service", "Service", "ClusterKopfPeering",
        "Service", "MutatingWebhookConfiguration",  # the container-credentials injection webhook
    ])
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "podiam" and labels["app.kubernetes.io/instance"] == "podiam"
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and "app.kubernetes.io/name" in labels


def test_operator_deployment_defaults(helm: _helm.Helm) -> None:
    deployment = helm.template().get("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "podiam-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    operator = _helm.container(deployment, "operator")
    assert operator["image"] == "ghcr.io/podiam/podiam-operator:0.1.0"
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert operator["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    assert operator["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert operator["resources"]["requests"] and operator["resources"]["limits"]["memory"]
    env = _helm.env_of(operator)
    # The operator's own AWS identity: its pods (this namespace, this ServiceAccount) read the node's role via their proxy.
    assert env["PODIAM_OPERATOR_NODE_IDENTITY"] == "true"
    assert env["PODIAM_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["PODIAM_OPERATOR_SERVICE_ACCOUNT"] == {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}
    assert not [name for name in env if name.startswith("AWS_")]
    # It removes the start-up taint, so it must run on nodes that still carry it.
    assert {"key": "podiam.io/agent-not-ready", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # Pod network: listeners on every address of the pod, ports next to the proxy's.
    assert "hostNetwork" not in pod and "PODIAM_METRICS_ADDRESS" not in env
    assert {p["name"]: p["containerPort"] for p in operator["ports"]} == {"liveness": 8184, "metrics": 8185, "webhook": 8187}
    assert "preferredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    assert env["PODIAM_TLS_MODE"] == "auto"
    assert env["PODIAM_PROXY_SELECTOR"] == "app.kubernetes.io/name=podiam-proxy,app.kubernetes.io/instance=podiam"
    assert env["PODIAM_PROXY_NAMESPACE"] == "podiam-system"
    assert env["PODIAM_PEERING_NAME"] == "podiam"
    assert env["PODIAM_SESSION_DURATION"] == "3600"
    assert env["PODIAM_TLS_PROXY_SECRET"] == "podiam-proxy-tls" and env["PODIAM_TLS_CA_SECRET"] == "podiam-ca"
    assert env["PODIAM_TLS_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # auto mode writes the client files into a memory-backed emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["emptyDir"]["medium"] == "Memory"
    assert "PODIAM_ASSUME_ROLE_ARN" not in env


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_every_environment_variable_the_chart_sets_is_a_setting(helm: _helm.Helm, values_file: Path | None) -> None:
    """An env name the programs do not read is a setting silently lost (and a deprecated one is not set)."""
    from metadata_proxy import _settings as proxy_settings
    from podiam_operator import _settings as operator_settings

    rendered = helm.template(values_files=[values_file] if values_file else [])
    operator = {f"PODIAM_{name.upper()}" for name in operator_settings.OperatorSettings.model_fields} | {"POD_NAME"}
    proxy = {f"{proxy_settings.ENV_PREFIX}{name.upper()}" for name in proxy_settings.ProxySettings.model_fields}
    deployment, daemonset = rendered.get("Deployment"), rendered.get("DaemonSet")
    unknown = [name for name in _helm.env_of(_helm.container(deployment, "operator"))
               if name.startswith("PODIAM_") and name not in operator]
    for container in daemonset["spec"]["template"]["spec"]["containers"]:
        unknown += [name for name in _helm.env_of(container) if name.startswith("PODIAM_") and name not in proxy]
    assert unknown == []


def test_proxy_daemonset_defaults(helm: _helm.Helm) -> None:
    rendered = helm.template()
    daemonset = rendered.get("DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every node, tainted or not
    proxy = _helm.container(daemonset, "proxy")
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"metadata": 8181, "control": 8182, "health": 8183}
    security = proxy["securityContext"]
    assert security["runAsUser"] == 10001 and security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    env = _helm.env_of(proxy)
    assert env["PODIAM_PROXY_IPTABLES"] == "true" and env["PODIAM_PROXY_HOST_INTERFACE"] == "cali+"
    assert env["PODIAM_PROXY_INTERCEPTION_CHECK"] == "true"
    assert env["PODIAM_PROXY_CREDENTIAL_WAIT"] == "800ms"
    assert env["PODIAM_PROXY_HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["PODIAM_PROXY_BIND_ADDRESS"] == "$(PODIAM_PROXY_HOST_IP)"
    assert env["PODIAM_PROXY_TLS_CERT"] == "/var/run/podiam/tls/tls.crt"
    # The operator's proxy selector matches the DaemonSet's pods.
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    selector = _helm.env_of(_helm.container(rendered.get("Deployment"), "operator"))["PODIAM_PROXY_SELECTOR"]
    assert all(labels[k] == v for k, v in (pair.split("=") for pair in selector.split(",")))
    # The Secret the operator creates in auto mode is the one the proxies mount (deliberately not optional).
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "podiam-proxy-tls" and "optional" not in tls["secret"]


def test_proxy_service_account_has_no_rbac(helm: _helm.Helm) -> None:
    rendered = helm.template()
    bound = [s["name"] for o in rendered.objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding") for s in o["subjects"]]
    assert bound == ["podiam-operator", "podiam-operator"]
    proxy_sa = rendered.get("ServiceAccount", "podiam-proxy")
    assert proxy_sa["automountServiceAccountToken"] is False


def test_operator_rbac_is_least_privilege(helm: _helm.Helm) -> None:
    rendered = helm.template()
    rules = rendered.get("ClusterRole")["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    by_resource = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    # Never writes to pods or namespaces; no Secrets cluster-wide.
    assert by_resource[("", "pods")] == {"list", "watch"}
    assert by_resource[("", "namespaces")] == {"list", "watch"}
    assert ("", "secrets") not in by_resource
    role = rendered.get("Role")
    named = [r for r in role["rules"] if "resourceNames" in r and r["resources"] == ["secrets"]]
    assert named and set(named[0]["resourceNames"]) == {"podiam-ca", "podiam-proxy-tls", "podiam-operator-tls", "podiam-webhook-tls"}
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]} in role["rules"]  # its own pod, for TLS Events
    # Its status ConfigMap for kubectl podiam, by name (create cannot be limited by name).
    assert {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["podiam-status"], "verbs": ["get", "update"]} in role["rules"]
    assert all(r["resources"] == ["secrets"] for r in role["rules"] if r["resources"] not in (["pods"], ["configmaps"]))
    # Without the taint duty, no write access to nodes.
    rules = helm.template(values={"operator": {"manageNodeTaint": False}}).get("ClusterRole")["rules"]
    node_rule = next(r for r in rules if r["resources"] == ["nodes"])
    assert "patch" not in node_rule["verbs"]


# -- the guide's values, migrated -------------------------------------------------


def test_kiam_guide_values(helm: _helm.Helm) -> None:
    rendered = helm.template(values_files=[GUIDE_VALUES])
    daemonset, deployment = rendered.get("DaemonSet"), rendered.get("Deployment")
    proxy_env = _helm.env_of(_helm.container(daemonset, "proxy"))
    assert proxy_env["PODIAM_PROXY_HOST_INTERFACE"] == "!eth0"
    assert proxy_env["PODIAM_PROXY_IPTABLES"] == "true"
    assert proxy_env["PODIAM_PROXY_LOG_LEVEL"] == "debug"
    assert proxy_env["PODIAM_PROXY_TLS_CERT"] == "/var/run/podiam/tls/agent.pem"
    assert proxy_env["PODIAM_PROXY_TLS_KEY"] == "/var/run/podiam/tls/agent-key.pem"
    assert proxy_env["PODIAM_PROXY_TLS_CA"] == "/var/run/podiam/tls/ca.pem"
    assert proxy_env["PODIAM_PROXY_OPERATOR_IDENTITY"] == "kiam-server"
    proxy_pod = daemonset["spec"]["template"]["spec"]
    assert {"name": "ssl-certs", "hostPath": {"path": "/etc/pki/ca-trust/extracted/pem"}} in proxy_pod["volumes"]
    assert next(v for v in proxy_pod["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "kiam-agent-tls"
    mounts = _helm.container(daemonset, "proxy")["volumeMounts"]
    assert {"name": "ssl-certs", "mountPath": "/etc/ssl/certs", "readOnly": True} in mounts

    operator = _helm.container(deployment, "operator")
    env = _helm.env_of(operator)
    assert env["PODIAM_ASSUME_ROLE_ARN"] == "arn:aws:iam::123456789012:role/kiam-server"
    assert env["PODIAM_TLS_MODE"] == "secrets"
    assert env["PODIAM_TLS_CLIENT_CERT_FILE"] == "/var/run/podiam/tls/server.pem"
    assert env["PODIAM_TLS_CLIENT_KEY_FILE"] == "/var/run/podiam/tls/server-key.pem"
    assert env["PODIAM_TLS_CA_FILE"] == "/var/run/podiam/tls/ca.pem"
    assert env["PODIAM_TLS_PROXY_SECRET"] == "kiam-agent-tls"
    assert env["PODIAM_TLS_PROXY_CERT_KEY"] == "agent.pem"
    assert env["PODIAM_LOG_LEVEL"] == "DEBUG"
    assert env["AWS_CA_BUNDLE"] == "/etc/ssl/certs/tls-ca-bundle.pem"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "kiam-server-tls"
    # secrets mode: the operator may read the proxies' Secret only, and create none.
    role = rendered.get("Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["podiam-status"], "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["kiam-agent-tls"], "verbs": ["get"]},
    ]


def test_host_network_operator_binds_the_node_ip_spreads_one_per_node_and_rolls_in_place(helm: _helm.Helm) -> None:
    rendered = helm.template(values={"operator": {"useHostNetwork": True, "tolerations": [{"key": "dedicated", "operator": "Exists"}]}})
    deployment = rendered.get("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    # The replica being replaced holds the node's ports: it goes first; never two on one node.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    operator = _helm.container(deployment, "operator")
    env = _helm.env_of(operator)
    # The pod's IP is the node's: the listeners bind it, not every address of the node.
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PODIAM_METRICS_ADDRESS"] == env["PODIAM_LIVENESS_ADDRESS"] == "$(POD_IP)"
    names = [e["name"] for e in operator["env"]]
    assert names.index("POD_IP") < names.index("PODIAM_METRICS_ADDRESS")  # $(POD_IP) is defined before its use
    ports = {p["containerPort"] for p in operator["ports"]}
    proxy_ports = {p["containerPort"] for p in _helm.container(rendered.get("DaemonSet"), "proxy")["ports"]}
    assert ports == {8184, 8185, 8187} and not ports & (proxy_ports | {8186})  # 8186: the container-credentials port
    assert env["PODIAM_WEBHOOK_ADDRESS"] == "$(POD_IP)"
    # The start-up taint's toleration stays, the user's are added.
    assert pod["tolerations"] == [{"key": "podiam.io/agent-not-ready", "operator": "Exists", "effect": "NoSchedule"},
                                  {"key": "dedicated", "operator": "Exists"}]
    notes = helm.notes(values={"operator": {"useHostNetwork": True, "replicas": 3}})
    assert "so the cluster needs at least 3 node(s)" in notes


def test_static_keys_come_from_a_secret_by_reference_only(helm: _helm.Helm) -> None:
    rendered = helm.template(values={"operator": {"credentialsSecret": "podiam-aws", "nodeIdentity": False}})
    env = _helm.env_of(_helm.container(rendered.get("Deployment"), "operator"))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "podiam-aws", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "podiam-aws", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["AWS_SESSION_TOKEN"] == {"secretKeyRef": {"name": "podiam-aws", "key": "AWS_SESSION_TOKEN", "optional": True}}
    assert env["PODIAM_OPERATOR_NODE_IDENTITY"] == "false"
    assert "Secret" not in rendered.kinds()  # the chart never holds the keys


def test_irsa_is_the_service_accounts_annotation_with_a_mounted_token(helm: _helm.Helm) -> None:
    arn = "arn:aws:iam::123456789012:role/podiam-operator"
    rendered = helm.template(values={"operator": {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": arn}}}})
    account = rendered.get("ServiceAccount", "podiam-operator")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
    pod = rendered.get("Deployment")["spec"]["template"]["spec"]
    # EKS's webhook adds the web-identity token volume and AWS_ROLE_ARN to pods of this ServiceAccount.
    assert pod["serviceAccountName"] == "podiam-operator" and pod["automountServiceAccountToken"] is True


def test_legacy_iptables_runs_as_root_with_two_capabilities_and_the_shared_lock(helm: _helm.Helm) -> None:
    daemonset = helm.template(values={"proxy": {"host": {"iptablesBackend": "legacy"}}}).get("DaemonSet")
    proxy = _helm.container(daemonset, "proxy")
    assert proxy["securityContext"]["runAsUser"] == 0
    assert proxy["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert proxy["securityContext"]["allowPrivilegeEscalation"] is False
    assert _helm.env_of(proxy)["PATH"].startswith("/opt/podiam/iptables-legacy:")
    assert {"name": "xtables-lock", "mountPath": "/run/xtables.lock"} in proxy["volumeMounts"]


def test_without_iptables_the_proxy_holds_no_capability(helm: _helm.Helm) -> None:
    proxy = _helm.container(helm.template(values={"proxy": {"host": {"iptables": False}}}).get("DaemonSet"), "proxy")
    assert proxy["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert proxy["securityContext"]["allowPrivilegeEscalation"] is False


def test_cleanup_iptables_runs_the_removal_on_every_node(helm: _helm.Helm) -> None:
    daemonset = helm.template(values={"proxy": {"host": {"iptables": False, "cleanupIptables": True}}}).get("DaemonSet")
    (init,) = daemonset["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == ["--remove-iptables-rules"]
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    assert _helm.env_of(_helm.container(daemonset, "proxy"))["PODIAM_PROXY_IPTABLES"] == "false"


def test_values_reach_the_environment(helm: _helm.Helm) -> None:
    rendered = helm.template(values={
        "operator": {"sessionDuration": 7200, "perPodSessions": True, "log": {"level": "warn"},
                     "sts": {"region": "ap-northeast-2"}, "baseRoleArn": "arn:aws:iam::123456789012:role/",
                     "extraEnv": {"PODIAM_STS_ATTEMPTS": 8}, "extraArgs": ["--failure-retry-max=120"],
                     "peering": {"enabled": False}, "replicas": 1},
        "proxy": {"allowRoutes": ["/latest/meta-data/instance-type/?"], "requireImdsv2": True,
                  "log": {"level": "WARN"}, "bindAddress": "0.0.0.0", "gatewayTimeoutCreation": "500ms",
                  "image": {"repository": "registry.example/podiam-proxy", "tag": "1.2.3", "pullPolicy": "Always"}},
    })
    env = _helm.env_of(_helm.container(rendered.get("Deployment"), "operator"))
    assert env["PODIAM_SESSION_DURATION"] == "7200" and env["PODIAM_PER_POD_SESSIONS"] == "true"
    assert env["PODIAM_LOG_LEVEL"] == "WARNING" and env["PODIAM_STS_REGION"] == "ap-northeast-2"
    assert env["PODIAM_BASE_ROLE_ARN"] == "arn:aws:iam::123456789012:role/"
    assert env["PODIAM_STS_ATTEMPTS"] == "8" and env["PODIAM_STANDALONE"] == "true"
    assert "PODIAM_PEERING_NAME" not in env and "ClusterKopfPeering" not in rendered.kinds()
    assert _helm.container(rendered.get("Deployment"), "operator")["args"] == ["--failure-retry-max=120"]
    proxy = _helm.container(rendered.get("DaemonSet"), "proxy")
    proxy_env = _helm.env_of(proxy)
    assert json.loads(proxy_env["PODIAM_PROXY_ALLOW_ROUTE"]) == ["/latest/meta-data/instance-type/?"]
    assert proxy_env["PODIAM_PROXY_REQUIRE_IMDSV2"] == "true" and proxy_env["PODIAM_PROXY_LOG_LEVEL"] == "warning"
    assert proxy_env["PODIAM_PROXY_BIND_ADDRESS"] == "0.0.0.0" and proxy_env["PODIAM_PROXY_CREDENTIAL_WAIT"] == "500ms"
    assert proxy["image"] == "registry.example/podiam-proxy:1.2.3" and proxy["imagePullPolicy"] == "Always"


def test_service_monitors(helm: _helm.Helm) -> None:
    rendered = helm.template(values={"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitors = [o for o in rendered.objects if o["kind"] == "ServiceMonitor"]
    assert len(monitors) == 2
    services = [o for o in rendered.objects if o["kind"] == "Service"]
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prom"
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        port = monitor["spec"]["endpoints"][0]["port"]
        assert port in [p["name"] for p in service["spec"]["ports"]]


def test_notes_tell_the_next_two_steps(helm: _helm.Helm) -> None:
    notes = helm.notes()
    assert "kubectl annotate namespace default iam.amazonaws.com/permitted='.*'" in notes
    assert "iam.amazonaws.com/role:" in notes
    assert "cleanupIptables=true" in notes  # the uninstall path for the iptables rule
    assert "The CRDs stay" in notes and "kubectl delete crd podrolebindings.podiam.io" in notes
    without_rule = helm.notes(values={"proxy": {"host": {"iptables": False}}})
    assert "cleanupIptables" not in without_rule and "The CRDs stay" in without_rule


# -- the operator's NetworkPolicy --------------------------------------------------------


def test_no_network_policy_by_default(helm: _helm.Helm) -> None:
    assert "NetworkPolicy" not in helm.template().kinds()


def test_the_network_policy_admits_the_scrapers_to_the_metrics_port_only(helm: _helm.Helm) -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    rendered = helm.template(values={"operator": {"networkPolicy": {"enabled": True, "metricsFrom": [prometheus]},
                                                  "ports": {"metrics": 9185}}})
    policy = rendered.get("NetworkPolicy")
    deployment = rendered.get("Deployment")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # the operator dials out: its egress is left alone
    # The webhook's port from anywhere: the API server calls it, from an address a NetworkPolicy cannot name.
    assert policy["spec"]["ingress"] == [{"from": [prometheus], "ports": [{"port": 9185, "protocol": "TCP"}]},
                                         {"ports": [{"port": 8187, "protocol": "TCP"}]}]
    # Nothing admits anyone to kopf's /healthz: the kubelet probes it from the node, which is always let through.
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"liveness": 8184, "metrics": 9185, "webhook": 8187}


def test_without_scrapers_the_network_policy_admits_no_pod(helm: _helm.Helm) -> None:
    values: dict[str, Any] = {"operator": {"networkPolicy": {"enabled": True}}}
    policy = helm.template(values=values).get("NetworkPolicy")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8187, "protocol": "TCP"}]}]  # the webhook's only
    values["containerCredentials"] = {"webhook": {"enabled": False}}
    assert helm.template(values=values).get("NetworkPolicy")["spec"]["ingress"] == []


# -- the container-credentials injection webhook ------------------------------------------


def test_the_webhook_is_registered_with_the_chosen_policy_and_served_by_the_operator(helm: _helm.Helm) -> None:
    rendered = helm.template()
    configuration = rendered.get("MutatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == "podiam-container-credentials"
    service = rendered.get("Service", "podiam-operator-webhook")
    deployment = rendered.get("Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    by_kind = {hook["name"]: hook for hook in configuration["webhooks"]}
    assert sorted(by_kind) == ["namespaces.container-credentials.podiam.io", "pods.container-credentials.podiam.io"]
    for hook in by_kind.values():
        assert hook["clientConfig"] == {"service": {"name": "podiam-operator-webhook", "namespace": "podiam-system",
                                                    "path": "/container-credentials", "port": 443}}  # caBundle: the operator's
        assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"], hook["reinvocationPolicy"]) == (
            "Ignore", "None", 5, "IfNeeded")
        assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                                  "scope": "Namespaced"}]
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["podiam-system", "kube-system"]} in \
            hook["namespaceSelector"]["matchExpressions"]
    label = "podiam.io/container-credentials"
    namespaces, pods = by_kind["namespaces.container-credentials.podiam.io"], by_kind["pods.container-credentials.podiam.io"]
    assert {"key": label, "operator": "In", "values": ["enabled"]} in namespaces["namespaceSelector"]["matchExpressions"]
    assert namespaces["objectSelector"] == {"matchExpressions": [{"key": label, "operator": "NotIn", "values": ["disabled"]}]}
    assert {"key": label, "operator": "NotIn", "values": ["enabled", "disabled"]} in pods["namespaceSelector"]["matchExpressions"]
    assert pods["objectSelector"] == {"matchLabels": {label: "enabled"}}

    operator = _helm.container(deployment, "operator")
    env = {item["name"]: item.get("value") for item in operator["env"]}
    assert {k: env[k] for k in env if "WEBHOOK" in k} == {
        "PODIAM_WEBHOOK_PORT": "8187", "PODIAM_WEBHOOK_CERT_FILE": "/var/run/podiam/webhook/tls.crt",
        "PODIAM_WEBHOOK_KEY_FILE": "/var/run/podiam/webhook/tls.key", "PODIAM_WEBHOOK_TOKEN_AUDIENCE": "pods.eks.amazonaws.com",
        "PODIAM_WEBHOOK_TOKEN_EXPIRATION": "86400", "PODIAM_TLS_WEBHOOK_SERVICE": "podiam-operator-webhook",
        "PODIAM_TLS_WEBHOOK_SECRET": "podiam-webhook-tls", "PODIAM_TLS_WEBHOOK_CONFIGURATION": "podiam-container-credentials"}
    assert {"name": "webhook-tls", "mountPath": "/var/run/podiam/webhook", "readOnly": False} in operator["volumeMounts"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-tls"] == {"name": "webhook-tls", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    proxy = _helm.container(rendered.get("DaemonSet"), "proxy")
    assert {"name": "PODIAM_PROXY_CONTAINER_CREDENTIALS_AUDIENCE", "value": "pods.eks.amazonaws.com"} in proxy["env"]

    # RBAC: its own configuration's caBundle and its own certificate's Secret, by name.
    rules = rendered.get("ClusterRole")["rules"]
    assert {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": ["podiam-container-credentials"], "verbs": ["get", "patch"]} in rules
    named = next(r for r in rendered.get("Role")["rules"] if r.get("resourceNames") and "secrets" in r["resources"])
    assert "podiam-webhook-tls" in named["resourceNames"]


def test_the_webhook_values(helm: _helm.Helm) -> None:
    rendered = helm.template(values={"containerCredentials": {"audience": "sts.example.com", "webhook": {
        "failurePolicy": "Fail", "timeoutSeconds": 3, "reinvocationPolicy": "Never", "excludeNamespaces": ["batch"],
        "tokenExpirationSeconds": 3600, "port": 9443}}, "operator": {"useHostNetwork": True}})
    for hook in rendered.get("MutatingWebhookConfiguration")["webhooks"]:
        assert (hook["failurePolicy"], hook["timeoutSeconds"], hook["reinvocationPolicy"]) == ("Fail", 3, "Never")
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["podiam-system", "kube-system", "batch"]} in \
            hook["namespaceSelector"]["matchExpressions"]
    env = {item["name"]: item.get("value") for item in _helm.container(rendered.get("Deployment"), "operator")["env"]}
    assert (env["PODIAM_WEBHOOK_PORT"], env["PODIAM_WEBHOOK_ADDRESS"]) == ("9443", "$(POD_IP)")  # the node's IP only
    assert (env["PODIAM_WEBHOOK_TOKEN_AUDIENCE"], env["PODIAM_WEBHOOK_TOKEN_EXPIRATION"]) == ("sts.example.com", "3600")
    proxy = _helm.container(rendered.get("DaemonSet"), "proxy")
    assert {"name": "PODIAM_PROXY_CONTAINER_CREDENTIALS_AUDIENCE", "value": "sts.example.com"} in proxy["env"]


def test_without_the_webhook_nothing_of_it_is_rendered(helm: _helm.Helm) -> None:
    rendered = helm.template(values={"containerCredentials": {"webhook": {"enabled": False}}})
    assert "MutatingWebhookConfiguration" not in rendered.kinds() and rendered.kinds().count("Service") == 2
    assert not any("admissionregistration.k8s.io" in r["apiGroups"] for r in rendered.get("ClusterRole")["rules"])
    env = {item["name"] for item in _helm.container(rendered.get("Deployment"), "operator")["env"]}
    assert not {name for name in env if "WEBHOOK" in name}


def test_secrets_mode_registers_the_webhook_with_your_certificate_and_ca_bundle_only(helm: _helm.Helm) -> None:
    # The guide's values (tls.mode=secrets) name no webhook certificate: no webhook, nothing to prepare.
    assert "MutatingWebhookConfiguration" not in helm.template(values_files=[GUIDE_VALUES]).kinds()
    bundle = "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ=="
    rendered = helm.template(values_files=[GUIDE_VALUES], values={"containerCredentials": {"webhook": {
        "tlsSecret": "podiam-webhook-cert", "caBundle": bundle}}})
    for hook in rendered.get("MutatingWebhookConfiguration")["webhooks"]:
        assert hook["clientConfig"]["caBundle"] == bundle
    deployment = rendered.get("Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == "podiam-webhook-cert"
    env = {item["name"] for item in _helm.container(deployment, "operator")["env"]}
    assert "PODIAM_WEBHOOK_PORT" in env and "PODIAM_TLS_WEBHOOK_SERVICE" not in env  # the operator issues nothing
    assert not any("admissionregistration.k8s.io" in r["apiGroups"] for r in rendered.get("ClusterRole")["rules"])


# -- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"proxy": {"host": {"iptables": "yes"}}}, "at '/proxy/host/iptables': got string, want boolean"),
    ({"proxy": {"host": {"interface": "eth0; reboot"}}}, "/proxy/host/interface"),
    ({"proxy": {"host": {"iptablesBackend": "auto"}}}, "/proxy/host/iptablesBackend"),
    ({"proxy": {"gatewayTimeoutCreation": "soon"}}, "/proxy/gatewayTimeoutCreation"),
    ({"proxy": {"log": {"level": "verbose"}}}, "/proxy/log/level"),
    ({"proxy": {"tlsCerts": {"certFileName": "../agent.pem"}}}, "/proxy/tlsCerts/certFileName"),
    ({"proxy": {"extraHostPathMounts": [{"name": "x", "hostPath": "relative", "mountPath": "/x"}]}}, "/proxy/extraHostPathMounts/0/hostPath"),
    ({"operator": {"sessionDuration": 600}}, "/operator/sessionDuration"),
    ({"operator": {"assumeRoleArn": "kiam-server"}}, "/operator/assumeRoleArn"),
    ({"operator": {"extraEnv": {"BAD-NAME": "x"}}}, "invalid propertyName 'BAD-NAME'"),
    ({"tls": {"mode": "manual"}}, "/tls/mode"),
    ({"operator": {"replicaz": 2}}, "additional properties 'replicaz' not allowed"),
    ({"operator": {"nodeIdentity": "yes"}}, "/operator/nodeIdentity"),
    ({"operator": {"credentialsSecret": "My_Keys"}}, "/operator/credentialsSecret"),
    ({"proxy": {"host": {"interceptionCheck": "off"}}}, "/proxy/host/interceptionCheck"),
    ({"operator": {"networkPolicy": {"enabled": "yes"}}}, "/operator/networkPolicy/enabled"),
    ({"operator": {"networkPolicy": {"metricsFrom": [{}]}}}, "/operator/networkPolicy/metricsFrom/0"),
    ({"operator": {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabelz": {}}}]}}},
     "additional properties 'matchLabelz' not allowed"),
    ({"operator": {"networkPolicy": {"metricsFrom": [{"ipBlock": {"cidr": "everyone"}}]}}},
     "/operator/networkPolicy/metricsFrom/0/ipBlock/cidr"),
    ({"containerCredentials": {"webhook": {"failurePolicy": "Open"}}}, "/containerCredentials/webhook/failurePolicy"),
    ({"containerCredentials": {"webhook": {"timeoutSeconds": 60}}}, "/containerCredentials/webhook/timeoutSeconds"),
    ({"containerCredentials": {"webhook": {"tokenExpirationSeconds": 60}}}, "/containerCredentials/webhook/tokenExpirationSeconds"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else "")
def test_schema_rejects_bad_values(helm: _helm.Helm, values: dict[str, Any], message: str) -> None:
    with pytest.raises(_helm.HelmError) as error:
        helm.template(values=values)
    assert "don't meet the specifications of the schema" in error.value.output
    assert message in error.value.output


@pytest.mark.parametrize(("values", "message"), [
    ({"tls": {"mode": "secrets"}}, "tls.mode=secrets needs operator.tlsSecret (the guide's kiam-server-tls) and proxy.tlsSecret"),
    ({"proxy": {"tlsSecret": "kiam-agent-tls"}}, "used only with tls.mode=secrets"),
    ({"proxy": {"host": {"cleanupIptables": True}}}, "set proxy.host.iptables=false with it"),
    ({"operator": {"peering": {"enabled": False}}}, "keep peering on or use 1 replica"),
    ({"proxy": {"controlPort": 8181}}, "must differ"),
    ({"operator": {"useHostNetwork": True, "ports": {"metrics": 8183}}},
     "operator.ports.metrics (8183) is also a proxy port (proxy.host.port, proxy.controlPort, proxy.healthPort)"),
    ({"agent": {"host": {"interface": "!eth0"}}}, "this values file is Kiam's: podiam calls agent: proxy:"),
    ({"operator": {"useHostNetwork": True, "networkPolicy": {"enabled": True}}},
     "operator.networkPolicy cannot protect the operator on the host network"),
    ({"tls": {"mode": "secrets"}, "operator": {"tlsSecret": "a"}, "proxy": {"tlsSecret": "b"},
      "containerCredentials": {"webhook": {"tlsSecret": "c"}}}, "containerCredentials.webhook.tlsSecret needs containerCredentials.webhook.caBundle"),
    ({"containerCredentials": {"webhook": {"port": 8185}}}, "containerCredentials.webhook.port must differ"),
    ({"operator": {"useHostNetwork": True}, "containerCredentials": {"webhook": {"port": 8186}}},
     "containerCredentials.webhook.port (8186) is also a proxy port"),
], ids=["secrets-without-secrets", "secret-in-auto-mode", "cleanup-with-iptables", "replicas-without-peering", "ports",
        "host-network-ports", "kiam-file", "network-policy-on-host-network", "webhook-secret-without-ca-bundle",
        "webhook-port", "webhook-port-on-host-network"])
def test_template_explains_inconsistent_values(helm: _helm.Helm, values: dict[str, Any], message: str) -> None:
    with pytest.raises(_helm.HelmError) as error:
        helm.template(values=values)
    assert message in error.value.output


def test_the_guides_kiam_file_verbatim_is_refused_with_a_pointer(helm: _helm.Helm, tmp_path: Path) -> None:
    guide = {
        "agent": {"tlsSecret": "kiam-agent-tls", "log": {"level": "debug"}, "gatewayTimeoutCreation": "1s",
                  "host": {"interface": "!eth0", "iptables": True}},
        "server": {"assumeRoleArn": "arn:aws:iam::123456789012:role/kiam-server", "tlsSecret": "kiam-server-tls",
                   "useHostNetwork": True},
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(guide))
    with pytest.raises(_helm.HelmError) as error:
        helm.template(values_files=[path])
    assert "migration table in the README" in error.value.output


def test_every_value_is_in_the_schema() -> None:
    """values.yaml and values.schema.json describe the same keys (the schema forbids unknown ones)."""
    values = yaml.safe_load((_helm.CHART / "values.yaml").read_text())
    schema = json.loads((_helm.CHART / "values.schema.json").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(value, dict) or node.get("additionalProperties") is not False:
            return
        for key, child in value.items():
            assert key in node["properties"], f"{path}.{key} is in values.yaml but not in values.schema.json"
            walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
