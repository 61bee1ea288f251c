"""The IAM documents in examples/iam are loaded into moto's IAM (a real HTTP
server), which rejects malformed policy grammar, and the trust chain they set
up works: the operator's role may assume a pod role, and nothing else may."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from localcluster import moto

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples" / "iam"


@pytest.fixture(scope="module")
def own_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[moto.MotoServer]:
    """A moto of its own: the documents create the guide's roles by their names (my-eks-node-role, podiam-operator),
    which the session's moto may already hold from the real nodes' stand-in metadata service."""
    server = moto.MotoServer(tmp_path_factory.mktemp("examples-moto")).start()
    try:
        yield server
    finally:
        server.stop()


def _client(service: str, url: str, **credentials: str) -> Any:
    credentials = credentials or {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "example"}
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", **credentials)


def _document(name: str, account: str = moto.ACCOUNT_ID) -> str:
    # The examples use the documentation account 111122223333; moto's is another.
    return (EXAMPLES / name).read_text().replace("111122223333", account)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_every_document_is_valid_json_with_a_version(name: str) -> None:
    document = json.loads((EXAMPLES / name).read_text())
    assert document["Version"] == "2012-10-17"
    assert document["Statement"]


def test_moto_accepts_the_documents_and_the_trust_chain_works(own_moto: moto.MotoServer) -> None:
    iam = _client("iam", own_moto.url)
    ec2_trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName="my-eks-node-role", AssumeRolePolicyDocument=json.dumps(ec2_trust))
    operator = iam.create_role(RoleName="podiam-operator", AssumeRolePolicyDocument=_document("operator-trust-policy.json"))
    iam.create_role(RoleName="podiam-operator-irsa", AssumeRolePolicyDocument=_document("operator-trust-policy-irsa.json"))
    policy = iam.create_policy(PolicyName="podiam-operator", PolicyDocument=_document("operator-policy.json"))
    iam.attach_role_policy(RoleName="podiam-operator", PolicyArn=policy["Policy"]["Arn"])
    pod_role = iam.create_role(RoleName="KiamTesterRole", AssumeRolePolicyDocument=_document("pod-role-trust-policy.json"))
    iam.put_role_policy(RoleName="KiamTesterRole", PolicyName="s3-read", PolicyDocument=_document("pod-role-policy-s3-read.json"))

    sts = _client("sts", own_moto.url)
    as_operator = sts.assume_role(RoleArn=operator["Role"]["Arn"], RoleSessionName="podiam-operator")["Credentials"]
    operator_sts = _client(
        "sts", own_moto.url,
        aws_access_key_id=as_operator["AccessKeyId"],
        aws_secret_access_key=as_operator["SecretAccessKey"],
        aws_session_token=as_operator["SessionToken"],
    )
    as_pod = operator_sts.assume_role(RoleArn=pod_role["Role"]["Arn"], RoleSessionName="aws-iam-tester")
    assert as_pod["AssumedRoleUser"]["Arn"].endswith(":assumed-role/KiamTesterRole/aws-iam-tester")


def test_moto_rejects_a_malformed_policy(own_moto: moto.MotoServer) -> None:
    """The grammar check above can fail: a document missing its Effect is refused."""
    broken = json.loads((EXAMPLES / "operator-policy.json").read_text())
    del broken["Statement"][0]["Effect"]
    with pytest.raises(botocore.exceptions.ClientError, match="MalformedPolicyDocument"):
        _client("iam", own_moto.url).create_policy(PolicyName="broken", PolicyDocument=json.dumps(broken))


def test_the_terraform_example_is_terraform_fmt_clean() -> None:
    script = Path(__file__).parents[2] / "scripts" / "install-terraform.sh"
    terraform = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True, timeout=900).stdout.strip()
    result = subprocess.run(
        [terraform, "fmt", "-check", "-diff", "-recursive", str(EXAMPLES / "terraform")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"
