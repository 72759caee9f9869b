"""IAM policy documents: the VMs' role, and what the people running coiled-lab need.

Three documents, printed by ``coiled-lab setup aws`` (``--policy setup|everyday`` prints
one alone) for an admin to attach, and tested as printed (``tests/aws/test_policies.py``
runs setup and the everyday verbs as IAM users holding exactly these):

- the **instance role** (made by setup): a VM may only create streams in coiled-lab's log
  group and write to them, read environments' inputs and archives in the environment
  bucket (without listing it: only the keys its cluster was told) and upload an archive
  it built; it cannot launch anything, see other VMs or read any log;
- the **setup** policy: creating the VPC, subnets, gateway, routes, security groups, the
  instance role and profile, the log group and the environment bucket (needed once;
  detach it afterwards);
- the **everyday** policy: launching and terminating clusters, reading the catalog, the
  prices, the logs and the image parameters. Termination and deletion only apply to
  resources tagged with a cluster id, tags only go on what the same request creates, a
  security group's rules only change on coiled-lab's own groups, and the only role it may
  hand to EC2 is the instance role.

What AWS cannot express, and so is not in these documents: a VM's own log stream (a
stream is named ``<cluster-id>/<role>-<instance-id>``, while the only request values
naming the calling instance are its ARN, which a stream name cannot hold, and
``aws:userid``, ``<role-id>:<instance-id>``, whose colon no stream name may contain either),
and its own cluster's archive (archives are per environment, shared by every cluster with
the same one, and no request value names a cluster): a VM reaches the archive and the
inputs whose hash its cluster was given, and cannot list the others.
"""

from __future__ import annotations

from typing import Any

VERSION = "2012-10-17"
INLINE_POLICY = "coiled-lab-logs"


def trust_policy() -> dict[str, Any]:
    """Who may assume the instance role: EC2, on behalf of the VMs."""
    return {
        "Version": VERSION,
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }


def _group(log_group: str) -> str:
    """The log group's ARN pattern as CloudWatch Logs authorizes group actions on it
    (``log-group:<name>:*``); it also covers the group's streams."""
    return f"arn:aws:logs:*:*:log-group:{log_group}:*"


def instance_policy(log_group: str, buckets: str) -> dict[str, Any]:
    """What a VM may do: make and write log streams in coiled-lab's group; read an
    environment's inputs and archive, and upload the archive it built (``buckets``: the
    environment buckets' name or pattern); nothing else."""
    return {
        "Version": VERSION,
        "Statement": [
            {"Sid": "CreateLogStreams", "Effect": "Allow", "Action": "logs:CreateLogStream",
             "Resource": _group(log_group)},
            {"Sid": "WriteLogStreams", "Effect": "Allow", "Action": "logs:PutLogEvents",
             "Resource": f"arn:aws:logs:*:*:log-group:{log_group}:log-stream:*"},
            {"Sid": "ReadEnvironments", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": [f"arn:aws:s3:::{buckets}/envs/*", f"arn:aws:s3:::{buckets}/inputs/*"]},
            {"Sid": "UploadBuiltEnvironments", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": f"arn:aws:s3:::{buckets}/envs/*"},
        ],
    }


def _tag_on_create(*actions: str) -> dict[str, Any]:
    """``ec2:CreateTags`` only as part of these requests (tags given at creation)."""
    return {"Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*",
            "Condition": {"StringEquals": {"ec2:CreateAction": list(actions)}}}


def setup_policy(role_name: str, log_group: str, buckets: str) -> dict[str, Any]:
    """Permissions for ``coiled-lab setup aws``."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "Network",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeAvailabilityZones", "ec2:DescribeVpcs", "ec2:CreateVpc",
                    "ec2:DescribeSubnets", "ec2:CreateSubnet", "ec2:ModifySubnetAttribute",
                    "ec2:DescribeInternetGateways", "ec2:CreateInternetGateway", "ec2:AttachInternetGateway",
                    "ec2:DescribeRouteTables", "ec2:CreateRouteTable", "ec2:CreateRoute", "ec2:AssociateRouteTable",
                    "ec2:DescribeSecurityGroups", "ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
                ],
                "Resource": "*",
            },
            {"Sid": "TagWhatItCreates", **_tag_on_create(
                "CreateVpc", "CreateSubnet", "CreateInternetGateway", "CreateRouteTable", "CreateSecurityGroup")},
            {
                "Sid": "InstanceRole",
                "Effect": "Allow",
                "Action": [
                    "iam:GetRole", "iam:CreateRole", "iam:TagRole", "iam:GetRolePolicy", "iam:PutRolePolicy",
                    "iam:GetInstanceProfile", "iam:CreateInstanceProfile", "iam:TagInstanceProfile",
                    # AddRoleToInstanceProfile passes the role: it needs iam:PassRole on it too.
                    "iam:AddRoleToInstanceProfile", "iam:PassRole",
                ],
                "Resource": [f"arn:aws:iam::*:role/{role_name}", f"arn:aws:iam::*:instance-profile/{role_name}"],
            },
            {"Sid": "FindLogGroup", "Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"},
            {
                "Sid": "LogGroup",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:TagResource"],
                "Resource": _group(log_group),
            },
            {
                "Sid": "EnvironmentBucket",
                "Effect": "Allow",
                "Action": ["s3:CreateBucket", "s3:ListBucket", "s3:PutBucketTagging", "s3:PutBucketPublicAccessBlock",
                           "s3:PutLifecycleConfiguration", "s3:GetLifecycleConfiguration"],
                "Resource": f"arn:aws:s3:::{buckets}",
            },
        ],
    }


def everyday_policy(role_name: str, log_group: str, buckets: str) -> dict[str, Any]:
    """Permissions for starting, watching and stopping clusters."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "ReadCatalogNetworkAndClusters",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeInstances",
                    "ec2:DescribeInstanceTypes", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeSpotPriceHistory",
                    "ec2:DescribeImages", "ec2:DescribeLaunchTemplates", "ec2:DescribeVolumes", "ec2:GetConsoleOutput",
                ],
                "Resource": "*",
            },
            {"Sid": "OnDemandPrices", "Effect": "Allow", "Action": "pricing:GetProducts", "Resource": "*"},
            {
                "Sid": "PublicImageParameters",
                "Effect": "Allow",
                "Action": "ssm:GetParameters",
                "Resource": "arn:aws:ssm:*::parameter/aws/service/*",
            },
            {
                "Sid": "Launch",
                "Effect": "Allow",
                "Action": ["ec2:CreateLaunchTemplate", "ec2:CreateFleet", "ec2:RunInstances"],
                "Resource": "*",
            },
            {"Sid": "TagWhatItCreates", **_tag_on_create(
                "CreateLaunchTemplate", "CreateFleet", "RunInstances", "CreateSecurityGroup")},
            {
                "Sid": "HandTheInstanceRoleToEC2",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": f"arn:aws:iam::*:role/{role_name}",
                "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            },
            {
                "Sid": "FleetAndSpotServiceRoles",
                "Effect": "Allow",
                "Action": "iam:CreateServiceLinkedRole",
                "Resource": "*",
                "Condition": {"StringEquals": {"iam:AWSServiceName": ["ec2fleet.amazonaws.com", "spot.amazonaws.com"]}},
            },
            {"Sid": "IngressGroupForACidrAskedFor", "Effect": "Allow", "Action": "ec2:CreateSecurityGroup",
             "Resource": "*"},
            {
                "Sid": "OpenOnlyCoiledLabGroups",
                "Effect": "Allow",
                "Action": "ec2:AuthorizeSecurityGroupIngress",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:ResourceTag/coiled-lab:managed": "true"}},
            },
            {
                "Sid": "StopOnlyClusterResources",
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances", "ec2:DeleteVolume", "ec2:DeleteLaunchTemplate"],
                "Resource": "*",
                "Condition": {"Null": {"aws:ResourceTag/coiled-lab:cluster": "false"}},
            },
            {"Sid": "FindEnvironmentBucket", "Effect": "Allow", "Action": "s3:ListBucket",
             "Resource": f"arn:aws:s3:::{buckets}"},
            {"Sid": "SendEnvironments", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": f"arn:aws:s3:::{buckets}/inputs/*"},
            {"Sid": "SeeWhatIsBuilt", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{buckets}/envs/*"},
            {"Sid": "ReadClusterLogs", "Effect": "Allow", "Action": "logs:FilterLogEvents", "Resource": _group(log_group)},
        ],
    }
