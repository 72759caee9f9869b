"""Three places where moto differs from AWS in what the emulated network depends on.

- An instance that ``CreateFleet`` launches from a launch template gets neither the
  template's security groups nor a public address in a subnet that maps one on launch;
  EC2 gives it both. The emulator enforces security groups, so without this every fleet
  instance would sit in the VPC's default group.
- moto's public addresses are real ones (``54.214.x.y``). The emulated network routes its
  own range instead (:meth:`tests.vm.network.Network.public_address`), so that no
  connection to an instance's public address can leave this machine.
- moto reads a bucket name from a dotted host (``aws.emulator``, the name VMs reach it
  by); S3 on ``s3.<region>.amazonaws.com`` takes a path-style request's bucket from its path.

All are patched in this process's moto (the tests run moto's server in threads here),
for moto 5.2's internals; a moto that moves them fails loudly at :func:`apply`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

_launching = threading.local()  # the launch template data of the fleet being made, on its thread
_applied: list[Callable[[], str]] = []


def apply(public_address: Callable[[], str]) -> None:
    """Patch moto once per process; ``public_address`` hands out the network's addresses."""
    if _applied:
        _applied[0] = public_address
        return
    _applied.append(public_address)
    from moto import settings
    from moto.ec2.models import elastic_network_interfaces, fleets, instances
    from moto.s3 import utils as s3_utils

    # VMs reach moto as aws.emulator:<port>, path-style, as they reach s3.<region>.amazonaws.com;
    # moto would take the host's first label ("aws") for a virtual-hosted bucket's name.
    settings.S3_IGNORE_SUBDOMAIN_BUCKETNAME = s3_utils.S3_IGNORE_SUBDOMAIN_BUCKETNAME = "true"

    fleet_init = fleets.Fleet.__init__
    run_instances = instances.InstanceBackend.run_instances

    def init(self: Any, ec2_backend: Any, fleet_id: str, *args: Any, **kwargs: Any) -> None:
        configs = kwargs.get("launch_template_configs")
        if configs is None:
            configs = args[3]  # on_demand_options, spot_options, target_capacity, launch_template_configs
        _launching.data = [_template_data(ec2_backend, c["LaunchTemplateSpecification"]) for c in configs or []]
        try:
            fleet_init(self, ec2_backend, fleet_id, *args, **kwargs)
        finally:
            _launching.data = None

    def run(self: Any, image_id: str, count: int, user_data: Any, security_group_names: list[str],
            **kwargs: Any) -> Any:
        data = next(iter(getattr(_launching, "data", None) or []), None)
        if data is not None:
            if data.get("SecurityGroupIds"):  # a spot request passes the VPC's default group
                kwargs["security_group_ids"] = list(data["SecurityGroupIds"])
                security_group_names = []
            kwargs.setdefault("associate_public_ip", None)  # None: as the subnet maps it
            if kwargs.get("associate_public_ip") is False:
                kwargs["associate_public_ip"] = None
        return run_instances(self, image_id, count, user_data, security_group_names, **kwargs)

    fleets.Fleet.__init__ = init  # type: ignore[method-assign]
    instances.InstanceBackend.run_instances = run  # type: ignore[method-assign]
    elastic_network_interfaces.random_public_ip = lambda: _applied[0]()


def _template_data(ec2_backend: Any, spec: dict[str, Any]) -> dict[str, Any]:
    if "LaunchTemplateId" in spec:
        template = ec2_backend.get_launch_template(template_id=spec["LaunchTemplateId"])
    else:
        template = ec2_backend.get_launch_template_by_name(name=spec["LaunchTemplateName"])
    version = spec.get("Version")
    if version in (None, "$Default"):
        version = template.default_version_number
    elif version == "$Latest":
        version = template.latest_version_number
    return template.get_version(version).data
