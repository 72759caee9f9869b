"""The AWS backend: EC2 instances in your own account, launched by one fleet request per batch.

Modules, each named for what it holds: ``session`` (boto3 clients, retries, calls off the
event loop), ``tags``, ``network`` (the VPC, subnets and security groups a cluster uses),
``setup`` (``coiled-lab setup aws``), ``iam`` (policy documents), ``catalog`` (instance
types, zones, spot prices, the choice of types), ``images`` (AMIs), ``userdata`` (what a VM
runs at boot), ``fleet`` (launching), ``logs`` (CloudWatch and console output), ``sweep``
(removal by tag) and ``backend`` (the :class:`~coiled_lab.backends.base.Backend`). boto3
is imported only when a call is made.
"""

from .backend import AWSBackend

__all__ = ["AWSBackend"]
