"""The GCP backend: clusters of Compute Engine VMs in the network ``coiled-lab setup gcp`` prepared.

A straight line of cloud calls per :class:`~coiled_lab.backends.base.Backend` method; the
manager does the ordering, retries, timeouts and replacement. What this class keeps in
memory only saves calls, and is never needed for correctness after a restart: a *view* of
each cluster's VMs (the last ``aggregatedList`` by label, kept for
``coiled-lab.gcp.poll-interval`` seconds and updated by this process's own launches and
deletions — the manager asks every 0.1 s while a cluster starts).

A VM whose bootstrap ended deletes itself, disk and all (:mod:`.startup`; each launch lets
its new VMs do so, :func:`.instances.grant_self_delete`), so nothing of it bills even when
no control plane is left. One that could not powers off; GCE keeps it, stopped
(``TERMINATED``), and stops billing its vCPUs and memory but not its disk. Such VMs of a
cluster are deleted (one batch request) the second time a listing shows them — the
manager reads a failed boot's serial output in between — and by :meth:`cleanup`;
``coiled-lab cleanup`` removes them when no control plane is left to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping, Optional

from ... import config, pricing, utc
from ..base import Instance
from ...logs import LogRecord
from ...pricing import PriceBook
from ...spec import ClusterSpec, ClusterSpecError
from .. import bootconfig, ingress
from ..base import Backend, ClusterContext, check_reachable, check_vm_software, owner_id
from ..envstore import ARCHIVE, boot_fields
from . import envstore, instances, logs, network, startup, sweep
from .catalog import Catalog, Images, MachineType, SnapshotCatalog
from .labels import CLUSTER, NETWORK_TAG, ROLE, cluster_labels
from .session import GCPError, GCPSession, is_not_found

logger = logging.getLogger("coiled_lab.gcp")


class GCPBackend(Backend):
    name = "gcp"

    def __init__(self, credentials: Any = None):
        """``credentials``: google.auth credentials to use (the Jupyter server passes the
        service account an admin stored); None: Application Default Credentials."""
        self.gcp = GCPSession(credentials)
        self.types = Catalog(self.gcp, self._prices)
        self.images = Images(self.gcp)
        self._views: dict[str, tuple[float, dict[str, Instance]]] = {}
        self._stopped: dict[str, dict[str, str]] = {}  # cluster -> powered-off VM -> zone, seen once
        self._stores: dict[str, envstore.GCSStore] = {}

    @property
    def credentials(self) -> Any:
        """The google.auth credentials in use (blocking: ADC may ask the metadata server);
        DefaultCredentialsError when there are none. Pricing asks the billing catalog with them."""
        return self.gcp.credentials

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def region(cluster: ClusterContext) -> str:
        return cluster.state.get("region") or cluster.spec.region or config.get("gcp.region")

    @staticmethod
    def _labels(cluster: ClusterContext, role: str) -> dict[str, str]:
        # ClusterContext.directory is <state dir>/clusters/<id>: the owner is that store.
        return cluster_labels(cluster.spec.tags, cluster.id, role, owner_id(cluster.directory.parent.parent))

    async def _software(self, cluster: ClusterContext, role: str) -> dict[str, Any]:
        """config.json's software fields (:func:`coiled_lab.backends.envstore.boot_fields`)."""
        bucket, store = cluster.state.get("env_bucket"), None
        if bucket:
            store = self._stores.setdefault(bucket, envstore.GCSStore(self.gcp, bucket))
        return await boot_fields(cluster.environment, store, role, self.name, cluster.notify)

    async def _script(self, cluster: ClusterContext, role: str, machine: MachineType,
                      scheduler_address: Optional[str] = None) -> str:
        bootstrap = bootconfig.bootstrap_config(
            "gcp", cluster.id, cluster.spec, cluster.tls, role, scheduler_address, gpu=machine.kind == "gpu",
            software=await self._software(cluster, role), project=self.gcp.project,
            log_name=config.get("gcp.log-name"), logging_endpoint=self.gcp.endpoint("logging"),
        )
        return startup.build(bootconfig.archive(bootstrap), bootstrap, self.gcp.endpoint("compute"))

    def _instance(self, item: Any, region: str) -> Instance:
        interface = item.network_interfaces[0] if item.network_interfaces else None
        private = interface.network_i_p if interface else None
        public = interface.access_configs[0].nat_i_p if interface and interface.access_configs else None
        vm_type = item.machine_type.rsplit("/", 1)[-1]
        known = self.types.known(region, vm_type)
        created = item.creation_timestamp
        return Instance(
            id=item.name,
            role=item.labels.get(ROLE, "worker"),
            address=private or None,
            vm_type=vm_type,
            zone=item.zone.rsplit("/", 1)[-1],
            spot=item.scheduling.provisioning_model == "SPOT",
            launched_at=utc.parse(created) if created else time.time(),
            data={"private_ip": private, "public_ip": public, "region": region,
                  **({"machine": known.machine()} if known else {})},
        )

    async def _prices(self, region: str, machines: list[MachineType], spot: bool) -> Mapping[str, Optional[float]]:
        """$/hour of these machine types, for choosing among them: from the manager's price
        book (the Cloud Billing Catalog asked with this backend's credentials, cached in
        the store for a day, as estimates and costs are); a backend used without a manager
        (a script, a benchmark) orders them by the bundled snapshot, asking no one."""
        book = self.prices
        if book is None:
            book = PriceBook()
        else:
            await book.adopt("gcp", self)
        return await book.gcp_machines(region, [m.machine() for m in machines], spot)

    def _remember(self, cluster_id: str, launched: list[Instance]) -> None:
        if cluster_id in self._views:
            self._views[cluster_id][1].update({i.id: i for i in launched})

    # -- Backend interface --------------------------------------------------------------------
    async def check_access(self, region: Optional[str] = None) -> None:
        """Credentials resolve locally (the server's store, ADC: a key file, gcloud's
        login; on GCE the metadata server is asked, which only answers there), and
        Compute Engine's endpoint answers a connect."""
        await asyncio.to_thread(lambda: self.gcp.project)
        await check_reachable(self.gcp.endpoint("compute"), "Google Cloud (Compute Engine)")

    def check_spec(self, spec: ClusterSpec) -> None:
        if spec.arm:
            raise ClusterSpecError("arm: True is not allowed: coiled-lab has no ARM (Tau T2A) image on GCP; use "
                                   "backend 'aws' (Graviton), or leave arm out", "arm")
        check_vm_software(spec, self.name)

    @staticmethod
    def _ssh(cluster: ClusterContext) -> list[str]:
        return [cluster.state["ssh_tag"]] if cluster.state.get("ssh_tag") else []

    async def environment_built(self, env_hash: str, region: Optional[str] = None) -> Optional[bool]:
        # One bucket per project, whatever the region.
        store = await envstore.find(self.gcp)
        return None if store is None else await store.exists(ARCHIVE.format(hash=env_hash))

    async def ensure_network(self, cluster: ClusterContext) -> dict[str, Any]:
        region = self.region(cluster)
        net = await network.find(self.gcp, region)
        if cluster.spec.zone:
            zones = await self.types.zones(region)
            if cluster.spec.zone not in zones:
                raise ClusterSpecError(f"zone: {cluster.spec.zone!r} is not allowed: {region} has zones "
                                       f"{', '.join(zones)}", "zone")
        via, cidr = await ingress.reach(cluster.spec.connect_via, cluster.spec.allow_ingress_from, self.name,
                                        f"{self.gcp.project}/{config.get('gcp.network')}", self.gcp.endpoint("compute"),
                                        GCPError)
        tag = await network.ensure_ingress(self.gcp, net, cidr)
        ssh = None
        if cluster.spec.allow_ssh_from:
            allowed = cluster.spec.allow_ssh_from
            if allowed == "me":
                where = f"{self.gcp.project}/{config.get('gcp.network')}"
                _, allowed = await ingress.reach(via, "me", self.name, where, self.gcp.endpoint("compute"), GCPError)
            ssh = await network.ensure_ssh(self.gcp, net, allowed)
        store = None
        if cluster.environment is not None:
            store = await envstore.find(self.gcp, lambda message: cluster.notify("software", message))
        return {**net.to_state(), "region": region, "ingress_tag": tag, "ingress_cidr": cidr, "connect_via": via,
                "ssh_tag": ssh,
                "env_bucket": store.bucket if store else None}

    async def launch_scheduler(self, cluster: ClusterContext) -> Instance:
        region, spec = self.region(cluster), cluster.spec
        scheduler_type, worker_types = await self.types.choose(spec, region)
        worker_zones = {z for t in worker_types for z in t.zones}
        zones = [z for z in ([spec.zone] if spec.zone else await self.types.zones(region))
                 if z in scheduler_type.zones and z in worker_zones]
        if not spec.use_best_zone:  # only the first zone, not the first one with capacity
            zones = zones[:1]
        if not zones:
            raise GCPError(f"no zone of {region} offers both {scheduler_type.name} and any of "
                           f"{', '.join(t.name for t in worker_types)}")
        image = await self.images.image(scheduler_type.kind)
        script = await self._script(cluster, "scheduler", scheduler_type)
        labels = self._labels(cluster, "scheduler")
        name = f"coiled-lab-{cluster.id}-scheduler"
        zone, refused = await instances.insert_scheduler(
            self.gcp, name, zones,
            lambda z: instances.properties(scheduler_type, z, image, cluster.state["subnetwork"], self.gcp.project,
                                           script, labels,
                                           [NETWORK_TAG, cluster.state["ingress_tag"], *self._ssh(cluster)],
                                           spot=False,
                                           storage=bool(cluster.state.get("env_bucket")),
                                           lifetime_left=spec.max_lifetime))
        await self._let_delete_themselves(cluster, [(zone, name)])
        if refused:
            cluster.notify("capacity", f"no capacity for the scheduler ({scheduler_type.name}) in "
                                       f"{', '.join(r.split(':')[0] for r in refused)}; the cluster runs in {zone}")
        launched = Instance(id=name, role="scheduler", vm_type=scheduler_type.name, zone=zone, spot=False,
                            data={"region": region, "machine": scheduler_type.machine()})
        self._remember(cluster.id, [launched])
        return launched

    async def scheduler_address(self, cluster: ClusterContext, scheduler: Instance) -> Optional[str]:
        address = ingress.address_of((await self._located(cluster, scheduler)).data, cluster.state.get("connect_via"))
        return f"tls://{address}:{ingress.SCHEDULER_PORT}" if address else None

    async def launch_workers(self, cluster: ClusterContext, count: int) -> list[Instance]:
        region, spec = self.region(cluster), cluster.spec
        _, worker_types = await self.types.choose(spec, region)
        scheduler = next((i for i in await self.describe(cluster) if i.role == "scheduler"), None)
        if scheduler is None:
            raise GCPError("the cluster has no scheduler to attach workers to")
        scheduler = await self._located(cluster, scheduler)
        if not scheduler.data.get("private_ip"):
            raise GCPError(f"the scheduler {scheduler.id} has no private address yet")
        all_zones = await self.types.zones(region)
        allowed = [scheduler.zone] if not spec.allow_cross_zone else [
            scheduler.zone, *(z for z in all_zones if z != scheduler.zone)]
        offered = [t for t in worker_types if set(allowed) & set(t.zones)]
        if not offered:
            raise GCPError(f"none of {', '.join(t.name for t in worker_types)} is offered in {', '.join(allowed)}")
        # The types are of one kind: one image and one startup script serve them all.
        image = await self.images.image(offered[0].kind)
        script = await self._script(cluster, "worker", offered[0],
                                    f"tls://{scheduler.data['private_ip']}:{ingress.SCHEDULER_PORT}")
        labels = self._labels(cluster, "worker")
        # GCE's deadline for the workers is the scheduler's: its launch plus the cluster's max_lifetime.
        lifetime_left = scheduler.launched_at + spec.max_lifetime - time.time() if spec.max_lifetime else None
        # One type per bulkInsert: the first choice, and the next one only when GCE has no
        # capacity for it in any zone the workers may use.
        refused: list[str] = []
        for machine in offered:
            zones = [z for z in allowed if z in machine.zones]
            try:
                launched = await instances.launch_workers(
                    self.gcp, region, zones, all_zones, min(count, instances.MAX_BULK),
                    lambda spot, m=machine: instances.properties(m, None, image, cluster.state["subnetwork"],
                                                                 self.gcp.project, script, labels,
                                                                 [NETWORK_TAG, *self._ssh(cluster)], spot,
                                                                 storage=bool(cluster.state.get("env_bucket")),
                                                                 lifetime_left=lifetime_left,
                                                                 disk_size_gb=spec.worker_disk_size),
                    f"coiled-lab-{cluster.id}-w", spec.spot_policy, machine, cluster.notify)
            except instances.NoCapacity as exc:
                refused.append(f"{machine.name} in {', '.join(zones)} ({exc.code})")
                continue
            break
        else:
            raise GCPError(f"GCE has no capacity for workers of any allowed machine type: {'; '.join(refused)}")
        if refused:
            cluster.notify("capacity", f"no capacity for {'; '.join(refused)}; {len(launched)} workers run on "
                                       f"{machine.name} instead")
        elsewhere = sorted({i.zone or "other zones" for i in launched} - {scheduler.zone})
        if elsewhere:
            cluster.notify("capacity", f"{len(launched)} workers ({machine.name}) run in {', '.join(elsewhere)}, "
                                       f"not in the scheduler's zone {scheduler.zone} (allow_cross_zone)")
        self._remember(cluster.id, launched)
        await self._let_delete_themselves(cluster, await self._zoned(cluster, launched))
        return launched

    async def _zoned(self, cluster: ClusterContext, instances_: list[Instance]) -> list[tuple[str, str]]:
        """(zone, name) of these VMs, listing the cluster once for those launched across
        zones that this process has not seen listed; VMs that are gone are left out."""
        view = self._views.get(cluster.id, (0, {}))[1]
        targets = []
        for instance in instances_:
            zone = instance.zone or (view.get(instance.id).zone if view.get(instance.id) else None)
            if zone:
                targets.append((zone, instance.id))
        if len(targets) < len(instances_):
            listed = {i.name: i.zone.rsplit("/", 1)[-1] for i in
                      await sweep.listed(self.gcp, self.region(cluster), CLUSTER, cluster.id)}
            targets += [(listed[i.id], i.id) for i in instances_ if i.id in listed and (listed[i.id], i.id)
                        not in targets]
        return targets

    async def _let_delete_themselves(self, cluster: ClusterContext, vms: list[tuple[str, str]]) -> None:
        """Grant each new VM the right to delete itself (:func:`.instances.grant_self_delete`).
        Refused, the VMs still run: they power off when they end and are deleted when this
        backend next lists them, which the user is told once, with how to fix it."""
        try:
            await instances.grant_self_delete(self.gcp, vms)
        except Exception as exc:  # noqa: BLE001 - a missing grant costs a stopped VM's minutes, not the cluster
            cluster.notify("self-delete", f"VMs of this cluster cannot delete themselves when they end ({exc}); "
                                          "they power off instead and coiled-lab deletes them when it next looks, "
                                          "so their disks bill until then. Run `coiled-lab setup gcp` again (it "
                                          f"makes the role {instances.SELF_DELETE_ROLE_ID}) and let the everyday "
                                          "credentials set IAM policies on instances (roles/compute.instanceAdmin.v1)")

    async def stop_instances(self, cluster: ClusterContext, instances_: list[Instance]) -> None:
        view = self._views.get(cluster.id, (0, {}))[1]
        await instances.delete(self.gcp, await self._zoned(cluster, instances_))
        for instance in instances_:
            view.pop(instance.id, None)

    async def describe(self, cluster: ClusterContext) -> list[Instance]:
        view = self._views.get(cluster.id)
        if view and time.monotonic() - view[0] < float(config.get("gcp.poll-interval")):
            return list(view[1].values())
        region = self.region(cluster)
        listed = await sweep.listed(self.gcp, region, CLUSTER, cluster.id)
        alive = {item.name: self._instance(item, region) for item in listed if item.status in instances.ALIVE}
        # Powered off: their bootstrap ended. Deleted when seen a second time, so that the
        # manager can read a failed boot's serial output in between.
        stopped = {item.name: item.zone.rsplit("/", 1)[-1] for item in listed if item.status not in instances.ALIVE}
        seen = self._stopped.get(cluster.id, {})
        done = [(zone, name) for name, zone in stopped.items() if name in seen]
        if done:
            await instances.delete(self.gcp, done)
        self._stopped[cluster.id] = {name: zone for name, zone in stopped.items() if name not in seen}
        self._views[cluster.id] = (time.monotonic(), alive)
        return list(alive.values())

    async def logs(self, cluster: ClusterContext, since: Optional[float] = None) -> list[LogRecord]:
        records = await logs.cluster_logs(self.gcp, config.get("gcp.log-name"), cluster.id, since)
        if since is None:
            reported = {r.instance for r in records}
            silent = [i for i in cluster.instances if i.id not in reported]
            if silent:
                records = sorted(records + await logs.serial_logs(self.gcp, silent), key=lambda r: r.time)
        return records

    async def cleanup(self, cluster: ClusterContext) -> list[str]:
        running = await self.describe(cluster)  # just updated by a stop, usually: no call
        stopped = self._stopped.pop(cluster.id, {})
        if running or stopped:
            await instances.delete(self.gcp, [(i.zone, i.id) for i in running if i.zone] +
                                   [(zone, name) for name, zone in stopped.items()])
        self._views.pop(cluster.id, None)
        return [f"{i.role} {i.id}" for i in running] + [f"stopped VM {name}" for name in stopped]

    async def catalog(self, region: Optional[str] = None) -> dict[str, Any]:
        region = region or config.get("gcp.region")
        return await pricing.catalog_view(self.types.describe_region(region),
                                          lambda: self._offline_types().describe_region(region),
                                          pricing.CATALOGS["gcp"])

    @staticmethod
    def _offline_types() -> SnapshotCatalog:
        """The snapshot's machine types, priced by a book without credentials (the snapshot's)."""
        async def prices(region: str, machines: list[MachineType], spot: bool) -> Mapping[str, Optional[float]]:
            return await PriceBook().gcp_machines(region, [m.machine() for m in machines], spot)

        return SnapshotCatalog(prices)

    async def offline_inputs(self, spec: ClusterSpec) -> dict[str, Any]:
        """:meth:`price_inputs` from the price snapshot, for when Compute Engine cannot answer."""
        region = spec.region or config.get("gcp.region")
        scheduler_type, worker_types = await self._offline_types().choose(spec, region)
        return self._inputs(region, scheduler_type, worker_types[0], spec.worker_disk_size)

    async def price_inputs(self, spec: ClusterSpec) -> dict[str, Any]:
        region = spec.region or config.get("gcp.region")
        scheduler_type, worker_types = await self.types.choose(spec, region)
        return self._inputs(region, scheduler_type, worker_types[0], spec.worker_disk_size)

    @staticmethod
    def _inputs(region: str, scheduler: MachineType, worker: MachineType,
                disk_gb: Optional[int] = None) -> dict[str, Any]:
        return {"region": region, "scheduler_type": scheduler.name, "worker_type": worker.name,
                "scheduler_machine": scheduler.machine(), "worker_machine": worker.machine(),
                "spot_price": None, "volume_gb": int(disk_gb or config.get("gcp.disk-size-gb")),
                "volume_type": config.get("gcp.disk-type")}

    async def instance_price(self, instance: Instance, book: Any) -> float:
        region = instance.data.get("region") or config.get("gcp.region")
        machine = instance.data.get("machine")
        if machine is None:  # found by describe() before the catalog was read
            (known,) = await self.types.named(region, [instance.vm_type or ""], "vm_type")
            machine = known.machine()
        return (await book.gcp_machine(region, machine, spot=instance.spot))["price"]

    # -- more helpers ---------------------------------------------------------------------------
    async def _located(self, cluster: ClusterContext, instance: Instance) -> Instance:
        """``instance`` with its addresses, asking GCE if this process has not seen them."""
        view = self._views.get(cluster.id, (0, {}))[1]
        known = view.get(instance.id) or instance
        if known.data.get("private_ip") and ingress.address_of(known.data, cluster.state.get("connect_via")):
            return known
        if not known.zone:
            return known
        try:
            item = await self.gcp.call(self.gcp.compute("Instances").get, project=self.gcp.project, zone=known.zone,
                                       instance=instance.id)
        except Exception as exc:
            if is_not_found(exc):
                return known
            raise
        located = self._instance(item, self.region(cluster))
        located.data = {**known.data, **located.data}
        if located.id in view:
            view[located.id] = located
        return located
