"""IAM policy documents: the VMs' role, and what the people running coiled-lab need.

Three documents, printed by ``coiled-lab setup aws`` for an admin to attach:

- the **instance role** (made by setup): a VM may only create and write log streams in
  coiled-lab's log group, read environments' inputs and archives in the environment
  bucket and upload an archive it built; it cannot launch anything or see other VMs;
- the **setup** policy: creating the VPC, subnets, gateway, routes, security groups, the
  instance role and profile, and the log group (needed once; detach it afterwards);
- the **everyday** policy: launching and terminating clusters, reading the catalog, the
  logs and the AMI parameters. Termination and volume deletion only apply to resources
  tagged with a cluster id, and the only role it may hand to EC2 is the instance role.
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


def instance_policy(log_group: str, buckets: str) -> dict[str, Any]:
    """What a VM may do: write its log streams in coiled-lab's group; read an environment's
    inputs and archive, and upload the archive it built (``buckets``: the environment
    buckets' name or pattern); nothing else."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "WriteClusterLogStreams",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"arn:aws:logs:*:*:log-group:{log_group}:log-stream:*",
            },
            {
                "Sid": "ReadEnvironments",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [f"arn:aws:s3:::{buckets}/envs/*", f"arn:aws:s3:::{buckets}/inputs/*"],
            },
            {
                "Sid": "UploadBuiltEnvironments",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{buckets}/envs/*",
            },
        ],
    }


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
                    "ec2:CreateTags",
                ],
                "Resource": "*",
            },
            {
                "Sid": "InstanceRole",
                "Effect": "Allow",
                "Action": [
                    "iam:GetRole", "iam:CreateRole", "iam:TagRole", "iam:GetRolePolicy", "iam:PutRolePolicy",
                    "iam:GetInstanceProfile", "iam:CreateInstanceProfile", "iam:TagInstanceProfile",
                    "iam:AddRoleToInstanceProfile",
                ],
                "Resource": [f"arn:aws:iam::*:role/{role_name}", f"arn:aws:iam::*:instance-profile/{role_name}"],
            },
            {"Sid": "FindLogGroup", "Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"},
            {
                "Sid": "EnvironmentBucket",
                "Effect": "Allow",
                "Action": ["s3:CreateBucket", "s3:ListBucket", "s3:PutBucketTagging", "s3:PutBucketPublicAccessBlock",
                           "s3:GetBucketPublicAccessBlock", "s3:PutLifecycleConfiguration",
                           "s3:GetLifecycleConfiguration"],
                "Resource": f"arn:aws:s3:::{buckets}",
            },
            {
                "Sid": "LogGroup",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:TagResource"],
                "Resource": f"arn:aws:logs:*:*:log-group:{log_group}*",
            },
        ],
    }


def everyday_policy(role_name: str, log_group: str, buckets: str) -> dict[str, Any]:
    """Permissions for starting, watching and stopping clusters."""
    tagged = {"Null": {"aws:ResourceTag/coiled-lab:cluster": "false"}}
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "ReadCatalogAndNetwork",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeAvailabilityZones", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeInstanceTypeOfferings",
                    "ec2:DescribeSpotPriceHistory", "ec2:DescribeLaunchTemplates", "ec2:DescribeVolumes",
                    "ec2:GetConsoleOutput",
                ],
                "Resource": "*",
            },
            {
                "Sid": "Launch",
                "Effect": "Allow",
                "Action": ["ec2:CreateLaunchTemplate", "ec2:DeleteLaunchTemplate", "ec2:CreateFleet",
                           "ec2:RunInstances", "ec2:CreateTags"],
                "Resource": "*",
            },
            {
                "Sid": "OpenSchedulerToACidrAskedFor",
                "Effect": "Allow",
                "Action": ["ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress"],
                "Resource": "*",
            },
            {
                "Sid": "StopOnlyClusterResources",
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances", "ec2:DeleteVolume"],
                "Resource": "*",
                "Condition": tagged,
            },
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
            {
                "Sid": "PublicImageParameters",
                "Effect": "Allow",
                "Action": "ssm:GetParameters",
                "Resource": "arn:aws:ssm:*::parameter/aws/service/*",
            },
            {"Sid": "FindEnvironmentBucket", "Effect": "Allow", "Action": "s3:ListBucket",
             "Resource": f"arn:aws:s3:::{buckets}"},
            {
                "Sid": "SendEnvironmentsAndSeeWhatIsBuilt",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": [f"arn:aws:s3:::{buckets}/inputs/*"],
            },
            {"Sid": "SeeWhatIsBuilt", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{buckets}/envs/*"},
            {
                "Sid": "ReadClusterLogs",
                "Effect": "Allow",
                "Action": ["logs:FilterLogEvents", "logs:GetLogEvents", "logs:DescribeLogStreams"],
                "Resource": f"arn:aws:logs:*:*:log-group:{log_group}:*",
            },
        ],
    }
