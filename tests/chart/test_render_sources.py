"""helm template on the values of role sources, namespace policy and session tags: what each turns into, what the
schema refuses, and the RBAC they need (ServiceAccounts watched, never written)."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster import helm as _helm

pytestmark = pytest.mark.chart


def operator_env(helm: _helm.Helm, values: dict[str, Any] | None = None) -> dict[str, Any]:
    return _helm.env_of(_helm.container(helm.template(values=values).get("Deployment"), "operator"))


def test_defaults_are_kiams_and_kube2iams_and_nothing_optional_is_on(helm: _helm.Helm) -> None:
    env = operator_env(helm)
    assert env["PODIAM_IAM_ROLE_KEY"] == "iam.amazonaws.com/role"
    assert env["PODIAM_IAM_EXTERNAL_ID"] == "iam.amazonaws.com/external-id"
    assert env["PODIAM_NAMESPACE_KEY"] == "iam.amazonaws.com/allowed-roles"
    assert env["PODIAM_NAMESPACE_RESTRICTION_FORMAT"] == "glob"
    assert env["PODIAM_DISABLE_STRICT_NAMESPACE_REGEXP"] == "false"
    assert env["PODIAM_IRSA_SERVICE_ACCOUNTS"] == "false"
    for unset in ("PODIAM_DEFAULT_ROLE", "PODIAM_CLUSTER_NAME", "PODIAM_STS_REGION"):
        assert unset not in env  # the region then comes from AWS_REGION or the node's metadata


def test_every_value_reaches_the_operator(helm: _helm.Helm) -> None:
    env = operator_env(helm, {"operator": {
        "clusterName": "prod-eu-1",
        "roleSources": {"roleAnnotation": "example.com/role", "externalIdAnnotation": "example.com/external-id",
                        "irsaServiceAccounts": True, "defaultRole": "kube2iam-default"},
        "namespacePolicy": {"allowedRolesAnnotation": "example.com/roles", "allowedRolesFormat": "regexp", "strictRegexp": False},
    }})
    assert (env["PODIAM_IAM_ROLE_KEY"], env["PODIAM_IAM_EXTERNAL_ID"]) == ("example.com/role", "example.com/external-id")
    assert (env["PODIAM_IRSA_SERVICE_ACCOUNTS"], env["PODIAM_DEFAULT_ROLE"]) == ("true", "kube2iam-default")
    assert (env["PODIAM_NAMESPACE_KEY"], env["PODIAM_NAMESPACE_RESTRICTION_FORMAT"]) == ("example.com/roles", "regexp")
    assert env["PODIAM_DISABLE_STRICT_NAMESPACE_REGEXP"] == "true"
    assert env["PODIAM_CLUSTER_NAME"] == "prod-eu-1"


@pytest.mark.parametrize("irsa", [True, False])
def test_service_accounts_are_watched_never_written_and_only_with_irsa(helm: _helm.Helm, irsa: bool) -> None:
    rules = helm.template(values={"operator": {"roleSources": {"irsaServiceAccounts": irsa}}}).get("ClusterRole")["rules"]
    verbs = [set(rule["verbs"]) for rule in rules if "serviceaccounts" in rule["resources"] and rule["apiGroups"] == [""]]
    assert verbs == ([{"list", "watch"}] if irsa else [])


@pytest.mark.parametrize(("values", "path"), [
    ({"operator": {"roleSources": {"roleAnnotation": "not a key"}}}, "operator.roleSources.roleAnnotation"),
    ({"operator": {"roleSources": {"defaultRole": "arn:aws:iam::1:role/x"}}}, "operator.roleSources.defaultRole"),
    ({"operator": {"roleSources": {"irsa": True}}}, "operator.roleSources"),
    ({"operator": {"namespacePolicy": {"allowedRolesFormat": "regex"}}}, "operator.namespacePolicy.allowedRolesFormat"),
    ({"operator": {"namespacePolicy": {"strictRegexp": "no"}}}, "operator.namespacePolicy.strictRegexp"),
    ({"operator": {"clusterName": "bad\\name"}}, "operator.clusterName"),
])
def test_the_schema_refuses_bad_source_values(helm: _helm.Helm, values: dict[str, Any], path: str) -> None:
    with pytest.raises(_helm.HelmError) as error:
        helm.template(values=values)
    assert "don't meet the specifications of the schema" in error.value.output
    assert path.replace(".", "/") in error.value.output or path in error.value.output, error.value.output
