"""One emulated cloud network per test session: VPCs, public addresses, security groups,
the metadata service and the egress proxy, all inside network namespaces of our own.

Address plan (session slot ``k``, 0 for the first session on a machine)::

    root namespace   clab<k>  100.80.k.1/30  = egress_address ("the Jupyter server as the cloud sees it")
                                                       echo_url: an address-echo service on a public address
          |  veth
    router netns     uplink   100.80.k.2/30
    clab<k>-router   lo       169.254.169.254 (metadata :80), 169.254.0.1 (gateway; proxy :3128)
          |  veth vm<n>  (one per VM, no address: routed, like Calico)
    VM netns         eth0     <private_ip>/32, default via 169.254.0.1 onlink

The root namespace routes the public pool ``100.(81+k).0.0/16`` and every VPC CIDR in
use to the router. The router NATs public addresses 1:1 (DNAT in, SNAT out) and
*drops* traffic from the root side to private addresses, so a connect to a private
address from here times out, as from a laptop. Nothing is forwarded out of the machine:
the router's only way out is the veth to the root namespace, whose ``ip_forward`` stays
off, and its firewall drops every new connection from a VM towards it. VMs reach the
registries only through the egress proxy (:mod:`.proxy`).

Filtering (nftables table ``ip clab`` in the router):

- ``forward``: replies pass; from the root side only connections to public addresses;
  a VM reaches another VM's private address only within its VPC, and other VMs' public
  addresses only when it has one itself (seen from its public address, as via an
  internet gateway).
- ``security_groups`` (postrouting, after NAT, so rules see the source address the VM
  would see): one chain ``sg_<n>`` per VM holding its ingress rules; replaced atomically
  by :meth:`Network.firewall`. A VM without rules accepts no new connection.
- ``input``: VMs may open connections to the metadata service and the proxy only.

Several sessions on one machine (the lead's and a helper's) each hold a slot through an
fcntl lock under ``/run/coiled-lab-vm``; :meth:`Network.sweep` removes the leftovers of
slots nobody holds (a crashed run), never those of a live session.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterable, Optional, Union

from . import metadata as metadata_mod
from .host import HostCommandError, ListenerServer, in_netns, netns_inode, processes_in_netns, run, socket_in
from .image import cache_dir, ensure_tools
from .pki import emulator_ca
from .proxy import EgressProxy

PREFIX = "clab"
SLOTS = 16
LOCK_DIR = Path("/run/coiled-lab-vm")
GATEWAY = "169.254.0.1"
METADATA_ADDRESS = metadata_mod.ADDRESS
PROXY_PORT = 3128
UPLINK = "uplink"
RESERVED = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "203.0.113.0/24")]
PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]

BASE_RULESET = """
table ip clab {
    map public_to_private { type ipv4_addr : ipv4_addr; }
    map private_to_public { type ipv4_addr : ipv4_addr; }
    set with_public { type ipv4_addr; }
    map sg_dispatch { type ifname : verdict; }

    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        dnat to ip daddr map @public_to_private
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat ip saddr @with_public snat to ip saddr map @private_to_public
    }
    chain input {
        type filter hook input priority filter; policy drop;
        iif lo accept
        ct state established,related accept
        iifname "vm*" ip daddr 169.254.169.254 tcp dport 80 accept
        iifname "vm*" ip daddr 169.254.0.1 tcp dport 3128 accept
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        iifname "uplink" ct status dnat accept
        iifname "uplink" drop
        oifname "uplink" drop
        ct status dnat ip saddr @with_public accept
        ct status dnat drop
    }
    chain security_groups {
        type filter hook postrouting priority 110; policy accept;
        ct state established,related accept
        oifname vmap @sg_dispatch
    }
}
"""


@dataclass(frozen=True)
class Rule:
    """One ingress rule, security-group style: new connections of ``protocol`` to ``ports``
    (inclusive range; None = all) from any of ``sources`` (CIDRs) are let in.

    ``protocol`` is "tcp", "udp", "icmp" (every ICMP type) or "all" (ports ignored).
    Rules naming other security groups are the caller's to expand into addresses.
    """

    protocol: str = "tcp"
    ports: Union[None, int, tuple[int, int]] = None
    sources: tuple[str, ...] = ("0.0.0.0/0",)

    def nft(self, chain: str) -> Optional[str]:
        """The ``add rule`` line for ``chain``; None when the rule can match nothing."""
        if self.protocol not in ("tcp", "udp", "icmp", "all"):
            raise ValueError(f"protocol: {self.protocol!r} is not one of tcp, udp, icmp, all")
        nets = list(ipaddress.collapse_addresses(ipaddress.ip_network(s, strict=False) for s in self.sources))
        if not nets:
            return None
        match = ""
        if nets != [ipaddress.ip_network("0.0.0.0/0")]:
            match = f"ip saddr {{ {', '.join(str(n) for n in nets)} }} "
        if self.protocol in ("tcp", "udp"):
            if self.ports is None:
                match += f"ip protocol {self.protocol} "
            else:
                low, high = (self.ports, self.ports) if isinstance(self.ports, int) else self.ports
                if not 0 <= low <= high <= 65535:
                    raise ValueError(f"ports: {self.ports!r} is not a port range")
                match += f"{self.protocol} dport {low}-{high} "
        elif self.protocol == "icmp":
            match += "ip protocol icmp "
        return f"add rule ip clab {chain} {match}accept"


@dataclass
class _VM:
    vm_id: str
    index: int
    netns: str
    private_ip: str
    vpc_id: str
    public_ip: Optional[str]
    inode: Optional[int] = None

    @property
    def veth(self) -> str:  # the router's end
        return f"vm{self.index}"

    @property
    def chain(self) -> str:
        return f"sg_{self.index}"


@dataclass
class _VPC:
    index: int
    cidrs: set[str] = field(default_factory=set)


class Network:
    """The emulated network of one test session. Use as a context manager or call :meth:`close`.

    ``files_cache``: where the proxy keeps package files (default: ``package-files`` beside
    the VM image).

    Attributes: ``egress_address`` (this machine as the VMs' clouds see it),
    ``public_pool``, ``proxy_url``, ``metadata_address``, ``gateway``, ``router`` (the
    router's netns), ``slot``/``prefix`` (this session's share of the machine), ``ca_pem``
    (the emulator CA VMs trust), ``proxy`` and ``metadata`` (the two servers).
    Methods: :meth:`public_address`, :meth:`release`, :meth:`attach`, :meth:`detach`,
    :meth:`netns`, :meth:`firewall`, :meth:`register_metadata`, :meth:`allow`,
    :meth:`downloaded`, :meth:`from_cache`, :meth:`reset_counters`, :meth:`close`,
    :meth:`sweep`.
    """

    def __init__(self, files_cache: Optional[Path] = None):
        ensure_tools()
        self._lock = threading.RLock()
        self._closed = False
        self._vms: dict[str, _VM] = {}
        self._vpcs: dict[str, _VPC] = {}
        self._routed: set[str] = set()
        self._public_used: set[str] = set()
        self._next_index = 1
        self._slot_handle, self.slot = _claim_slot()
        self.prefix = f"{PREFIX}{self.slot}"
        self.router = f"{self.prefix}-router"
        self.root_veth = self.prefix
        self.egress_address = f"100.80.{self.slot}.1"
        self._router_uplink = f"100.80.{self.slot}.2"
        self.public_pool = ipaddress.ip_network(f"100.{81 + self.slot}.0.0/16")
        self.gateway = GATEWAY
        self.metadata_address = METADATA_ADDRESS
        self.proxy_url = f"http://{GATEWAY}:{PROXY_PORT}"
        self.files_cache = files_cache or cache_dir() / "package-files"
        self.proxy: Optional[EgressProxy] = None
        self.metadata: Optional[metadata_mod.MetadataService] = None
        self.echo: Optional[AddressEcho] = None
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- building and tearing down -------------------------------------------------------------
    def _build(self) -> None:
        r = self.router
        run(["ip", "netns", "add", r])
        _no_ipv6(r)
        run(["ip", "-n", r, "link", "set", "lo", "up"])
        run(["ip", "link", "add", self.root_veth, "type", "veth", "peer", "name", UPLINK, "netns", r])
        with contextlib.suppress(OSError):  # our veth only: no IPv6 chatter on it
            Path(f"/proc/sys/net/ipv6/conf/{self.root_veth}/disable_ipv6").write_text("1")
        run(["ip", "addr", "add", f"{self.egress_address}/30", "dev", self.root_veth])
        run(["ip", "link", "set", self.root_veth, "up"])
        run(["ip", "-n", r, "addr", "add", f"{self._router_uplink}/30", "dev", UPLINK])
        run(["ip", "-n", r, "link", "set", UPLINK, "up"])
        run(["ip", "-n", r, "addr", "add", f"{GATEWAY}/32", "dev", "lo"])
        run(["ip", "-n", r, "addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo"])
        self._nft(BASE_RULESET)  # the firewall first, forwarding second
        in_netns(r, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        # Unknown destinations go to the root side, where the firewall drops them (a silent
        # timeout, as in a subnet without an internet gateway), never further.
        run(["ip", "-n", r, "route", "add", "default", "via", self.egress_address])
        run(["ip", "route", "add", str(self.public_pool), "via", self._router_uplink, "dev", self.root_veth])
        self.metadata = metadata_mod.MetadataService(_listener(r, METADATA_ADDRESS, metadata_mod.PORT)).start()
        ca = emulator_ca(cache_dir() / "ca")
        self.ca_pem = ca.cert_pem
        self.proxy = EgressProxy(_listener(r, GATEWAY, PROXY_PORT), self.files_cache, ca).start()
        # An address-echo service on the internet (as checkip.amazonaws.com): it answers
        # with the address a connection comes from, as seen past every NAT.
        echo = str(self.public_pool[-2])
        self._public_used.add(echo)
        run(["ip", "-n", r, "addr", "add", f"{echo}/32", "dev", "lo"])
        self._nft(f'add rule ip clab input iifname "{UPLINK}" ip daddr {echo} tcp dport 80 accept\n')
        self.echo = AddressEcho(_listener(r, echo, 80)).start()
        self.echo_url = f"http://{echo}/"

    def close(self) -> None:
        """Remove every namespace, veth, route and nft rule of this network; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for vm_id in list(self._vms):
                with contextlib.suppress(Exception):
                    self.detach(vm_id)
            for server in (self.proxy, self.metadata, self.echo):
                if server is not None:
                    with contextlib.suppress(Exception):
                        server.close()
            _remove_leftovers(self.prefix)
            with contextlib.suppress(OSError):
                self._slot_handle.close()  # releases the slot's lock
            atexit.unregister(self.close)

    @staticmethod
    def sweep() -> list[str]:
        """Remove what crashed earlier sessions left (namespaces, veths and their routes,
        processes): only of slots no live session holds. Returns what was removed."""
        removed: list[str] = []
        for slot in range(SLOTS):
            handle = _try_slot(slot)
            if handle is not None:
                with handle:
                    removed += _remove_leftovers(f"{PREFIX}{slot}")
        return removed

    # -- addresses -----------------------------------------------------------------------------
    def public_address(self) -> str:
        """A free address of the public pool, now reserved (give it back with :meth:`release`)."""
        with self._lock:
            for host in self.public_pool.hosts():
                text = str(host)
                if host.packed[-1] not in (0, 255) and text not in self._public_used:
                    self._public_used.add(text)
                    return text
        raise RuntimeError(f"the public pool {self.public_pool} is exhausted")

    def release(self, address: str) -> None:
        """Return a public address to the pool (a no-op while a VM still holds it)."""
        with self._lock:
            if not any(vm.public_ip == address for vm in self._vms.values()):
                self._public_used.discard(address)

    # -- machines ------------------------------------------------------------------------------
    def attach(self, vm_id: str, private_ip: str, vpc_id: str, vpc_cidr: str, public_ip: Optional[str] = None,
               metadata: Optional[type[BaseHTTPRequestHandler]] = None) -> str:
        """Give ``vm_id`` a namespace with ``eth0`` = ``private_ip`` in ``vpc_cidr``; returns its name.

        ``public_ip`` (from :meth:`public_address`) is NATed 1:1 to it; ``metadata`` serves
        its requests to 169.254.169.254. The VM starts with no ingress rules (see
        :meth:`firewall`). Private addresses must be unique across the network.
        """
        address = ipaddress.ip_address(private_ip)
        cidr = ipaddress.ip_network(vpc_cidr)
        if address not in cidr:
            raise ValueError(f"private_ip: {private_ip} is not in the VPC's {vpc_cidr}")
        with self._lock:
            self._check_open()
            if vm_id in self._vms:
                raise ValueError(f"vm_id: {vm_id} is attached already")
            if any(vm.private_ip == private_ip for vm in self._vms.values()):
                raise ValueError(f"private_ip: {private_ip} is in use by another VM of this network")
            if public_ip is not None:
                if ipaddress.ip_address(public_ip) not in self.public_pool:
                    raise ValueError(f"public_ip: {public_ip} is not in the public pool {self.public_pool}")
                if any(vm.public_ip == public_ip for vm in self._vms.values()):
                    raise ValueError(f"public_ip: {public_ip} is in use by another VM")
            if str(cidr) not in self._routed:
                _check_vpc_cidr(cidr)
            if public_ip is not None:
                self._public_used.add(public_ip)
            index, self._next_index = self._next_index, self._next_index + 1
            vm = _VM(vm_id, index, f"{self.prefix}-vm{index}-{_safe(vm_id)}", private_ip, vpc_id, public_ip)
            self._vms[vm_id] = vm
            try:
                self._plug(vm, cidr)
                if metadata is not None:
                    self.register_metadata(private_ip, metadata)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.detach(vm_id)
                raise
            return vm.netns

    def _plug(self, vm: _VM, cidr: ipaddress.IPv4Network) -> None:
        r, ns = self.router, vm.netns
        run(["ip", "netns", "add", ns])
        vm.inode = netns_inode(ns)
        _no_ipv6(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "add", vm.veth, "netns", r, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", ns, "addr", "add", f"{vm.private_ip}/32", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink"])
        run(["ip", "-n", r, "link", "set", vm.veth, "up"])
        run(["ip", "-n", r, "route", "add", f"{vm.private_ip}/32", "dev", vm.veth])
        vpc = self._vpcs.get(vm.vpc_id)
        script = []
        if vpc is None:
            vpc = self._vpcs[vm.vpc_id] = _VPC(len(self._vpcs) + 1)
            script += [f"add set ip clab vpc_{vpc.index} {{ type ipv4_addr; }}",
                       f"add rule ip clab forward ip saddr @vpc_{vpc.index} ip daddr @vpc_{vpc.index} accept"]
        script += [f"add element ip clab vpc_{vpc.index} {{ {vm.private_ip} }}",
                   f"add chain ip clab {vm.chain}",
                   f"add rule ip clab {vm.chain} drop",
                   f'add element ip clab sg_dispatch {{ "{vm.veth}" : jump {vm.chain} }}']
        if vm.public_ip:
            script += [f"add element ip clab public_to_private {{ {vm.public_ip} : {vm.private_ip} }}",
                       f"add element ip clab private_to_public {{ {vm.private_ip} : {vm.public_ip} }}",
                       f"add element ip clab with_public {{ {vm.private_ip} }}"]
        self._nft("\n".join(script))
        if str(cidr) not in self._routed:
            # Private ranges lead to the router, which drops them: unreachable, and never
            # sent towards this machine's default route. The metric lets two sessions
            # route the same range (both drop it).
            run(["ip", "route", "add", str(cidr), "via", self._router_uplink, "dev", self.root_veth,
                 "metric", str(1000 + self.slot)])
            self._routed.add(str(cidr))
        vpc.cidrs.add(str(cidr))

    def detach(self, vm_id: str) -> None:
        """Remove the VM's namespace (killing what still runs in it), veth, rules and metadata."""
        with self._lock:
            vm = self._vms.pop(vm_id, None)
            if vm is None:
                return
            if vm.inode is not None:
                _kill_netns_processes({vm.inode})
            if self.metadata is not None:
                self.metadata.unregister(vm.private_ip)
            vpc = self._vpcs.get(vm.vpc_id)
            script = [f'delete element ip clab sg_dispatch {{ "{vm.veth}" }}',
                      f"flush chain ip clab {vm.chain}", f"delete chain ip clab {vm.chain}"]
            if vpc is not None:
                script.append(f"delete element ip clab vpc_{vpc.index} {{ {vm.private_ip} }}")
            if vm.public_ip:
                script += [f"delete element ip clab public_to_private {{ {vm.public_ip} }}",
                           f"delete element ip clab private_to_public {{ {vm.private_ip} }}",
                           f"delete element ip clab with_public {{ {vm.private_ip} }}"]
                self._public_used.discard(vm.public_ip)
            try:
                self._nft("\n".join(script))
            except HostCommandError:  # a half-attached VM: remove what is there, one by one
                for line in script:
                    with contextlib.suppress(HostCommandError):
                        self._nft(line)
            run(["ip", "-n", self.router, "link", "del", vm.veth], check=False)
            run(["ip", "netns", "del", vm.netns], check=False)

    def netns(self, vm_id: str) -> str:
        """The network namespace of an attached VM."""
        with self._lock:
            return self._vms[vm_id].netns

    def firewall(self, vm_id: str, rules: Iterable[Rule]) -> None:
        """Replace the VM's ingress rules, atomically (one nft transaction)."""
        with self._lock:
            self._check_open()
            vm = self._vms[vm_id]
            lines = [f"flush chain ip clab {vm.chain}"]
            lines += [line for rule in rules if (line := rule.nft(vm.chain)) is not None]
            lines.append(f"add rule ip clab {vm.chain} drop")
            self._nft("\n".join(lines))

    # -- services ------------------------------------------------------------------------------
    def register_metadata(self, private_ip: str, handler: type[BaseHTTPRequestHandler]) -> None:
        """Requests to 169.254.169.254 from ``private_ip`` go to ``handler`` (a handler class)."""
        assert self.metadata is not None
        self.metadata.register(private_ip, handler)

    def allow(self, host: str, port: int, alias: Optional[str] = None) -> str:
        """Let VMs reach ``host:port`` through the proxy; returns the ``host:port`` VMs use.

        A VM's ``no_proxy`` holds 127.0.0.1 and localhost (its own loopback), so a loopback
        stand-in must be named to the VMs by ``alias`` (any name, e.g. "aws.emulator"):
        the proxy maps ``alias:port`` to ``host:port`` and passes the Host header as sent.
        """
        assert self.proxy is not None
        self.proxy.allow(host, port, alias)
        return f"{alias or host}:{port}"

    def downloaded(self) -> dict[str, int]:
        """Bytes received from upstream through the proxy, per host as VMs named it."""
        return self.proxy.downloaded() if self.proxy else {}

    def from_cache(self) -> dict[str, int]:
        """Bytes of package files the pull-through cache served without asking upstream."""
        return self.proxy.from_cache() if self.proxy else {}

    def reset_counters(self) -> None:
        if self.proxy:
            self.proxy.reset_counters()

    # -- helpers -------------------------------------------------------------------------------
    def _nft(self, script: str) -> None:
        in_netns(self.router, ["nft", "-f", "-"], input=script.encode())

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Network is closed")


class AddressEcho(ListenerServer):
    """Answers every GET with the client's address, as plain text."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = f"{self.client_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    def __init__(self, listener: socket.socket):
        super().__init__(listener, self.Handler, "vm-address-echo")


def _listener(netns: str, address: str, port: int) -> socket.socket:
    sock = socket_in(netns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _no_ipv6(netns: str) -> None:
    """IPv4 only: the firewall is an ``ip`` table, so IPv6 must not offer a way around it."""
    in_netns(netns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                     "net.ipv6.conf.default.disable_ipv6=1"])


def _safe(vm_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", vm_id)[:40]


def _check_vpc_cidr(cidr: ipaddress.IPv4Network) -> None:
    """A VPC range must be private and must not take this machine's own traffic (its
    addresses, its resolver, its routes) into the emulation."""
    if not any(cidr.subnet_of(p) for p in PRIVATE) or any(cidr.overlaps(r) for r in RESERVED):
        raise ValueError(f"vpc_cidr: {cidr} must be a private range (10/8, 172.16/12, 192.168/16)")
    taken: list[ipaddress.IPv4Network] = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                taken.append(ipaddress.ip_network(parts[1]))
    for item in json.loads(run(["ip", "-j", "-4", "addr"]).stdout or b"[]"):
        for info in item.get("addr_info", []):
            taken.append(ipaddress.ip_network(info["local"]))
    for route in json.loads(run(["ip", "-j", "-4", "route"]).stdout or b"[]"):
        if route.get("dst") not in (None, "default") and not route.get("dev", "").startswith(PREFIX):
            taken.append(ipaddress.ip_network(route["dst"], strict=False))
    clash = [str(t) for t in taken if t.overlaps(cidr)]
    if clash:
        raise ValueError(f"vpc_cidr: {cidr} overlaps this machine's own {', '.join(clash)}")


def _lock_path(slot: int) -> Path:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    return LOCK_DIR / f"slot-{slot}.lock"


def _try_slot(slot: int):
    """The slot's lock file, locked, or None when a live session holds it."""
    handle = open(_lock_path(slot), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _claim_slot():
    Network.sweep()
    for slot in range(SLOTS):
        handle = _try_slot(slot)
        if handle is not None:
            _remove_leftovers(f"{PREFIX}{slot}")  # crashed between the sweep and now
            return handle, slot
    raise RuntimeError(f"all {SLOTS} emulated-network slots are in use on this machine")


def _remove_leftovers(prefix: str) -> list[str]:
    """Delete namespaces named ``<prefix>-*`` (after killing their processes) and the root veth."""
    try:
        names = [n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}-")]
    except FileNotFoundError:
        names = []
    inodes = {i for n in names if (i := netns_inode(n)) is not None}
    _kill_netns_processes(inodes)
    removed = []
    for name in names:
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    if run(["ip", "link", "show", prefix], check=False).returncode == 0:
        run(["ip", "link", "del", prefix], check=False)
        removed.append(prefix)
    deadline = time.monotonic() + 5  # a namespace's devices go a moment after its last reference
    while time.monotonic() < deadline and run(["ip", "link", "show", prefix], check=False).returncode == 0:
        time.sleep(0.05)
    return removed


def _kill_netns_processes(inodes: set[int]) -> None:
    """SIGKILL every process in these namespaces and wait (at most 5 s) until they are gone."""
    if not inodes:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pids = [p for p in processes_in_netns(inodes) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
