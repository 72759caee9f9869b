"""The AWS backend: clusters of EC2 instances in the network ``coiled-lab setup aws`` prepared.

A straight line of cloud calls per :class:`~coiled_lab.backends.base.Backend` method;
the manager does the ordering, retries, timeouts and replacement. What this class keeps
in memory only saves calls, and is never needed for correctness after a restart:

- a *view* of each cluster's instances: the last ``DescribeInstances`` (by tag), kept for
  ``coiled-lab.aws.poll-interval`` seconds and updated by this process's own launches and
  terminations — the manager asks every 0.1 s while a cluster starts;
- the instances this process launched, until ``DescribeInstances`` shows them: EC2's
  API is eventually consistent, and a machine launched a second ago may not be listed yet;
- which clusters this process saw from their first launch attempt and left no launch
  template for, so stopping them needs no search for leftovers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from ... import config, pricing
from ..base import Instance
from ...logs import LogRecord
from ...spec import ClusterSpec, ClusterSpecError
from ..base import Backend, ClusterContext, check_reachable, check_vm_software, owner_id
from ..envstore import boot_fields
from ..ingress import address_of, reach
from . import envstore, fleet, logs, network, sweep, userdata
from .catalog import Catalog, SnapshotCatalog
from .images import Images
from .network import SCHEDULER_PORT
from .session import AWSError, AWSSession, check_region, error_code
from .tags import CLUSTER, OWNER, ROLE, as_dict, tag_filter

logger = logging.getLogger("coiled_lab.aws")


def _asked_region(region: Optional[str]) -> str:
    """The region a spec or request names, else the configured one; refused (no call) if
    AWS does not have it."""
    return check_region(region or config.get("aws.region"))


# A launched instance missing from DescribeInstances for longer than this is gone.
LISTING_DELAY = 120.0


class AWSBackend(Backend):
    name = "aws"

    def __init__(self, session: Any = None):
        """``session``: a boto3 or botocore session holding the credentials to use
        (default: boto3's standard chain)."""
        self.aws = AWSSession(session)
        self.types = Catalog(self.aws)
        self.images = Images(self.aws)
        self._views: dict[str, tuple[float, dict[str, Instance]]] = {}
        self._unlisted: dict[str, dict[str, Instance]] = {}
        self._clean: set[str] = set()
        self._stores: dict[tuple[str, str], envstore.S3Store] = {}

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def region(cluster: ClusterContext) -> str:
        return cluster.state.get("region") or cluster.spec.region or config.get("aws.region")

    @staticmethod
    def _tags(cluster: ClusterContext, role: str) -> dict[str, str]:
        # ClusterContext.directory is <state dir>/clusters/<id>: the owner is that store.
        return {
            "Name": f"coiled-lab-{cluster.name}-{role}",
            **cluster.spec.tags,
            CLUSTER: cluster.id,
            ROLE: role,
            OWNER: owner_id(cluster.directory.parent.parent),
        }

    async def _software(self, cluster: ClusterContext, role: str) -> dict[str, Any]:
        """config.json's software fields (:func:`coiled_lab.backends.envstore.boot_fields`)."""
        bucket, store = cluster.state.get("env_bucket"), None
        if bucket:
            store = self._stores.setdefault((self.region(cluster), bucket), envstore.S3Store(
                self.aws, self.region(cluster), bucket, cluster.state.get("env_bucket_owner")))
        return await boot_fields(cluster.environment, store, role, self.name, cluster.notify)

    def _instance(self, item: dict[str, Any], region: str) -> Instance:
        tags = as_dict(item.get("Tags"))
        private, public = item.get("PrivateIpAddress"), item.get("PublicIpAddress")
        return Instance(
            id=item["InstanceId"],
            role=tags.get(ROLE, "worker"),
            address=private,
            vm_type=item.get("InstanceType"),
            zone=item.get("Placement", {}).get("AvailabilityZone"),
            spot=item.get("InstanceLifecycle") == "spot",
            launched_at=item["LaunchTime"].timestamp(),
            data={"private_ip": private, "public_ip": public, "region": region},
        )

    def _add_to_view(self, cluster_id: str, instances: list[Instance]) -> None:
        self._unlisted.setdefault(cluster_id, {}).update({i.id: i for i in instances})
        if cluster_id in self._views:
            self._views[cluster_id][1].update({i.id: i for i in instances})

    # -- Backend interface --------------------------------------------------------------------
    async def check_access(self, region: Optional[str] = None) -> None:
        """Credentials resolve locally (environment, profile, the server's store; an
        instance role is looked up in IMDS, which only answers on EC2), and EC2's endpoint
        answers a connect."""
        import asyncio

        from botocore.exceptions import NoCredentialsError

        if await asyncio.to_thread(self.aws.boto3.get_credentials) is None:
            raise NoCredentialsError()
        region = _asked_region(region)
        await check_reachable(self.aws.endpoint("ec2", region), f"AWS (ec2.{region})")

    def check_spec(self, spec: ClusterSpec) -> None:
        _asked_region(spec.region)
        check_vm_software(spec, self.name)

    async def environment_built(self, env_hash: str, region: Optional[str] = None) -> Optional[bool]:
        from ..envstore import ARCHIVE

        store = await envstore.find(self.aws, _asked_region(region))
        return None if store is None else await store.exists(ARCHIVE.format(hash=env_hash))

    async def ensure_network(self, cluster: ClusterContext) -> dict[str, Any]:
        region = self.region(cluster)
        net = await network.find(self.aws, region, config.get("aws.vpc-id"))
        if cluster.spec.zone and cluster.spec.zone not in net.subnets:
            raise ClusterSpecError(f"zone: {cluster.spec.zone!r} is not allowed: coiled-lab's network in {region} "
                                   f"has subnets in {', '.join(net.subnets)}", "zone")
        via, cidr = await reach(cluster.spec.connect_via, cluster.spec.allow_ingress_from, self.name, net.vpc_id,
                                self.aws.endpoint("ec2", region), AWSError)
        ingress = await network.ingress_group(self.aws, region, net, cidr)
        ssh = await self._ssh_group(cluster, net, region)
        store = await envstore.find(self.aws, region) if cluster.environment is not None else None
        return {**net.to_state(), "region": region, "ingress_group": ingress, "ingress_cidr": cidr, "connect_via": via,
                "ssh_group": ssh,
                "env_bucket": store.bucket if store else None,
                "env_bucket_owner": store.owner if store else None}

    async def launch_scheduler(self, cluster: ClusterContext) -> Instance:
        region, spec = self.region(cluster), cluster.spec
        scheduler_type, worker_types = await self.types.choose(spec, region)
        offered = await self.types.zones(region, sorted({scheduler_type.name, *(t.name for t in worker_types)}))
        # Only zones where the workers can follow (they stay in the scheduler's zone).
        zones = [z for z in self._zones(cluster) if z in offered[scheduler_type.name]
                 and any(z in offered[t.name] for t in worker_types)]
        if not zones:
            raise AWSError(f"no zone of coiled-lab's network in {region} offers both {scheduler_type.name} "
                           f"and any of {', '.join(t.name for t in worker_types)}")
        bootstrap = userdata.bootstrap_config(cluster.id, spec, cluster.tls, "scheduler",
                                              software=await self._software(cluster, "scheduler"))
        tags = self._tags(cluster, "scheduler")
        data = fleet.template_data(
            await self.images.image(region, scheduler_type.kind), config.get("aws.instance-profile"),
            [cluster.state["cluster_group"], cluster.state["ingress_group"], *self._ssh(cluster)],
            userdata.build(bootstrap), tags, scheduler_type.name,
        )
        pools = [fleet.Pool(scheduler_type, z, cluster.state["subnets"][z]) for z in zones]
        launched = await fleet.launch(self.aws, region, f"coiled-lab-{cluster.id}-scheduler", data, tags, pools,
                                      1, "scheduler", notify=cluster.notify)
        self._add_to_view(cluster.id, launched.instances)
        zone = launched.instances[0].zone
        if zone != zones[0]:
            cluster.notify("capacity", f"no capacity for the scheduler ({scheduler_type.name}) in {zones[0]}; "
                                       f"the cluster runs in {zone}")
        # Seen from its very first launch attempt (the manager counts them in the store,
        # so not after a crash or a failed attempt), with no template left: stopping
        # needs no search for leftovers.
        if launched.template_left is None and cluster.state.get("scheduler_attempts", 1) == 1:
            self._clean.add(cluster.id)
        return launched.instances[0]

    async def scheduler_address(self, cluster: ClusterContext, scheduler: Instance) -> Optional[str]:
        address = address_of((await self._located(cluster, scheduler)).data, cluster.state.get("connect_via"))
        return f"tls://{address}:{SCHEDULER_PORT}" if address else None

    async def launch_workers(self, cluster: ClusterContext, count: int) -> list[Instance]:
        region, spec = self.region(cluster), cluster.spec
        _, worker_types = await self.types.choose(spec, region)
        scheduler = next((i for i in cluster.instances if i.role == "scheduler"), None) or \
            next((i for i in (await self.describe(cluster)) if i.role == "scheduler"), None)
        if scheduler is None:
            raise AWSError("the cluster has no scheduler to attach workers to")
        scheduler = await self._located(cluster, scheduler)
        if not scheduler.data.get("private_ip"):
            raise AWSError(f"the scheduler {scheduler.id} has no private address yet")
        offered = await self.types.zones(region, sorted(t.name for t in worker_types))
        zones = [scheduler.zone] if not spec.allow_cross_zone else [
            scheduler.zone, *(z for z in self._zones(cluster) if z != scheduler.zone)]
        pools = [fleet.Pool(t, z, cluster.state["subnets"][z]) for z in zones for t in worker_types
                 if z in offered[t.name]]
        kind = worker_types[0].kind
        bootstrap = userdata.bootstrap_config(
            cluster.id, spec, cluster.tls, "worker",
            scheduler_address=f"tls://{scheduler.data['private_ip']}:{SCHEDULER_PORT}", gpu=kind == "gpu",
            software=await self._software(cluster, "worker"),
        )
        tags = self._tags(cluster, "worker")
        data = fleet.template_data(
            await self.images.image(region, kind), config.get("aws.instance-profile"),
            [cluster.state["cluster_group"], *self._ssh(cluster)], userdata.build(bootstrap), tags,
            worker_types[0].name, await self._worker_disk(region, kind, spec.worker_disk_size),
        )
        try:
            launched = await fleet.launch(self.aws, region, f"coiled-lab-{cluster.id}-workers", data, tags, pools,
                                          count, "worker", spec.spot_policy, notify=cluster.notify)
        except BaseException:
            # A request that failed may still have made its template (its answer was lost).
            self._clean.discard(cluster.id)
            raise
        self._add_to_view(cluster.id, launched.instances)
        if launched.template_left is not None:
            self._clean.discard(cluster.id)
        return launched.instances

    async def stop_instances(self, cluster: ClusterContext, instances: list[Instance]) -> None:
        ids = [i.id for i in instances]
        await sweep.terminate(self.aws, self.region(cluster), ids)
        for known in (self._unlisted.get(cluster.id, {}), self._views.get(cluster.id, (0, {}))[1]):
            for instance_id in ids:
                known.pop(instance_id, None)

    async def describe(self, cluster: ClusterContext) -> list[Instance]:
        view = self._views.get(cluster.id)
        if view and time.monotonic() - view[0] < float(config.get("aws.poll-interval")):
            return list(view[1].values())
        reservations = await self.aws.pages("ec2", self.region(cluster), "describe_instances", "Reservations",
                                            Filters=[tag_filter(CLUSTER, cluster.id)])
        listed = [item for r in reservations for item in r["Instances"]]
        alive = {item["InstanceId"]: self._instance(item, self.region(cluster)) for item in listed
                 if item["State"]["Name"] in sweep.ALIVE}
        unlisted = self._unlisted.get(cluster.id, {})
        for item in listed:
            unlisted.pop(item["InstanceId"], None)
        for instance_id, instance in list(unlisted.items()):
            if time.time() - instance.launched_at < LISTING_DELAY:
                alive.setdefault(instance_id, instance)
            else:
                del unlisted[instance_id]
        self._views[cluster.id] = (time.monotonic(), alive)
        return list(alive.values())

    async def logs(self, cluster: ClusterContext, since: Optional[float] = None) -> list[LogRecord]:
        region = self.region(cluster)
        records = await logs.cluster_logs(self.aws, region, config.get("aws.log-group"), cluster.id, since)
        if since is None:
            reported = {r.instance for r in records}
            silent = [i for i in cluster.instances if i.id not in reported]
            if silent:
                records = sorted(records + await logs.console_logs(self.aws, region, silent), key=lambda r: r.time)
        return records

    async def cleanup(self, cluster: ClusterContext) -> list[str]:
        running = await self.describe(cluster)  # just updated by a stop, usually: no call
        if running:
            await self.stop_instances(cluster, running)
        removed = [f"{i.role} {i.id}" for i in running]
        if cluster.id not in self._clean:
            removed += await sweep.leftovers(self.aws, self.region(cluster), cluster.id)
        self._views.pop(cluster.id, None)
        self._clean.discard(cluster.id)
        return removed

    async def catalog(self, region: Optional[str] = None) -> dict[str, Any]:
        region = _asked_region(region)
        return await pricing.catalog_view(self.types.describe_region(region),
                                          lambda: SnapshotCatalog().describe_region(region), pricing.CATALOGS["aws"])

    async def price_inputs(self, spec: ClusterSpec) -> dict[str, Any]:
        region = _asked_region(spec.region)
        scheduler_type, worker_types = await self.types.choose(spec, region)
        worker = worker_types[0]
        spot_price = None
        if spec.spot_policy != "on-demand":
            spot_price = (await self.types.spot_prices(region, [worker.name])).get(worker.name)
        size, kind = await self.images.root_disk(region, worker.kind)
        size = spec.worker_disk_size or size
        return {"region": region, "scheduler_type": scheduler_type.name, "worker_type": worker.name,
                "spot_price": spot_price, "volume_gb": size, "volume_type": kind}

    async def offline_inputs(self, spec: ClusterSpec) -> dict[str, Any]:
        """:meth:`price_inputs` from the price snapshot, for when EC2 cannot answer: no spot
        price, and no root disk (its size is the image's, known only to EC2)."""
        region = _asked_region(spec.region)
        scheduler_type, worker_types = await SnapshotCatalog().choose(spec, region)
        return {"region": region, "scheduler_type": scheduler_type.name, "worker_type": worker_types[0].name,
                "spot_price": None, "volume_gb": None, "volume_type": None}

    async def instance_price(self, instance: Instance, book: Any) -> float:
        region = instance.data.get("region") or config.get("aws.region")
        if instance.spot:
            price = (await self.types.spot_prices(region, [instance.vm_type])).get(instance.vm_type)
            if price is not None:
                return price
        if book.aws is None:
            book.aws = self.aws  # the Price List API answers with this backend's credentials
        return (await book.aws_on_demand(region, instance.vm_type))["price"]

    # -- more helpers ---------------------------------------------------------------------------
    def _zones(self, cluster: ClusterContext) -> list[str]:
        """The zones the scheduler may go to, in order: the spec's; else every zone of the
        network (EC2 takes the first with capacity: use_best_zone); else only the first."""
        subnets = cluster.state["subnets"]
        if cluster.spec.zone:
            return [cluster.spec.zone]
        return list(subnets) if cluster.spec.use_best_zone else list(subnets)[:1]

    async def _ssh_group(self, cluster: ClusterContext, net: Any, region: str) -> Optional[str]:
        """The group opening port 22 to ``allow_ssh_from`` (None: SSH stays closed)."""
        allowed = cluster.spec.allow_ssh_from
        if not allowed:
            return None
        if allowed == "me":
            _, allowed = await reach(cluster.spec.connect_via, "me", self.name, net.vpc_id,
                                     self.aws.endpoint("ec2", region), AWSError)
        return await network.ssh_group(self.aws, region, net, allowed)

    @staticmethod
    def _ssh(cluster: ClusterContext) -> list[str]:
        return [cluster.state["ssh_group"]] if cluster.state.get("ssh_group") else []

    async def _worker_disk(self, region: str, kind: str, size: Optional[int]) -> Optional[dict[str, Any]]:
        """The root disk of a worker of ``worker_disk_size`` GiB (None: the image's): the
        image's root device, its EBS type, the size asked for."""
        if not size:
            return None
        device, volume_type = await self.images.root_device(region, kind)
        return {"DeviceName": device, "Ebs": {"VolumeSize": size, "VolumeType": volume_type,
                                              "DeleteOnTermination": True}}

    async def _located(self, cluster: ClusterContext, instance: Instance) -> Instance:
        """``instance`` with its addresses, asking EC2 if this process has not seen them."""
        view = self._views.get(cluster.id, (0, {}))[1]
        known = view.get(instance.id) or self._unlisted.get(cluster.id, {}).get(instance.id) or instance
        if address_of(known.data, cluster.state.get("connect_via")) and known.data.get("private_ip"):
            return known
        try:
            answer = await self.aws.call("ec2", self.region(cluster), "describe_instances", InstanceIds=[instance.id])
        except Exception as exc:
            if error_code(exc) == "InvalidInstanceID.NotFound":  # launched a moment ago: not listed yet
                return known
            raise
        items = [item for r in answer["Reservations"] for item in r["Instances"]]
        if not items:
            return known
        located = self._instance(items[0], self.region(cluster))
        for known_ones in (view, self._unlisted.get(cluster.id, {})):
            if located.id in known_ones:
                known_ones[located.id] = located
        return located
