"""The harness behaves as a real cluster: every test here talks to the real
kube-apiserver (and kube-controller-manager) through kubectl or HTTPS."""

from __future__ import annotations

import json
import textwrap
import threading
import time
import uuid

import pytest

from localcluster.controlplane import ApiError, ControlPlane, KubectlError, kubelet, wait_until

pytestmark = pytest.mark.integration


def _gone(cp: ControlPlane, path: str) -> bool:
    try:
        cp.api("GET", path)
    except ApiError as error:
        return error.status == 404
    return False


def test_kubectl_get_namespaces(controlplane: ControlPlane) -> None:
    names = controlplane.kubectl("get", "ns", "-o", "name").split()
    assert {"namespace/default", "namespace/kube-system", "namespace/kube-public"} <= set(names)
    version = json.loads(controlplane.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert "master" not in version["serverVersion"]["gitVersion"]


def test_openapi_is_served_and_kubectl_apply_works(controlplane: ControlPlane, namespace: str) -> None:
    # A jsonv2-built apiserver serves OpenAPI kubectl cannot decode; both versions must parse.
    v2 = controlplane.api("GET", "/openapi/v2")
    assert v2["swagger"] == "2.0" and "io.k8s.api.core.v1.Pod" in v2["definitions"]
    v3_index = controlplane.api("GET", "/openapi/v3")
    apps = controlplane.api("GET", "/" + v3_index["paths"]["apis/apps/v1"]["serverRelativeURL"].lstrip("/"))
    assert "io.k8s.api.apps.v1.Deployment" in apps["components"]["schemas"]

    manifest = textwrap.dedent(f"""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: settings
          namespace: {namespace}
        data:
          colour: blue
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
          namespace: {namespace}
        spec:
          replicas: 1
          selector:
            matchLabels: {{app: web}}
          template:
            metadata:
              labels: {{app: web}}
            spec:
              containers:
              - name: web
                image: nginx:1.27
        """)
    out = controlplane.kubectl("apply", "-f", "-", input=manifest)
    assert "configmap/settings created" in out and "deployment.apps/web created" in out
    # Re-applying a changed manifest exercises the client-side three-way merge.
    out = controlplane.kubectl("apply", "-f", "-", input=manifest.replace("blue", "green"))
    assert "configmap/settings configured" in out and "deployment.apps/web unchanged" in out
    data = controlplane.api("GET", f"/api/v1/namespaces/{namespace}/configmaps/settings")["data"]
    assert data == {"colour": "green"}
    # Strict field validation rejects an unknown field.
    strict = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: strict, namespace: {namespace}}}\nbogus: 1\n"
    with pytest.raises(KubectlError, match="unknown field"):
        controlplane.kubectl("apply", "--validate=strict", "-f", "-", input=strict)
    # The deployment and replicaset controllers run: the Deployment makes a pod (Pending, no scheduler).
    wait_until(lambda: controlplane.api("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Dweb")["items"],
               30, "the Deployment's pod")


def test_owner_deleted_dependent_is_garbage_collected(controlplane: ControlPlane, namespace: str) -> None:
    owner = controlplane.api("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                             {"metadata": {"name": "owner"}, "data": {}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    controlplane.api("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                     {"metadata": {"name": "dependent", "ownerReferences": [reference]}, "data": {}})
    controlplane.api("POST", f"/api/v1/namespaces/{namespace}/secrets",
                     {"metadata": {"name": "dependent-secret", "ownerReferences": [reference]}})
    controlplane.api("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/owner")
    wait_until(lambda: _gone(controlplane, f"/api/v1/namespaces/{namespace}/configmaps/dependent"), 30, "dependent collected")
    wait_until(lambda: _gone(controlplane, f"/api/v1/namespaces/{namespace}/secrets/dependent-secret"), 30, "secret collected")


def test_dependent_of_a_deleted_owner_created_later_is_collected(controlplane: ControlPlane, namespace: str) -> None:
    """An ownerReference to an owner that no longer exists (or never did) is collected too."""
    reference = {"apiVersion": "v1", "kind": "Pod", "name": "gone", "uid": str(uuid.uuid4())}
    controlplane.api("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                     {"metadata": {"name": "orphan", "ownerReferences": [reference]}, "data": {}})
    wait_until(lambda: _gone(controlplane, f"/api/v1/namespaces/{namespace}/configmaps/orphan"), 30, "orphan collected")


def test_deleted_namespace_goes_away(controlplane: ControlPlane) -> None:
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    controlplane.create_namespace(name)
    controlplane.api("POST", f"/api/v1/namespaces/{name}/configmaps", {"metadata": {"name": "content"}, "data": {}})
    controlplane.kubectl("delete", "namespace", name, "--wait=false")
    wait_until(lambda: _gone(controlplane, f"/api/v1/namespaces/{name}"), 60, f"namespace {name} deleted")


CRD = textwrap.dedent("""\
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.harness.podiam.io
    spec:
      group: harness.podiam.io
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
      versions:
      - name: v1
        served: true
        storage: true
        subresources: {status: {}}
        additionalPrinterColumns:
        - {name: Role, type: string, jsonPath: .spec.role}
        - {name: Phase, type: string, jsonPath: .status.phase}
        - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                required: [role]
                properties:
                  role: {type: string, pattern: '^[A-Za-z0-9+=,.@_/-]+$'}
                  replicas: {type: integer, minimum: 1}
              status:
                type: object
                properties:
                  phase: {type: string, enum: [Pending, Bound, Denied]}
    """)


@pytest.fixture(scope="module")
def widget_crd(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> str:
    manifest = tmp_path_factory.mktemp("crd") / "widgets.yaml"
    manifest.write_text(CRD)
    controlplane.install_crds(manifest)
    return "widgets.harness.podiam.io"


def test_crd_with_status_subresource_printer_columns_and_validation(
    controlplane: ControlPlane, namespace: str, widget_crd: str
) -> None:
    good = f"apiVersion: harness.podiam.io/v1\nkind: Widget\nmetadata: {{name: good, namespace: {namespace}}}\nspec: {{role: reader}}\n"
    assert "widget.harness.podiam.io/good created" in controlplane.kubectl("apply", "-f", "-", input=good)

    bad = good.replace("name: good", "name: bad").replace("role: reader", "role: 'no spaces allowed', replicas: 0")
    with pytest.raises(KubectlError) as rejected:
        controlplane.kubectl("apply", "-f", "-", input=bad)
    assert "spec.role" in rejected.value.stderr and "spec.replicas" in rejected.value.stderr
    missing = good.replace("name: good", "name: empty").replace("spec: {role: reader}", "spec: {}")
    with pytest.raises(KubectlError, match="spec.role: Required value"):
        controlplane.kubectl("apply", "-f", "-", input=missing)

    path = f"/apis/harness.podiam.io/v1/namespaces/{namespace}/widgets/good"
    # The status subresource: status changes through /status only, and are validated there too.
    controlplane.api("PATCH", path, {"status": {"phase": "Bound"}})
    assert "status" not in controlplane.api("GET", path)
    controlplane.api("PATCH", path + "/status", {"status": {"phase": "Bound"}})
    assert controlplane.api("GET", path)["status"] == {"phase": "Bound"}
    with pytest.raises(ApiError) as invalid:
        controlplane.api("PATCH", path + "/status", {"status": {"phase": "Bogus"}})
    assert invalid.value.status == 422

    table = controlplane.kubectl("get", "wg", "-n", namespace).splitlines()
    assert table[0].split() == ["NAME", "ROLE", "PHASE", "AGE"]
    assert table[1].split()[:3] == ["good", "reader", "Bound"]


def test_garbage_collector_handles_custom_resources(
    controlplane: ControlPlane, namespace: str, widget_crd: str
) -> None:
    """A custom resource owned by a pod goes with the pod, as a PodRoleBinding must."""
    pod = controlplane.api("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "metadata": {"name": "owner-pod"}, "spec": {"containers": [{"name": "app", "image": "busybox"}]}})
    reference = {"apiVersion": "v1", "kind": "Pod", "name": "owner-pod", "uid": pod["metadata"]["uid"]}
    path = f"/apis/harness.podiam.io/v1/namespaces/{namespace}/widgets"
    controlplane.api("POST", path, {"apiVersion": "harness.podiam.io/v1", "kind": "Widget",
                                    "metadata": {"name": "owned", "ownerReferences": [reference]},
                                    "spec": {"role": "reader"}})
    assert kubelet.delete_pod(controlplane, namespace, "owner-pod")
    # install_crds restarted the controller manager, so the collector watches
    # widgets already (otherwise its 30 s rediscovery could delay this).
    began = time.monotonic()
    wait_until(lambda: _gone(controlplane, f"{path}/owned"), 60, "custom resource collected")
    assert time.monotonic() - began < 15


def test_service_account_token_rbac(controlplane: ControlPlane, namespace: str) -> None:
    controlplane.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "reader"}})
    role = f"pod-reader-{namespace}"
    controlplane.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "metadata": {"name": role},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]})
    controlplane.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    try:
        kubeconfig = controlplane.kubeconfig_for_service_account(namespace, "reader")
        # RBAC bindings take effect through the authorizer's informers: allow a moment.
        wait_until(lambda: controlplane.kubectl("get", "pods", "-A", kubeconfig=kubeconfig) is not None, 10, "pods listable")
        assert controlplane.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                                    kubeconfig=kubeconfig) == f"system:serviceaccount:{namespace}:reader"
        with pytest.raises(KubectlError) as denied:
            controlplane.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig)
        assert "Forbidden" in denied.value.stderr
        token = controlplane.service_account_token(namespace, "reader")
        as_reader = controlplane.client_for_token(token)
        assert as_reader.request("GET", f"/api/v1/namespaces/{namespace}/pods")["kind"] == "PodList"
        with pytest.raises(ApiError) as forbidden:
            as_reader.request("GET", f"/api/v1/namespaces/{namespace}/secrets")
        assert forbidden.value.status == 403
        # An unknown token is not authenticated at all.
        with pytest.raises(ApiError) as unauthenticated:
            controlplane.client_for_token(token[:-4] + "AAAA").request("GET", "/api/v1/pods")
        assert unauthenticated.value.status == 401
    finally:
        controlplane.api("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{role}")
        controlplane.api("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}")


def test_kubelet_standins_pod_status_shows_ip(controlplane: ControlPlane, namespace: str) -> None:
    node = f"node-{uuid.uuid4().hex[:6]}"
    created = kubelet.create_node(controlplane, node, "127.0.10.1", taints=["podiam.io/agent-not-ready:NoSchedule"],
                                  labels={"role": "worker"})
    assert created["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.10.1"}
    ready = [c for c in created["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert controlplane.api("GET", f"/api/v1/nodes/{node}")["spec"]["taints"][0]["key"] == "podiam.io/agent-not-ready"
    kubelet.set_node_ready(controlplane, node, False)
    assert controlplane.kubectl("get", "node", node, "--no-headers").split()[1] == "NotReady"
    kubelet.set_node_ready(controlplane, node, True)
    assert controlplane.kubectl("get", "node", node, "--no-headers").split()[1] == "Ready"
    try:
        controlplane.api("POST", f"/api/v1/namespaces/{namespace}/pods", {
            "metadata": {"name": "app"}, "spec": {"containers": [{"name": "app", "image": "busybox"}]}})
        kubelet.bind_pod(controlplane, namespace, "app", node)
        pod = kubelet.set_pod_status(controlplane, namespace, "app", pod_ip="10.244.1.7")
        assert pod["status"]["podIP"] == "10.244.1.7" and pod["status"]["hostIP"] == "127.0.10.1"
        assert pod["status"]["phase"] == "Running"

        wide = controlplane.kubectl("get", "pods", "-o", "wide", "-n", namespace).splitlines()
        header, row = wide[0].split(), wide[1].split()
        assert row[header.index("NAME")] == "app"
        assert row[header.index("READY")] == "1/1"
        assert row[header.index("STATUS")] == "Running"
        assert row[header.index("IP")] == "10.244.1.7"
        assert row[header.index("NODE")] == node
        # kubectl wait sees the Ready condition a kubelet would set.
        controlplane.kubectl("wait", "--for=condition=Ready", "pod/app", "-n", namespace, "--timeout=5s")

        # Deleted with a grace period and no kubelet, a bound pod stays Terminating...
        assert kubelet.delete_pod(controlplane, namespace, "app", grace_period=30)
        terminating = controlplane.api("GET", f"/api/v1/namespaces/{namespace}/pods/app")
        assert terminating["metadata"]["deletionTimestamp"]
        # ... until the kubelet's final delete.
        assert kubelet.delete_pod(controlplane, namespace, "app")
        wait_until(lambda: _gone(controlplane, f"/api/v1/namespaces/{namespace}/pods/app"), 10, "pod gone")
        assert not kubelet.delete_pod(controlplane, namespace, "app")
    finally:
        controlplane.api("DELETE", f"/api/v1/nodes/{node}")


def test_restart_apiserver_keeps_data(controlplane: ControlPlane, namespace: str) -> None:
    controlplane.api("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                     {"metadata": {"name": "survivor"}, "data": {"k": "v"}})
    server = controlplane.server
    controlplane.stop_apiserver()
    with pytest.raises(OSError):
        controlplane.api("GET", "/readyz", timeout=2)
    # From a thread that then ends, as asyncio.to_thread would: the new
    # apiserver must not die with that thread (PR_SET_PDEATHSIG is per thread).
    starter = threading.Thread(target=controlplane.start_apiserver)
    starter.start()
    starter.join()
    time.sleep(0.5)
    assert controlplane.running()["kube-apiserver"]
    assert controlplane.server == server
    assert controlplane.api("GET", f"/api/v1/namespaces/{namespace}/configmaps/survivor")["data"] == {"k": "v"}
    # The controller manager reconnects: a new namespace still gets its ServiceAccount.
    name = f"after-restart-{uuid.uuid4().hex[:6]}"
    controlplane.create_namespace(name)
    controlplane.api("DELETE", f"/api/v1/namespaces/{name}")
