"""A GCE emulator: the fake's VMs, booted for real as local processes.

A thread watches :class:`~tests.gcp.fakegcp.FakeGCP`'s instances. Each new ``RUNNING``
VM's ``startup-script`` metadata is run as the guest agent would, in a directory of its
own, with a small metadata server of its own (``GCE_METADATA_HOST``: identity, its
service account's access tokens, the preemption flag) and no credentials in its
environment. The fake hands out addresses from the subnetwork's range, which the tests
make a loopback range (``127.n.0.0/20``), so the dask processes bind and talk on loopback
only. When the script ends (its ``shutdown`` is a no-op here) the VM becomes
``TERMINATED``, as GCE does when a guest powers off; when a VM is deleted through the
API, its processes are killed. Serial port output is what the script printed.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Optional

from ..aws.emulator import BROKEN_PYTHON, _script, end_group
from ..localhttp import LocalHTTP
from .fakegcp import FakeGCP


class MetadataServer(LocalHTTP):
    """The GCE metadata server for one VM: answers only requests with ``Metadata-Flavor: Google``."""

    def __init__(self, instance: dict, project: str):
        self.instance = instance
        self.project = project
        self.preempted = False
        self.tokens: set[str] = set()
        super().__init__()
        self.host = self.url.removeprefix("http://")

    def value(self, path: str) -> Optional[str]:
        me = self.instance
        zone = me["zone"].rsplit("/", 1)[-1]
        if path == "instance/service-accounts/default/token":
            token = f"vm-{me['name']}-{secrets.token_hex(6)}"
            self.tokens.add(token)
            return json.dumps({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
        values = {
            "instance/name": me["name"],
            "instance/id": me["id"],
            "instance/zone": f"projects/123456789/zones/{zone}",
            "instance/machine-type": f"projects/123456789/machineTypes/{me['machineType'].rsplit('/', 1)[-1]}",
            "instance/network-interfaces/0/ip": me["networkInterfaces"][0]["networkIP"],
            "instance/scheduling/provisioning-model": me.get("scheduling", {}).get("provisioningModel", "STANDARD"),
            "instance/preempted": "TRUE" if self.preempted else "FALSE",
            "project/project-id": self.project,
        }
        return values.get(path)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                prefix = "/computeMetadata/v1/"
                if self.headers.get("Metadata-Flavor") != "Google":
                    status, text = 403, "Missing Metadata-Flavor:Google header."
                else:
                    value = server.value(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                    status, text = (200, value) if value is not None else (404, "not found")
                body = text.encode()
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@dataclass
class Machine:
    zone: str
    name: str
    role: str
    directory: Path
    metadata: MetadataServer
    process: subprocess.Popen
    ended: bool = False


class GCEEmulator:
    """Boots the fake's new VMs as processes under ``workdir``."""

    def __init__(self, fake: FakeGCP, workdir: Path, interval: float = 0.2):
        self.fake = fake
        self.workdir = workdir
        self.interval = interval
        self.broken_roles: set[str] = set()  # VMs of these roles boot an image whose Python is broken
        self.machines: dict[str, Machine] = {}
        self.booted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gce-emulator", daemon=True)
        self._bin = workdir / "bin"  # a `shutdown` that does nothing: the emulator stops the VM instead
        self._bin.mkdir(parents=True, exist_ok=True)
        _script(self._bin / "shutdown", "#!/bin/sh\nexit 0\n")
        self._broken_bin = workdir / "broken-bin"
        self._broken_bin.mkdir(exist_ok=True)
        _script(self._broken_bin / f"python{sys.version_info.major}.{sys.version_info.minor}", BROKEN_PYTHON)
        fake.serial_output = self.console

    def start(self) -> "GCEEmulator":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for machine in list(self.machines.values()):
            self._kill(machine)

    # -- what tests do to machines -----------------------------------------------------------
    def console(self, zone: str, name: str) -> Optional[str]:
        machine = self.machines.get(name)
        if machine is None:
            return None
        return (machine.directory / "console.log").read_text(errors="replace")

    def running(self) -> list[str]:
        return [m.name for m in self.machines.values() if m.process.poll() is None]

    def preempt(self, name: str) -> None:
        """GCE announces that it takes this Spot VM back."""
        self.machines[name].metadata.preempted = True

    def tokens(self) -> set[str]:
        """Every access token a VM's metadata server handed out."""
        return {t for m in self.machines.values() for t in m.metadata.tokens}

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - keep emulating; the tests see the effects
                print(f"gce emulator: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.interval)

    def _step(self) -> None:
        with self.fake.lock:
            instances = {name: dict(i) for (_, name), i in self.fake.instances.items()}
        for name, instance in instances.items():
            if name not in self.machines and instance["status"] == "RUNNING":
                self._boot(instance)
        for machine in list(self.machines.values()):
            if machine.ended:
                continue
            if machine.name not in instances:  # deleted through the API
                machine.ended = True
                threading.Thread(target=self._kill, args=(machine,), daemon=True).start()
            elif machine.process.poll() is not None:  # powered itself off
                machine.ended = True
                self.fake.set_status(machine.zone, machine.name, "TERMINATED")
                machine.metadata.close()

    def _boot(self, instance: dict) -> None:
        name, zone = instance["name"], instance["zone"].rsplit("/", 1)[-1]
        items = {i["key"]: i.get("value", "") for i in instance.get("metadata", {}).get("items", [])}
        if "startup-script" not in items:
            return
        directory = self.workdir / name
        (directory / "tmp").mkdir(parents=True)
        script = directory / "startup-script"
        script.write_text(items["startup-script"])
        metadata = MetadataServer(instance, self.fake.project)
        role = instance.get("labels", {}).get("coiled-lab-role", "worker")
        path = [str(self._broken_bin)] if role in self.broken_roles else []
        path += [str(self._bin), os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]
        env = {
            "PATH": os.pathsep.join(path),
            "HOME": str(directory),
            "TMPDIR": str(directory / "tmp"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            # What a VM has: a metadata server. No key file, no project variable.
            "GCE_METADATA_HOST": metadata.host,
        }
        with open(directory / "console.log", "wb") as console:
            process = subprocess.Popen(["/bin/sh", str(script)], cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                       stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        self.machines[name] = Machine(zone, name, role, directory, metadata, process)
        self.booted += 1

    def _kill(self, machine: Machine) -> None:
        """Deletion: the machine's processes end (SIGTERM, then SIGKILL)."""
        machine.ended = True
        end_group(machine.process)
        machine.metadata.close()
