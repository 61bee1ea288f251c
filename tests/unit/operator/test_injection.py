"""What the injection webhook adds to a pod (pure), and the patch kopf makes of it for the API server."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import kopf
import pytest

from podiam_operator._core import injection

pytestmark = pytest.mark.unit

AUDIENCE = "pods.eks.amazonaws.com"
TOKEN_PATH = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"
ENV = [{"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
       {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": TOKEN_PATH}]
MOUNT = {"name": "eks-pod-identity-token", "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount", "readOnly": True}
VOLUME = {"name": "eks-pod-identity-token", "projected": {"sources": [
    {"serviceAccountToken": {"audience": AUDIENCE, "expirationSeconds": 86400, "path": "eks-pod-identity-token"}}]}}


def pod(*containers: dict[str, Any], labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "labels": labels or {}},
            "spec": {"containers": list(containers), **spec}}


def applied(body: dict[str, Any]) -> dict[str, Any]:
    """The pod after the webhook: the fields through kopf's Patch, as JSONPatch ops applied like the API server."""
    fields = injection.for_pod(body, audience=AUDIENCE, expiration=86400)
    patch = kopf.Patch(body=kopf.Body(body))
    for key, value in (fields or {}).items():
        patch.spec[key] = value
    ops = patch.as_json_patch()
    result: dict[str, Any] = jsonpatch.apply_patch(body, ops)
    return result


def test_every_container_gets_the_two_variables_and_the_mount_and_the_pod_the_projected_token() -> None:
    body = pod({"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}]}, {"name": "side", "image": "y"},
               initContainers=[{"name": "init", "image": "z"}], volumes=[{"name": "data", "emptyDir": {}}])
    after = applied(body)
    app, side = after["spec"]["containers"]
    assert app["env"] == [{"name": "A", "value": "1"}, *ENV] and app["volumeMounts"] == [MOUNT]
    assert side["env"] == ENV and side["volumeMounts"] == [MOUNT]
    assert after["spec"]["initContainers"][0]["env"] == ENV
    assert after["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}, VOLUME]
    assert body["spec"]["containers"][1] == {"name": "side", "image": "y"}  # the request's own body is not changed


def test_the_audience_and_lifetime_are_the_settings() -> None:
    fields = injection.for_pod(pod({"name": "app"}), audience="sts.example", expiration=3600)
    assert fields is not None
    (volume,) = fields["volumes"]
    assert volume["projected"]["sources"][0]["serviceAccountToken"] == {
        "audience": "sts.example", "expirationSeconds": 3600, "path": "eks-pod-identity-token"}


def test_a_host_network_pod_is_injected_too() -> None:
    after = applied(pod({"name": "agent"}, hostNetwork=True))
    assert after["spec"]["containers"][0]["env"] == ENV and after["spec"]["volumes"] == [VOLUME]


def test_a_pod_that_opted_out_is_untouched() -> None:
    body = pod({"name": "app"}, labels={injection.LABEL: injection.DISABLED})
    assert injection.for_pod(body, audience=AUDIENCE, expiration=86400) is None
    assert applied(body) == body


@pytest.mark.parametrize("variable", ["AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
def test_a_container_that_sets_either_variable_by_hand_is_untouched(variable: str) -> None:
    mine = {"name": "app", "env": [{"name": variable, "value": "mine"}]}
    body = pod(copy.deepcopy(mine))
    assert injection.for_pod(body, audience=AUDIENCE, expiration=86400) is None
    # Next to one that does not: only the other is changed.
    after = applied(pod(copy.deepcopy(mine), {"name": "other"}))
    assert after["spec"]["containers"][0] == mine
    assert after["spec"]["containers"][1]["env"] == ENV


def test_a_volume_of_that_name_is_kept_and_mounted() -> None:
    own = {"name": "eks-pod-identity-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "x", "path": "t"}}]}}
    after = applied(pod({"name": "app"}, volumes=[own]))
    assert after["spec"]["volumes"] == [own] and after["spec"]["containers"][0]["volumeMounts"] == [MOUNT]


def test_a_mount_at_the_token_folder_is_not_doubled() -> None:
    mounted = {"name": "mine", "mountPath": MOUNT["mountPath"]}
    after = applied(pod({"name": "app", "volumeMounts": [mounted]}))
    assert after["spec"]["containers"][0]["volumeMounts"] == [mounted]


def test_applying_it_twice_changes_nothing_the_second_time() -> None:
    once = applied(pod({"name": "app"}, {"name": "b", "env": [{"name": "X", "value": "y"}]}))
    assert injection.for_pod(once, audience=AUDIENCE, expiration=86400) is None
    assert applied(once) == once


def test_the_patch_is_json_patch_adding_to_what_the_pod_holds() -> None:
    body = pod({"name": "app", "image": "x"})
    fields = injection.for_pod(body, audience=AUDIENCE, expiration=86400)
    patch = kopf.Patch(body=kopf.Body(body))
    for key, value in (fields or {}).items():
        patch.spec[key] = value
    ops = patch.as_json_patch()
    assert ops and all(op["op"] in ("add", "replace") for op in ops)
    assert {op["path"] for op in ops} >= {"/spec/volumes"}
