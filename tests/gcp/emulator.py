"""A GCE emulator: the fake's VMs, booted as bare VMs (:mod:`tests.vm`).

Each ``RUNNING`` VM of :class:`~tests.gcp.fakegcp.FakeGCP` boots from the cached bare
Debian 12 image in the emulated network: the address the fake gave it in its
subnetwork, its external address (when it has an access config) NATed to it, the
ingress the network's firewall rules allow it (source ranges, and source tags expanded
to their VMs' addresses, for rules whose target tags it carries), the metadata server
at 169.254.169.254 / ``metadata.google.internal`` (identity, its service account's
access tokens, the preemption flag), and Cloud Logging, Cloud Storage and Compute Engine at
``gcp.emulator`` through the egress proxy (:data:`LOGGING_ENDPOINT_ENV`,
``STORAGE_EMULATOR_HOST``, :data:`COMPUTE_ENDPOINT_ENV`); the fake takes the tokens the
metadata server handed out as the VM's service account's, within its access scopes and IAM
grants. Its ``startup-script`` runs as the guest agent would. A VM that powers itself off
becomes ``TERMINATED`` (its disk stays); a VM deleted through the API (by itself too) or by
GCE's own clock (``maxRunDuration``) has its machine killed. Serial port output is what the boot printed. VMs of a
role in :attr:`GCEEmulator.broken_roles` boot with a python3 that cannot start.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

from coiled_lab.backends.gcp.session import STORAGE_EMULATOR_ENV
from coiled_lab.bootstrap.gce import COMPUTE_ENDPOINT_ENV, LOGGING_ENDPOINT_ENV

from ..localhttp import LocalHTTP
from ..vm import Network, Rule
from ..vm.emulator import BROKEN_IMAGE_FILES, Boot, Emulator
from .fakegcp import FakeGCP

class Identity:
    """What the metadata server says to one VM, and what it handed out."""

    def __init__(self, instance: dict, project: str,
                 issued: Optional[Callable[[str, str, list[str]], None]] = None):
        """``issued(token, service account, scopes)`` is told of each token handed out."""
        self.instance = instance
        self.project = project
        self.preempted = False
        self.tokens: set[str] = set()
        self._issued = issued

    def value(self, path: str) -> Optional[str]:
        me = self.instance
        zone = me["zone"].rsplit("/", 1)[-1]
        if path == "instance/service-accounts/default/token":
            token = f"vm-{me['name']}-{secrets.token_hex(6)}"
            self.tokens.add(token)
            account = (me.get("serviceAccounts") or [{}])[0]
            if self._issued and account.get("email"):
                self._issued(token, account["email"], list(account.get("scopes", [])))
            return json.dumps({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
        interface = me["networkInterfaces"][0]
        values = {
            "instance/name": me["name"],
            "instance/id": me["id"],
            "instance/hostname": f"{me['name']}.{zone}.c.{self.project}.internal",
            "instance/zone": f"projects/123456789/zones/{zone}",
            "instance/machine-type": f"projects/123456789/machineTypes/{me['machineType'].rsplit('/', 1)[-1]}",
            "instance/network-interfaces/0/ip": interface["networkIP"],
            "instance/network-interfaces/0/network":
                f"projects/123456789/networks/{interface['network'].rsplit('/', 1)[-1]}",
            "instance/scheduling/provisioning-model": me.get("scheduling", {}).get("provisioningModel", "STANDARD"),
            "instance/preempted": "TRUE" if self.preempted else "FALSE",
            "project/project-id": self.project,
        }
        for config in interface.get("accessConfigs", [])[:1]:
            values["instance/network-interfaces/0/access-configs/0/external-ip"] = config.get("natIP")
        return values.get(path)


def metadata_handler(identity: Identity) -> type[BaseHTTPRequestHandler]:
    """The GCE metadata server for one VM: answers only requests with ``Metadata-Flavor: Google``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            prefix = "/computeMetadata/v1/"
            if self.headers.get("Metadata-Flavor") != "Google":
                status, text = 403, "Missing Metadata-Flavor:Google header."
            else:
                value = identity.value(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                status, text = (200, value) if value is not None else (404, "not found")
            body = text.encode()
            self.send_response(status)
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class MetadataServer(LocalHTTP):
    """The metadata server of one VM on a loopback port of its own (bootstrap tests run
    the startup-script on this machine); emulated VMs get :func:`metadata_handler`."""

    def __init__(self, instance: dict, project: str, issued: Optional[Callable[[str, str, list[str]], None]] = None):
        """``issued``: as :class:`Identity` takes it (e.g. :meth:`FakeGCP.accept_token`)."""
        self.identity = Identity(instance, project, issued)
        super().__init__()
        self.host = self.url.removeprefix("http://")

    def _handler(self):
        return metadata_handler(self.identity)


class GCEEmulator(Emulator):
    """Boots the fake's running VMs as bare VMs on ``network``."""

    name = "gce-emulator"

    def __init__(self, fake: FakeGCP, network: Network, rootfs: Path, workdir: Path, interval: float = 0.2,
                 nice: int = 0):
        super().__init__(network, rootfs, workdir, interval, nice)
        self.fake = fake
        self.broken_roles: set[str] = set()
        self.identities: dict[str, Identity] = {}
        self._where: dict[str, tuple[str, str]] = {}  # VM name -> (zone, role)
        fake.public_address = network.public_address
        fake.serial_output = lambda zone, name: self.console(name)
        self.vm_endpoint = "http://" + network.allow("127.0.0.1", urlparse(fake.url).port, alias="gcp.emulator")

    def preempt(self, name: str) -> None:
        """GCE announces that it takes this Spot VM back."""
        self.identities[name].preempted = True

    def tokens(self) -> set[str]:
        """Every access token a VM's metadata server handed out."""
        return {t for identity in list(self.identities.values()) for t in identity.tokens}

    # -- what GCE says -----------------------------------------------------------------------------
    def listed(self) -> dict[str, Any]:
        with self.fake.lock:
            return {name: dict(i) for (_, name), i in self.fake.instances.items() if i["status"] == "RUNNING"}

    def boot(self, vm_id: str, instance: dict) -> Optional[Boot]:
        items = {i["key"]: i.get("value", "") for i in instance.get("metadata", {}).get("items", [])}
        if "startup-script" not in items:
            return None
        zone = instance["zone"].rsplit("/", 1)[-1]
        role = instance.get("labels", {}).get("coiled-lab-role", "worker")
        self._where[vm_id] = (zone, role)
        identity = self.identities[vm_id] = Identity(instance, self.fake.project, self.fake.accept_token)
        interface = instance["networkInterfaces"][0]
        subnet = self._subnetwork(interface["subnetwork"])
        public = next((c.get("natIP") for c in interface.get("accessConfigs", [])), None)
        return Boot(
            vm_id=vm_id, script=items["startup-script"].encode(), private_ip=interface["networkIP"],
            vpc_id=subnet["network"], vpc_cidr=subnet["ipCidrRange"], public_ip=public,
            metadata=metadata_handler(identity), hostname=vm_id,
            script_path="/var/lib/google/startup-script",
            # What a VM has besides its metadata server: Google's APIs by name (here, the fake's).
            env={LOGGING_ENDPOINT_ENV: self.vm_endpoint, COMPUTE_ENDPOINT_ENV: self.vm_endpoint,
                 STORAGE_EMULATOR_ENV: self.vm_endpoint.removeprefix("http://")},
            files=BROKEN_IMAGE_FILES if role in self.broken_roles else {},
        )

    def rules(self, listed: dict[str, Any]) -> dict[str, list[Rule]]:
        with self.fake.lock:
            firewalls = [dict(f) for f in self.fake.firewalls.values()]
        tagged: dict[str, list[str]] = {}
        for instance in listed.values():
            for tag in instance.get("tags", {}).get("items", []):
                tagged.setdefault(tag, []).append(instance["networkInterfaces"][0]["networkIP"])
        rules: dict[str, list[Rule]] = {}
        for name, instance in listed.items():
            network = instance["networkInterfaces"][0].get("network") or self._subnetwork(
                instance["networkInterfaces"][0]["subnetwork"])["network"]
            tags = set(instance.get("tags", {}).get("items", []))
            mine: list[Rule] = []
            for rule in firewalls:
                if rule.get("direction", "INGRESS") != "INGRESS" or rule.get("disabled"):
                    continue
                if _name(rule.get("network", "")) != _name(network):
                    continue
                if rule.get("targetTags") and not tags & set(rule["targetTags"]):
                    continue
                sources = list(rule.get("sourceRanges", []))
                for tag in rule.get("sourceTags", []):
                    sources += [f"{ip}/32" for ip in tagged.get(tag, [])]
                sources = [s for s in sources if ipaddress.ip_network(s, strict=False).version == 4]
                if not sources:
                    continue
                for allowed in rule.get("allowed", []):
                    protocol = str(allowed.get("IPProtocol", "all")).lower()
                    protocol = {"6": "tcp", "17": "udp", "1": "icmp"}.get(protocol, protocol)
                    if protocol not in ("tcp", "udp", "icmp", "all"):
                        continue
                    for ports in allowed.get("ports") or [None]:
                        mine.append(Rule(protocol, _ports(ports), tuple(sorted(sources))))
            rules[name] = mine
        return rules

    def powered_off(self, vm_id: str) -> None:
        zone, _ = self._where[vm_id]
        self.fake.set_status(zone, vm_id, "TERMINATED")

    def _subnetwork(self, link: str) -> dict:
        region, name = link.split("/regions/", 1)[-1].split("/subnetworks/")
        with self.fake.lock:
            return dict(self.fake.subnetworks[(region, name)])


def _name(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[-1]


def _ports(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    low, _, high = str(text).partition("-")
    return (int(low), int(high or low))
