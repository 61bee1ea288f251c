"""Real proxy processes on their own loopback addresses, and unmodified AWS clients in subprocesses.

The clients connect to the proxy from 127.0.0.1 (the kernel's source for
127.0.0.0/8 destinations), so 127.0.0.1 plays the pod in these tests.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pydantic
import pytest

from metadata_proxy import wire
from localcluster import certs, moto
from localcluster import proxy as proxy_support

POD_IP = "127.0.0.1"
_hosts = itertools.count(40)

ProxyFactory = Callable[..., proxy_support.ProxyProcess]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.make_pki(tmp_path_factory.mktemp("proxy-pki"))


@pytest.fixture
def start_proxy(tmp_path: Path, pki: certs.Pki) -> Iterator[ProxyFactory]:
    """``start_proxy(*args, host=None)`` → a running proxy on a fresh 127.0.0.N; all stopped afterwards."""
    started: list[proxy_support.ProxyProcess] = []

    def start(*args: str, host: str | None = None, **kwargs: Any) -> proxy_support.ProxyProcess:
        process = proxy_support.ProxyProcess(tmp_path, pki, host or f"127.0.0.{next(_hosts)}", args=args, **kwargs)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def assumed_role(sts: moto.StsFront, role_name: str, key: str | None = None) -> tuple[wire.RoleCredentials, str]:
    """Real credentials from moto's STS for ``role_name``, as the operator would push them; and the assumed-role ARN."""
    client = boto3.client(
        "sts", endpoint_url=sts.url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    role_arn = f"arn:aws:iam::{moto.ACCOUNT_ID}:role/{role_name}"
    answer = client.assume_role(RoleArn=role_arn, RoleSessionName="podiam-test", DurationSeconds=3600)
    creds = answer["Credentials"]
    return wire.RoleCredentials(
        key=key or role_name, role_arn=role_arn, role_name=role_name,
        access_key_id=creds["AccessKeyId"], secret_access_key=pydantic.SecretStr(creds["SecretAccessKey"]),
        session_token=pydantic.SecretStr(creds["SessionToken"]), expiration=creds["Expiration"],
        last_updated=datetime.datetime.now(datetime.timezone.utc),
    ), answer["AssumedRoleUser"]["Arn"]


def client_env(proxy: proxy_support.ProxyProcess, home: Path) -> dict[str, str]:
    """An environment with no credentials at all but the metadata endpoint: what a pod has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": proxy.metadata_url + "/",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HOME": str(home),
        "NO_PROXY": "*",
    }
    return env


BOTOCORE_SCRIPT = """
import json, time
import botocore.session
started = time.monotonic()
session = botocore.session.get_session()
credentials = session.get_credentials()
result = {"seconds": time.monotonic() - started}
if credentials is not None:
    frozen = credentials.get_frozen_credentials()
    result |= {"method": credentials.method, "access_key": frozen.access_key,
               "secret_key": frozen.secret_key, "token": frozen.token}
print(json.dumps(result))
"""


def botocore_credentials(proxy: proxy_support.ProxyProcess, home: Path, timeout: float = 30) -> dict[str, Any]:
    """botocore's own credential chain (ending in its IMDS provider), in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", BOTOCORE_SCRIPT], env=client_env(proxy, home), capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def aws_cli(proxy: proxy_support.ProxyProcess, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    aws = Path(sys.executable).with_name("aws")
    return subprocess.run([str(aws), *args], env=client_env(proxy, home), capture_output=True, text=True, timeout=60)
