"""The guide's IAM chapter, in moto's IAM: the operator's role and the pod's role, from examples/iam.

Kiam's guide creates a ``kiam-server`` role (trusted by the cluster's node
role, allowed ``sts:AssumeRole``) and gives it to the server as
``assumeRoleArn``; every pod role trusts it. The same here, with the policy
documents users apply (examples/iam/*.json; their documentation account
111122223333 becomes moto's 123456789012):

- ``my-eks-node-role``: what the operator's own credentials stand for;
- ``podiam-operator``: operator-trust-policy.json + operator-policy.json,
  the operator's ``assumeRoleArn``;
- ``KiamTesterRole``: pod-role-trust-policy.json (trusts podiam-operator).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]

from localcluster import moto

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "iam"
EXAMPLE_ACCOUNT = "111122223333"
POD_ROLE = "KiamTesterRole"
OPERATOR_ROLE = "podiam-operator"
NODE_ROLE = "my-eks-node-role"
_EC2_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


@dataclasses.dataclass(frozen=True)
class Roles:
    operator_arn: str
    pod_arn: str
    lines: list[str]  # what was created, for the screen


def document(name: str) -> str:
    return (EXAMPLES / name).read_text().replace(EXAMPLE_ACCOUNT, moto.ACCOUNT_ID)


def create_roles(iam_url: str) -> Roles:
    iam: Any = boto3.client("iam", endpoint_url=iam_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")
    iam.create_role(RoleName=NODE_ROLE, AssumeRolePolicyDocument=json.dumps(_EC2_TRUST))
    operator = iam.create_role(RoleName=OPERATOR_ROLE, AssumeRolePolicyDocument=document("operator-trust-policy.json"))
    policy = iam.create_policy(PolicyName=OPERATOR_ROLE, PolicyDocument=document("operator-policy.json"))
    iam.attach_role_policy(RoleName=OPERATOR_ROLE, PolicyArn=policy["Policy"]["Arn"])
    pod = iam.create_role(RoleName=POD_ROLE, AssumeRolePolicyDocument=document("pod-role-trust-policy.json"))
    iam.put_role_policy(RoleName=POD_ROLE, PolicyName="s3-read", PolicyDocument=document("pod-role-policy-s3-read.json"))
    lines = [
        f"role {NODE_ROLE:<18} plays the EKS node role (the operator's own credentials)",
        f"role {OPERATOR_ROLE:<18} trust: examples/iam/operator-trust-policy.json, policy: operator-policy.json",
        f"{'':<23} (the operator's assumeRoleArn, Kiam's server.assumeRoleArn)",
        f"role {POD_ROLE:<18} trust: examples/iam/pod-role-trust-policy.json (trusts {OPERATOR_ROLE}),",
        f"{'':<23} policy: pod-role-policy-s3-read.json",
    ]
    return Roles(operator_arn=operator["Role"]["Arn"], pod_arn=pod["Role"]["Arn"], lines=lines)
