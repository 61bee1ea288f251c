"""The CNI result cache as the pod-IP reader sees it: which pod each file says an IP was set up for."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from metadata_proxy import _cni

pytestmark = pytest.mark.unit

ANY = re.compile(".*")


def cached(ip: str = "10.244.0.7", uid: str = "uid-a", *, namespace: str = "team", name: str = "app",
           network: str = "cbr0", interface: str = "eth0", result: dict[str, Any] | None = None) -> str:
    """One file as libcni writes it (kind cniCacheV1), for a CNI 1.0 result unless ``result`` says otherwise."""
    return json.dumps({
        "kind": "cniCacheV1", "containerId": "c0ffee", "config": "e30=", "ifName": interface, "networkName": network,
        "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", namespace], ["K8S_POD_NAME", name],
                    ["K8S_POD_INFRA_CONTAINER_ID", "c0ffee"], ["K8S_POD_UID", uid]],
        "capabilityArgs": {"io.kubernetes.cri.pod-annotations": {"secret-looking": "never passed on"}},
        "result": result or {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
                             "ips": [{"address": f"{ip}/24", "gateway": "10.244.0.1", "interface": 0}]},
    })


def test_a_result_names_the_pod_it_was_set_up_for() -> None:
    (claim,) = _cni.parse(cached(), 12.5, ANY)
    assert claim == _cni.Claim(ip="10.244.0.7", uid="uid-a", namespace="team", name="app", network="cbr0", written=12.5)


@pytest.mark.parametrize("result,ips", [
    ({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.2.3/16"}, {"address": "fd00::5/64"}]},
     ["10.1.2.3", "fd00::5"]),
    ({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.2.3/16"}, "ip6": {"ip": "FD00:0::5/64"}}, ["10.1.2.3", "fd00::5"]),
    ({"cniVersion": "0.3.1", "ips": [{"address": "127.0.0.1/8"}, {"address": "::1/128"}]}, []),  # the loopback network
    ({"cniVersion": "1.0.0", "ips": [{"address": "169.254.1.1/32"}, {"address": "fe80::1/64"}, {"address": "0.0.0.0/0"}]}, []),
    ({"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}, {"address": 7}, "junk"]}, []),
])
def test_every_result_version_and_only_real_addresses(result: dict[str, Any], ips: list[str]) -> None:
    assert [claim.ip for claim in _cni.parse(cached(result=result), 1.0, ANY)] == ips


@pytest.mark.parametrize("text", [
    "not json", "[]", json.dumps({"kind": "cniCacheV1"}),
    cached().replace('["K8S_POD_UID", "uid-a"]', '["K8S_POD_UID", ""]'),
    cached().replace('["K8S_POD_NAME", "app"], ', ""),  # a runtime that passes no pod name: nothing to check it against
])
def test_anything_else_names_nobody(text: str) -> None:
    assert _cni.parse(text, 1.0, ANY) == []


def test_only_the_networks_asked_for() -> None:
    primary = re.compile("cbr0")
    assert _cni.parse(cached(network="cbr0"), 1.0, primary)
    assert _cni.parse(cached(network="macvlan-storage"), 1.0, primary) == []
    assert _cni.parse(cached(network="cbr0-extra"), 1.0, primary) == []  # the whole name


def write(folder: Path, name: str, text: str, mtime: float) -> Path:
    path = folder / name
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


def test_the_folder_oldest_first_and_reread_when_a_file_changes(tmp_path: Path) -> None:
    results = _cni.Results(tmp_path, ".*")
    write(tmp_path, "cbr0-new-eth0", cached(uid="new"), 2000.0)
    write(tmp_path, "cbr0-old-eth0", cached(uid="old"), 1000.0)
    write(tmp_path, "cbr0-other-eth0", cached(ip="10.244.0.8", uid="other"), 1500.0)
    assert [(c.uid, c.written) for c in results.claims("10.244.0.7")] == [("old", 1000.0), ("new", 2000.0)]
    write(tmp_path, "cbr0-old-eth0", cached(ip="10.244.0.9", uid="old"), 3000.0)  # rewritten for another IP
    (tmp_path / "cbr0-new-eth0").unlink()  # torn down
    assert results.claims("10.244.0.7") == []
    assert [c.uid for c in results.claims("10.244.0.9")] == ["old"]


def test_a_missing_folder_and_what_is_not_a_result_file(tmp_path: Path) -> None:
    assert _cni.Results(tmp_path / "none-yet", ".*").claims("10.244.0.7") == []
    (tmp_path / "a-folder").mkdir()
    write(tmp_path, "huge", " " * (_cni.MAX_FILE + 1), 1.0)
    (tmp_path / "link").symlink_to(write(tmp_path.parent, "elsewhere", cached(), 1.0))
    assert _cni.Results(tmp_path, ".*").claims("10.244.0.7") == []
