"""The local cluster's real nodes do what podiam needs of a node: the scheduler
places pods and honours taints, containers of every image run, ``kubectl
logs``/``exec`` work, pods reach each other, the API server through the
``kubernetes`` Service, and their node's 169.254.169.254."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from localcluster.controlplane import cluster as clusters
from localcluster.controlplane import network
from localcluster import pods

pytestmark = pytest.mark.e2e

GET = textwrap.dedent("""
    import sys, urllib.request
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
            print(r.status, r.read().decode())
    except Exception as e:
        print("error", type(e).__name__, getattr(e, "code", ""), e)
""")


def _image(cluster: clusters.Cluster, name: str) -> str:
    return cluster.images[name].ref


def _get(cluster: clusters.Cluster, ns: str, pod: str, url: str) -> str:
    return pods.exec_in(cluster.plane, ns, pod, "python3", "-c", GET, url).strip()


def test_nodes_are_ready_in_their_own_namespaces(real_cluster: clusters.Cluster) -> None:
    listed = real_cluster.plane.api("GET", "/api/v1/nodes")["items"]
    by_name = {n["metadata"]["name"]: n for n in listed}
    assert set(by_name) >= {"node-0", "node-1"}
    for name in ("node-0", "node-1"):
        member = real_cluster.nodes[name]
        addresses = {a["type"]: a["address"] for a in by_name[name]["status"]["addresses"]}
        assert addresses["InternalIP"] == member.ip
        assert by_name[name]["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        assert network.default_route(member.netns) == "", "a node has a way off this machine"
    assert network.forwarding() == "0"


def test_a_pod_of_every_image_runs_and_logs(real_cluster: clusters.Cluster, ns: str) -> None:
    plane = real_cluster.plane
    cases = {
        "python-base": (["python3", "-c", "import ssl; print('python', ssl.OPENSSL_VERSION)"], [], "python OpenSSL"),
        "podiam-proxy": ([], ["--help"], "usage: podiam-proxy"),
        "podiam-operator": ([], ["--help"], "usage: podiam-operator"),
        "aws-cli": (["aws", "--version"], [], "aws-cli/"),
    }
    for image, (command, args, _) in cases.items():
        pods.create(plane, ns, pods.pod(image, _image(real_cluster, image), command, args=args))
    for image, (_, _, expected) in cases.items():
        done = pods.wait_phase(plane, ns, image, ("Succeeded",))
        assert done["spec"]["nodeName"] in real_cluster.nodes
        # kubectl logs: the API server reaches the kubelet with its client certificate.
        logs = plane.kubectl("logs", "-n", ns, image)
        assert expected in logs, f"{image}: {logs!r}"


def test_the_scheduler_places_pods_and_honours_taints(real_cluster: clusters.Cluster, ns: str) -> None:
    plane = real_cluster.plane
    taint = "podiam.io/e2e-keep-off=true:NoSchedule"
    plane.kubectl("taint", "node", "node-1", taint)
    try:
        for i in range(4):
            pods.create(plane, ns, pods.sleeper(f"spread-{i}", _image(real_cluster, "python-base")))
        placed = {pods.wait_phase(plane, ns, f"spread-{i}")["spec"]["nodeName"] for i in range(4)}
        assert placed == {"node-0"}, "the tainted node got pods"
        scheduled = [e for e in pods.events(plane, ns, "spread-0") if e["reason"] == "Scheduled"]
        assert scheduled and (scheduled[0].get("reportingComponent") or scheduled[0]["source"].get("component")) == "default-scheduler"

        pods.create(plane, ns, pods.sleeper("wants-node-1", _image(real_cluster, "python-base"), node="node-1"))

        def refused() -> bool:
            return any(e["reason"] == "FailedScheduling" and "untolerated taint" in e["message"]
                       for e in pods.events(plane, ns, "wants-node-1"))

        pods.controlplane.wait_until(refused, 30, "FailedScheduling for the tainted node")
        assert pods.get(plane, ns, "wants-node-1")["status"]["phase"] == "Pending"
    finally:
        plane.kubectl("taint", "node", "node-1", f"{taint.split(':')[0].split('=')[0]}-", check=False)
    assert pods.wait_phase(plane, ns, "wants-node-1")["spec"]["nodeName"] == "node-1"


def test_exec_pod_to_pod_and_the_kubernetes_service(real_cluster: clusters.Cluster, ns: str) -> None:
    plane = real_cluster.plane
    base = _image(real_cluster, "python-base")
    pods.create(plane, ns, pods.pod("server", base, ["python3", "-m", "http.server", "8080"], restart="Always", node="node-1"))
    pods.create(plane, ns, pods.sleeper("client", base, node="node-0"))
    server = pods.wait_ready(plane, ns, "server")
    pods.wait_ready(plane, ns, "client")
    assert pods.exec_in(plane, ns, "client", "cat", "/etc/hostname").strip() == "client"

    # Across nodes: node-0's pod to node-1's pod, routed by the nodes (the CNI bridge turned forwarding on
    # in each node's namespace with its first pod; never in the root namespace).
    answer = _get(real_cluster, ns, "client", f"http://{server['status']['podIP']}:8080/")
    assert answer.startswith("200"), answer
    assert [network.forwarding(real_cluster.nodes[n].netns) for n in ("node-0", "node-1")] == ["1", "1"]
    assert network.forwarding() == "0"
    # The root namespace reaches pods through their node (as the API server does a webhook's pod).
    with urllib.request.urlopen(f"http://{server['status']['podIP']}:8080/", timeout=5) as answer_from_root:
        assert answer_from_root.status == 200

    # The kubernetes Service, with the pod's own ServiceAccount token, as an in-cluster client does.
    whoami = textwrap.dedent("""
        import json, ssl, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
        req = urllib.request.Request("https://kubernetes.default.svc:443/apis/authentication.k8s.io/v1/selfsubjectreviews",
            data=b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}', method="POST",
            headers={"Authorization": "Bearer " + open(sa + "/token").read(), "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            print(json.load(r)["status"]["userInfo"]["username"])
    """).replace("kubernetes.default.svc", network.KUBERNETES_SERVICE_IP).replace(
        f"https://{network.KUBERNETES_SERVICE_IP}:443", f"https://{network.KUBERNETES_SERVICE_IP}")
    assert pods.exec_in(plane, ns, "client", "python3", "-c", whoami).strip() == f"system:serviceaccount:{ns}:default"


def test_a_pods_metadata_traffic_reaches_its_own_node(real_cluster: clusters.Cluster, ns: str) -> None:
    """Without interception a pod reaches its own node's metadata service (the node role); with a DNAT rule
    on the pods' interface, a listener on that same node."""
    plane = real_cluster.plane
    base = _image(real_cluster, "python-base")
    for name in ("node-0", "node-1"):
        pods.create(plane, ns, pods.sleeper(f"on-{name}", base, node=name))
    ips = {name: pods.wait_ready(plane, ns, f"on-{name}")["status"]["podIP"] for name in ("node-0", "node-1")}

    for name in ("node-0", "node-1"):
        answer = _get(real_cluster, ns, f"on-{name}", "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
        assert answer == f"200 {clusters.NODE_ROLE_NAME}"
        sources = {r["source"] for r in real_cluster.nodes[name].metadata_requests()}
        assert ips[name] in sources, "the request did not reach this pod's own node"
        other = "node-1" if name == "node-0" else "node-0"
        assert ips[name] not in {r["source"] for r in real_cluster.nodes[other].metadata_requests()}

    listeners = []
    rule = ["-i", network.POD_BRIDGE, "-d", f"{network.METADATA_ADDRESS}/32", "-p", "tcp", "--dport", "80", "-j", "DNAT"]
    try:
        for name, member in real_cluster.nodes.items():
            if name not in ips:
                continue
            code = (f"import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n"
                    f"  def do_GET(s):\n    s.send_response(200); s.end_headers(); s.wfile.write(b'listener on {name}')\n"
                    f"h.HTTPServer(('{member.ip}', 18181), H).serve_forever()\n")
            listeners.append(subprocess.Popen(["nsenter", f"--net={network.NETNS_DIR / member.netns}", sys.executable, "-c", code]))
            member.exec("iptables", "-w", "5", "-t", "nat", "-I", "PREROUTING", *rule, "--to-destination", f"{member.ip}:18181")
        time.sleep(0.5)
        for name in ("node-0", "node-1"):
            assert _get(real_cluster, ns, f"on-{name}", "http://169.254.169.254/latest/") == f"200 listener on {name}"
    finally:
        for member in real_cluster.nodes.values():
            member.exec("iptables", "-w", "5", "-t", "nat", "-D", "PREROUTING", *rule, "--to-destination",
                        f"{member.ip}:18181", check=False)
        for listener in listeners:
            listener.kill()
            listener.wait()


def test_a_host_network_pod_gets_the_node_role(real_cluster: clusters.Cluster, ns: str, moto_server: object) -> None:
    """As on EKS: a host-network pod's 169.254.169.254 is the node's, and the AWS CLI gets the node role from it."""
    plane = real_cluster.plane
    sts = real_cluster.url(real_cluster.sts_endpoint or "")
    pods.create(plane, ns, pods.pod("host", _image(real_cluster, "aws-cli"), ["aws", "sts", "get-caller-identity"],
                                    host_network=True, node="node-1",
                                    env={"AWS_ENDPOINT_URL_STS": sts, "AWS_DEFAULT_REGION": "us-east-1"}))
    pods.wait_phase(plane, ns, "host", ("Succeeded",))
    identity = json.loads(plane.kubectl("logs", "-n", ns, "host"))
    assert f":assumed-role/{clusters.NODE_ROLE_NAME}/i-node-1" in identity["Arn"]
    # The request came from the node's own address, inside node-1.
    assert real_cluster.nodes["node-1"].ip in {r["source"] for r in real_cluster.nodes["node-1"].metadata_requests()
                                              if r["credentials"]}
