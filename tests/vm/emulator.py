"""The loop both cloud emulators share: a cloud's instances, booted as bare VMs.

A thread looks at the cloud stand-in (moto's EC2, the GCE fake) every ``interval``
seconds and reconciles the machines here with what the cloud says, as a hypervisor
would:

- an instance the cloud says is running and that has no machine yet boots as a
  :class:`~.machine.VM` of the cached bare image, with its own address, its public
  address NATed to it, its metadata answered at 169.254.169.254 and its user-data
  (or startup-script) run as boot;
- every machine's ingress rules are the cloud's firewall as it stands now (security
  groups, firewall rules), re-applied whenever membership or rules change, since a rule
  naming a group or a tag covers machines that come and go;
- a machine that powered itself off is told to the cloud (EC2 terminates it, GCE marks
  it ``TERMINATED``); an instance the cloud no longer runs has its machine killed.

An ended machine's disk layer and network are removed at once (a terminated instance's
root volume goes with it); its console log is kept, as the cloud keeps serial output
for a while. A subclass says what its cloud lists and how an instance boots.
"""

from __future__ import annotations

import sys
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Mapping, Optional

from .machine import VM
from .network import Network, Rule

BROKEN_PYTHON = b"""#!/bin/sh
echo "Fatal Python error: init_fs_encoding: failed to get the Python codec of the filesystem encoding" >&2
echo "ModuleNotFoundError: No module named 'encodings'" >&2
exit 1
"""
# A "broken image": its python3 cannot start (e.g. a damaged custom AMI).
BROKEN_IMAGE_FILES = {"/usr/bin/python3": BROKEN_PYTHON}


@dataclass
class Boot:
    """What the cloud says about one instance to boot."""

    vm_id: str
    script: bytes
    private_ip: str
    vpc_id: str
    vpc_cidr: str
    metadata: type[BaseHTTPRequestHandler]
    public_ip: Optional[str] = None
    hostname: Optional[str] = None
    script_path: str = "/var/lib/cloud/instance/user-data"
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)


class Emulator(ABC):
    """Boots a cloud's running instances as bare VMs on ``network`` (see the module doc).

    Subclasses implement :meth:`listed`, :meth:`boot`, :meth:`rules`, :meth:`powered_off`
    and may implement :meth:`ended`.
    """

    name = "emulator"

    def __init__(self, network: Network, rootfs: Path, workdir: Path, interval: float = 0.2, nice: int = 0):
        """``nice``: niceness of the machines. A benchmark of the Jupyter server sets it so
        that VMs, which in a cloud have cores of their own, do not take this machine's
        cores from the server being measured."""
        self.network = network
        self.rootfs = rootfs
        self.workdir = workdir
        self.interval = interval
        self.nice = nice
        self.machines: dict[str, VM] = {}
        self.booted = 0
        self._ended: set[str] = set()  # machines that ended here (their instances may still be listed)
        self._rules: dict[str, list[Rule]] = {}  # the rules last applied, per running machine
        self._ending: list[threading.Thread] = []  # machines being killed (terminated through the API)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    # -- what a cloud says ---------------------------------------------------------------------
    @abstractmethod
    def listed(self) -> dict[str, Any]:
        """The instances that should be running now, by id (the cloud's own description)."""

    @abstractmethod
    def boot(self, vm_id: str, item: Any) -> Optional[Boot]:
        """How ``vm_id`` boots; None when it has nothing to boot (no user-data)."""

    @abstractmethod
    def rules(self, listed: dict[str, Any]) -> dict[str, list[Rule]]:
        """The ingress rules of every listed instance, as the cloud's firewall says now."""

    @abstractmethod
    def powered_off(self, vm_id: str) -> None:
        """Tell the cloud that the machine powered itself off."""

    def ended(self, vm_id: str) -> None:
        """A machine ended either way: what the cloud deletes with it (e.g. volumes)."""

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> "Emulator":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for thread in self._ending:  # a kill in flight removes its disk before this returns
            thread.join(60)
        for vm in list(self.machines.values()):
            vm.close()  # idempotent: a machine that ended already is left as it is
            if vm.public_ip:
                self.network.release(vm.public_ip)

    def console(self, vm_id: str) -> Optional[str]:
        """What the machine's boot printed so far (kept after it ended); None if never booted."""
        vm = self.machines.get(vm_id)
        return vm.console() if vm is not None else None

    def running(self) -> list[str]:
        return [vm_id for vm_id, vm in list(self.machines.items()) if vm.alive]

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - keep emulating; the tests see the effects
                print(f"{self.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.interval)

    def _step(self) -> None:
        listed = self.listed()
        for vm_id, item in listed.items():
            if vm_id not in self.machines and not self._stop.is_set():
                self._boot(vm_id, item)
        for vm_id, vm in list(self.machines.items()):
            if vm_id in self._ended:
                continue
            if vm_id not in listed:  # terminated or deleted through the API
                self._ended.add(vm_id)
                thread = threading.Thread(target=self._end, args=(vm,), daemon=True)
                self._ending = [t for t in self._ending if t.is_alive()] + [thread]
                thread.start()
            elif not vm.alive:  # powered itself off
                self._ended.add(vm_id)
                self._end(vm)
                self.powered_off(vm_id)
        self._apply_rules(listed)

    def _boot(self, vm_id: str, item: Any) -> None:
        boot = self.boot(vm_id, item)
        if boot is None:
            return
        vm = VM(self.network, vm_id, self.rootfs, self.workdir / vm_id, boot.script, boot.env,
                boot.private_ip, boot.vpc_id, boot.vpc_cidr, public_ip=boot.public_ip,
                metadata_handler=boot.metadata, nice=self.nice, hostname=boot.hostname,
                script_path=boot.script_path, files=boot.files)
        with self._lock:
            self.machines[vm_id] = vm
            self.booted += 1
        vm.start()

    def _apply_rules(self, listed: dict[str, Any]) -> None:
        running = {vm_id: item for vm_id, item in listed.items()
                   if vm_id in self.machines and vm_id not in self._ended}
        if not running:
            return
        for vm_id, rules in self.rules(running).items():
            if vm_id in running and self._rules.get(vm_id) != rules:
                self.network.firewall(vm_id, rules)
                self._rules[vm_id] = rules

    def _end(self, vm: VM) -> None:
        """The machine stops (if it still runs) and its disk and network go; its console stays."""
        self._ended.add(vm.vm_id)
        self._rules.pop(vm.vm_id, None)
        try:
            vm.close()
        finally:
            if vm.public_ip:
                self.network.release(vm.public_ip)
            self.ended(vm.vm_id)
