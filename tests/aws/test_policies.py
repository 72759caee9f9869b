"""The IAM policies ``coiled-lab setup aws`` prints are what coiled-lab needs, proven on a moto
that enforces IAM (:mod:`tests.aws.iammoto`, a server of this module's own):

- two IAM users hold exactly the printed ``setup`` and ``everyday`` policies (from the
  function the CLI prints them with); the first runs ``setup aws``, the second estimate,
  create, scale, logs, usage, stop and cleanup, and the server refuses nothing: not even a
  refusal the product would swallow (a price from the snapshot, an absent object);
- without any one statement moto can check, the same runs meet a refusal naming one of its
  actions;
- every AWS call in coiled-lab's code is allowed by the policy of its side, and every
  action a policy grants is called, or needed by a call that is (:data:`IMPLIED`);
- the instance role, as a VM's session holds it, writes logs in coiled-lab's group and
  reads and writes environments, and nothing else.

No VM boots here: every AWS call of those verbs is made whether a scheduler answers or not
(usage is read from the scheduler, with no AWS call). moto has no Debian image parameters:
the images are moto's Amazon Linux ones, public parameters under ``/aws/service/`` as
Debian's are.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import botocore.exceptions
import dask.config
import pytest

import coiled_lab
from coiled_lab.backends.aws import iam, setup
from coiled_lab.backends.aws.session import AWSSession
from coiled_lab.backends.aws.tags import CLUSTER, OWNER, tag_specs
from coiled_lab.backends.base import owner_id
from coiled_lab.bootstrap import envcache
from coiled_lab.bootstrap.logship import CloudWatchLogs, CloudWatchLogsError, Credentials
from coiled_lab.cli import main
from coiled_lab.control.inprocess import InProcessControl
from coiled_lab.control.manager import ClusterManager
from coiled_lab.environment import Environment, Package

from ..conftest import wait_for
from ..pricelist import PriceList
from .iammoto import IAMMoto, Keys

REGION = "us-east-1"
CONFIG = {
    "coiled-lab.aws.region": REGION,
    "coiled-lab.aws.images": {
        "x86_64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
        "arm64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
        "gpu": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"},
    "coiled-lab.aws.poll-interval": 0.2,
    # The VPC's addresses are loopback ones (127.x): the manager's attempts to reach a
    # scheduler that never boots are refused at once, and nothing leaves this machine.
    "coiled-lab.cluster.connect-via": "private",
    "coiled-lab.cluster.allow-ingress-from": "192.0.2.0/24",
}
SPEC = {"backend": "aws", "n_workers": 1, "scheduler_vm_type": "m6i.large", "worker_vm_types": ["m6i.large"],
        "spot_policy": "spot_with_fallback", "package_sync": True}
ENVIRONMENT = Environment(where="the policy tests", python="3.11", platform="linux-x86_64",
                          packages=[Package("toolz", "0.12.1", "index")])

# Actions a policy grants that no call of coiled-lab names, because AWS authorizes another
# call with them too. moto checks none of these, so a statement made of them alone is not
# dropped in test_each_statement_is_needed (README: "IAM policies, proven").
IMPLIED = {
    "ec2:RunInstances": "CreateFleet launches its instances with it",
    "ec2:CreateTags": "tags given in a create request (TagSpecifications) are authorized as CreateTags",
    "iam:PassRole": "a launch template naming the instance profile hands EC2 the role (everyday); "
                    "AddRoleToInstanceProfile puts it in the profile (setup)",
    "iam:CreateServiceLinkedRole": "EC2 Fleet and spot create their service-linked roles on first use",
    "iam:TagRole": "CreateRole with Tags",
    "iam:TagInstanceProfile": "CreateInstanceProfile with Tags",
    "logs:TagResource": "CreateLogGroup with tags",
}
# Actions AWS allows every caller, whatever its policies.
UNGATED = {"sts:GetCallerIdentity"}
# Operations whose IAM action is not named after them.
ACTION_OF = {("s3", "head_bucket"): "s3:ListBucket", ("s3", "head_object"): "s3:GetObject",
             ("s3", "put_public_access_block"): "s3:PutBucketPublicAccessBlock",
             ("s3", "get_bucket_lifecycle_configuration"): "s3:GetLifecycleConfiguration",
             ("s3", "put_bucket_lifecycle_configuration"): "s3:PutLifecycleConfiguration"}


def actions(statement: dict[str, Any]) -> list[str]:
    return [statement["Action"]] if isinstance(statement["Action"], str) else list(statement["Action"])


def granted(policy: dict[str, Any]) -> set[str]:
    """Every action ``policy`` allows, but those only other calls need (:data:`IMPLIED`)."""
    return {a for s in policy["Statement"] for a in actions(s)} - set(IMPLIED)


def without(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    kept = [s for s in policy["Statement"] if s.get("Sid") != sid]
    assert len(kept) == len(policy["Statement"]) - 1, f"no statement {sid}"
    return {**policy, "Statement": kept}


@contextlib.contextmanager
def acting_as(moto: IAMMoto, keys: Keys) -> Iterator[None]:
    """coiled-lab in this process, on ``moto``, with ``keys`` as its credentials (boto3's
    environment chain) and the test config."""
    with pytest.MonkeyPatch.context() as mp, dask.config.set(CONFIG):
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_PRICING"):
            mp.delenv(key, raising=False)
        for key, value in {"AWS_ENDPOINT_URL": moto.url, "AWS_DEFAULT_REGION": REGION, **keys.env()}.items():
            mp.setenv(key, value)
        yield


def printed_policies(moto: IAMMoto) -> dict[str, dict[str, Any]]:
    """What ``setup aws --policy`` prints for this account (asked as the admin: the account id)."""
    with acting_as(moto, moto.admin):
        return {which: asyncio.run(setup.policy(AWSSession(), REGION, which)) for which in setup.POLICIES}


def run_setup(moto: IAMMoto, keys: Keys, vpc_cidr: str) -> int:
    with acting_as(moto, keys):
        return main(["setup", "aws", "--region", REGION, "--vpc-cidr", vpc_cidr])


@dataclass
class Account:
    """A moto enforcing IAM, the printed policies, a user holding each, and how the setup
    user's ``setup aws`` ended."""

    moto: IAMMoto
    policies: dict[str, dict[str, Any]]
    users: dict[str, Keys]
    vpc_cidr: str
    setup_status: int


@pytest.fixture(scope="module")
def price_list():
    server = PriceList()
    yield server
    server.close()


@pytest.fixture(scope="module")
def account(price_list):
    moto = IAMMoto(price_list.url, REGION)
    try:
        policies = printed_policies(moto)
        users = {which: moto.user(which, policy) for which, policy in policies.items()}
        moto.enforce()
        vpc_cidr = f"127.{random.randint(32, 250)}.0.0/16"
        yield Account(moto, policies, users, vpc_cidr, run_setup(moto, users["setup"], vpc_cidr))
    finally:
        moto.close()


def everyday(moto: IAMMoto, keys: Keys, state_dir: Path) -> dict[str, Any]:
    """What a user does with clusters, as ``keys``: estimate, create, scale, logs, usage,
    stop, then cleanup of what a crash left (a volume, a launch template). Stops at the
    first verb that fails, which it returns under ``"failed"``."""
    seen: dict[str, Any] = {}
    with acting_as(moto, keys):
        try:
            cluster_id = use_a_cluster(state_dir, seen)
            seen["leftovers"] = crash_leftovers(moto, cluster_id, state_dir)
            seen["cleanup"] = main(["cleanup", "--aws-region", REGION])
        except Exception as exc:  # noqa: BLE001 - a refusal's consequence, for the caller to judge
            seen["failed"] = exc
    return seen


_addresses = iter(range(1, 255))


def use_a_cluster(state_dir: Path, seen: dict[str, Any]) -> str:
    """Estimate, create, scale, logs, usage and stop, each result put in ``seen``."""
    # A CIDR no ingress group opens yet: the user makes one.
    spec = {**SPEC, "allow_ingress_from": f"198.51.100.{next(_addresses)}/32"}
    control = InProcessControl(ClusterManager(state_dir))
    try:
        seen["estimate"] = control.run(control.estimate(spec))
        cluster_id = control.run(control.create(spec, ENVIRONMENT.to_json()))["id"]

        def launched(n: int) -> bool:
            now = control.run(control.get(cluster_id))
            assert now["status"] != "error", now["message"]
            return now["workers"]["launched"] >= n

        wait_for(lambda: launched(1), timeout=60, what="the first worker's launch")
        control.run(control.scale(cluster_id, 2))
        wait_for(lambda: launched(2), timeout=60, what="the second worker's launch")
        seen["logs"] = control.run(control.logs(cluster_id, limit=None))
        seen["usage"] = control.run(control.usage(cluster_id))
        control.run(control.stop(cluster_id))
        seen["stopped"] = control.run(control.wait(cluster_id, ("stopped",), 60))
        seen["notifications"] = control.run(control.notifications(cluster_id))
        return cluster_id
    finally:
        control.close()


def crash_leftovers(moto: IAMMoto, cluster_id: str, state_dir: Path) -> set[str]:
    """A volume and a launch template of the cluster, tagged as the manager tags them, as a
    crash would leave them; made by the admin."""
    ec2 = moto.client("ec2")
    tags = {CLUSTER: cluster_id, OWNER: owner_id(state_dir)}
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1, TagSpecifications=tag_specs(["volume"], tags))
    template = ec2.create_launch_template(LaunchTemplateName=f"left-{cluster_id}", LaunchTemplateData={},
                                          TagSpecifications=tag_specs(["launch-template"], tags))
    return {volume["VolumeId"], template["LaunchTemplate"]["LaunchTemplateId"]}


# -- the printed policies, run --------------------------------------------------------------------
def test_the_cli_prints_the_policies_that_are_tested(account, capsys):
    for which, policy in account.policies.items():
        with acting_as(account.moto, account.users["everyday"]):
            assert main(["setup", "aws", "--policy", which]) == 0
        assert json.loads(capsys.readouterr().out) == policy


def test_the_setup_user_prepares_the_account_and_nothing_is_refused(account):
    moto = account.moto
    assert account.setup_status == 0
    assert moto.refused("setup") == []
    role = moto.client("iam").get_role_policy(RoleName="coiled-lab-instance", PolicyName=iam.INLINE_POLICY)
    buckets = f"coiled-lab-envs-{moto.client('sts').get_caller_identity()['Account']}-*"
    assert role["PolicyDocument"] == iam.instance_policy("coiled-lab", buckets)
    # A second run reads everything and changes nothing, with the same policy.
    assert run_setup(moto, account.users["setup"], account.vpc_cidr) == 0 and moto.refused("setup") == []
    # The policy grants nothing more than what these two runs used.
    assert moto.used("setup") - UNGATED == granted(account.policies["setup"])


def test_the_everyday_user_runs_clusters_and_nothing_is_refused(account, state_dir, caplog):
    seen = everyday(account.moto, account.users["everyday"], state_dir)
    assert "failed" not in seen, seen.get("failed")
    assert account.moto.refused("everyday") == []
    assert account.moto.used("everyday") - UNGATED == granted(account.policies["everyday"])  # and nothing more
    # The price came from the Price List API (from the snapshot, a refusal would go unnoticed).
    assert "AWS Price List API" in json.dumps(seen["estimate"])
    assert seen["stopped"]["status"] == "stopped" and seen["cleanup"] == 0
    assert not any("AccessDenied" in n["message"] or "not authorized" in n["message"] for n in seen["notifications"])
    assert "AccessDenied" not in caplog.text
    ec2 = account.moto.client("ec2")
    left = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]} | \
        {t["LaunchTemplateId"] for t in ec2.describe_launch_templates()["LaunchTemplates"]}
    assert not left & seen["leftovers"]


# -- each statement is needed -------------------------------------------------------------------
def checkable(which: str) -> list[str]:
    """The statements of a printed policy that moto can find missing: those granting an
    action coiled-lab calls (not only :data:`IMPLIED` ones)."""
    policy = {"setup": iam.setup_policy, "everyday": iam.everyday_policy}[which]("role", "group", "bucket")
    return [s["Sid"] for s in policy["Statement"] if set(actions(s)) - set(IMPLIED)]


@pytest.mark.parametrize("which, sid", [(w, sid) for w in ("setup", "everyday") for sid in checkable(w)])
def test_each_statement_is_needed(account, price_list, state_dir, which, sid):
    """A user holding the printed policy but one statement is refused one of that
    statement's actions, and nothing else, as it runs what the full policy lets it run."""
    user = f"{which}-without-{sid}"
    if which == "setup":  # on an account of its own: setup has to make everything again
        moto = IAMMoto(price_list.url, REGION)
        try:
            keys = moto.user(user, without(account.policies["setup"], sid))
            moto.enforce()
            run_setup(moto, keys, account.vpc_cidr)
            refused = moto.refused(user)
        finally:
            moto.close()
    else:
        everyday(account.moto, account.moto.user(user, without(account.policies["everyday"], sid)), state_dir)
        refused = account.moto.refused(user)
    [dropped] = [s for s in account.policies[which]["Statement"] if s["Sid"] == sid]
    assert refused, f"nothing was refused without {sid}"
    assert {r["action"] for r in refused} <= set(actions(dropped)), refused  # refused for what it granted, only
    assert all(r["error"] == "AccessDenied" for r in refused)


# -- every call is allowed -------------------------------------------------------------------------
def operations(service: str) -> dict[str, str]:
    """boto3's method names of ``service``'s operations -> the operations' API names."""
    import boto3

    return boto3.client(service, region_name=REGION, aws_access_key_id="-", aws_secret_access_key="-"
                        ).meta.method_to_api_mapping


def call_sites() -> set[tuple[str, str, str]]:
    """(file, service, boto3 method) of every call coiled-lab makes through
    :class:`~coiled_lab.backends.aws.session.AWSSession` (``call`` and ``pages``); where the
    method is a variable, every method name of that service written in the same function."""
    root = Path(coiled_lab.__file__).parent
    found = set()
    for path in [*sorted((root / "backends" / "aws").glob("*.py")), root / "pricing.py"]:
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("call", "pages") and len(node.args) >= 3
                        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    continue
                service, method = node.args[0].value, node.args[2]
                known = operations(service)
                names = [method.value] if isinstance(method, ast.Constant) else [
                    c.value for c in ast.walk(function) if isinstance(c, ast.Constant) and c.value in known]
                assert names, f"{path.name}:{node.lineno}: no {service} operation found for {ast.unparse(method)}"
                found.update((path.name, service, name) for name in names)
    return found


def test_every_aws_call_is_allowed_by_its_sides_policy():
    sites = call_sites()
    assert {service for _, service, _ in sites} == {"ec2", "ssm", "logs", "s3", "sts", "iam", "pricing"}
    policies = {which: granted(make("role", "group", "bucket")) | UNGATED
                for which, make in (("setup", iam.setup_policy), ("everyday", iam.everyday_policy))}
    missing = []
    for path, service, method in sorted(sites):
        action = ACTION_OF.get((service, method)) or f"{service}:{operations(service)[method]}"
        side = "setup" if path == "setup.py" else "everyday"
        if action not in policies[side]:
            missing.append(f"{path}: {method} needs {action} in the {side} policy")
    assert not missing, missing


def test_every_implied_action_is_a_real_one_and_granted():
    everything = {a for make in (iam.setup_policy, iam.everyday_policy)
                  for s in make("role", "group", "bucket")["Statement"] for a in actions(s)}
    assert set(IMPLIED) <= everything  # no excuse kept for an action no policy grants any more


# -- the instance role ---------------------------------------------------------------------------
def test_a_vm_writes_logs_and_reads_environments_and_nothing_else(account, tmp_path):
    moto, instance = account.moto, "i-0123456789abcdef0"
    bucket = f"coiled-lab-envs-{moto.client('sts').get_caller_identity()['Account']}-{REGION}"
    role = moto.client("iam").get_role(RoleName="coiled-lab-instance")["Role"]["Arn"]
    with moto.unenforced():  # EC2 assumes the role for the VM, in a session named by its instance id
        session = moto.client("sts").assume_role(RoleArn=role, RoleSessionName=instance)["Credentials"]
    vm = Keys(instance, session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"])
    credentials = Credentials(vm.access_key, vm.secret_key, vm.token)
    s3 = moto.client("s3")
    for key in ("envs/abc.tar.gz", "inputs/abc.tar", "elsewhere/secret"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())

    logs = CloudWatchLogs(REGION, lambda: credentials, endpoint=moto.url, max_attempts=1)
    stream = f"c0ffee/scheduler-{instance}"
    logs.create_log_stream("coiled-lab", stream)
    logs.put_log_events("coiled-lab", stream, [{"timestamp": 1_700_000_000_000, "message": "hello"}])
    store = envcache.s3(bucket, REGION, lambda: credentials, endpoint=moto.url)
    with store.get("envs/abc.tar.gz") as archive, store.get("inputs/abc.tar") as inputs:
        assert (archive.read(), inputs.read()) == (b"envs/abc.tar.gz", b"inputs/abc.tar")
    (tmp_path / "built.tar.gz").write_bytes(b"built")
    store.put("envs/def.tar.gz", tmp_path / "built.tar.gz")
    assert moto.refused(instance) == []

    moto.client("logs").create_log_group(logGroupName="someone-elses")
    for call in (lambda: logs.create_log_stream("someone-elses", stream),
                 lambda: logs.put_log_events("someone-elses", stream, [{"timestamp": 1, "message": "x"}]),
                 lambda: logs.call("FilterLogEvents", {"logGroupName": "coiled-lab"}),
                 lambda: logs.call("DeleteLogStream", {"logGroupName": "coiled-lab", "logStreamName": stream})):
        with pytest.raises(CloudWatchLogsError) as refused:
            call()
        assert refused.value.code == "AccessDeniedException"
    assert store.get("elsewhere/secret") is None  # S3's 403: not found, for who may not list
    for call in (lambda: moto.client("s3", vm).list_objects_v2(Bucket=bucket),
                 lambda: moto.client("ec2", vm).describe_instances()):
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            call()
    with pytest.raises(OSError, match="403"):
        store.put("inputs/abc.tar", tmp_path / "built.tar.gz")
    group = f"arn:aws:logs:{REGION}:{bucket.split('-')[3]}:log-group"
    assert [(r["action"], r["resource"]) for r in moto.refused(instance)] == [
        ("logs:CreateLogStream", f"{group}:someone-elses:*"),
        ("logs:PutLogEvents", f"{group}:someone-elses:log-stream:{stream}"),
        ("logs:FilterLogEvents", f"{group}:coiled-lab:*"), ("logs:DeleteLogStream", f"{group}:coiled-lab:*"),
        ("s3:GetObject", f"arn:aws:s3:::{bucket}/elsewhere/secret"), ("s3:ListBucket", f"arn:aws:s3:::{bucket}"),
        ("ec2:DescribeInstances", "*"), ("s3:PutObject", f"arn:aws:s3:::{bucket}/inputs/abc.tar")]
