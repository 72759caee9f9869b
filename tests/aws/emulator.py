"""An EC2 emulator: moto's instances, booted for real as local processes.

A thread polls moto's ``DescribeInstances``. Each new instance's user-data is run the way
cloud-init would (gzip unpacked, the script executed) in a directory of its own, with a
small IMDSv2 server of its own standing in for the metadata service (identity, the
instance role's credentials, spot interruption notices). moto hands out private addresses
from the VPC's range, which the tests make a loopback range (``127.n.0.0/16``), so the
dask processes bind and talk on loopback only. When the user-data script ends (the
bootstrap's ``shutdown`` is a no-op here) the emulator terminates the instance, as EC2
does for ``InstanceInitiatedShutdownBehavior=terminate``; when an instance is terminated
through the API, its processes are killed. Console output is what the script printed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Optional

import boto3

from ..localhttp import LocalHTTP

BROKEN_PYTHON = """#!/bin/sh
echo "Fatal Python error: init_fs_encoding: failed to get the Python codec of the filesystem encoding" >&2
echo "ModuleNotFoundError: No module named 'encodings'" >&2
exit 1
"""


@dataclass
class Identity:
    instance_id: str
    private_ip: str
    zone: str
    instance_type: str
    lifecycle: str
    role_name: str
    spot_action: Optional[str] = None  # JSON of a spot interruption notice, once given
    tokens: set[str] = field(default_factory=set)


class MetadataServer(LocalHTTP):
    """IMDSv2 for one instance: a token first (PUT), then GETs that must carry it."""

    def __init__(self, identity: Identity):
        self.identity = identity
        super().__init__()

    def value(self, path: str) -> Optional[str]:
        me = self.identity
        expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6))
        values = {
            "instance-id": me.instance_id,
            "local-ipv4": me.private_ip,
            "placement/availability-zone": me.zone,
            "placement/region": me.zone[:-1],
            "instance-type": me.instance_type,
            "instance-life-cycle": me.lifecycle,
            "iam/security-credentials/": me.role_name,
            f"iam/security-credentials/{me.role_name}": json.dumps({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIAEMULATEDINSTANCE",
                "SecretAccessKey": "emulated-instance-role", "Token": "emulated-session",
                "LastUpdated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }),
            "spot/instance-action": me.spot_action,
        }
        return values.get(path)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, text: str = "") -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._answer(400)
                token = secrets.token_urlsafe(16)
                server.identity.tokens.add(token)
                self._answer(200, token)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") not in server.identity.tokens:
                    return self._answer(401)  # IMDSv2 required: no token, no answer
                prefix = "/latest/meta-data/"
                value = server.value(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                self._answer(200, value) if value is not None else self._answer(404)

        return Handler


@dataclass
class Machine:
    id: str
    image: str
    directory: Path
    metadata: MetadataServer
    process: subprocess.Popen
    terminated: bool = False


class EC2Emulator:
    """Boots moto's new instances in ``region`` as processes under ``workdir``."""

    def __init__(self, moto_url: str, region: str, workdir: Path, interval: float = 0.2, nice: int = 0):
        """``nice``: niceness of the machines' processes. A benchmark of the Jupyter server
        sets it so that VMs, which on EC2 have cores of their own, do not take this
        machine's cores from the server being measured. Each machine is a session of its
        own, and where Linux groups sessions for scheduling (autogroup) a nice value
        counts only inside its group, so the machine's group is niced too."""
        self.moto_url = moto_url
        self.nice = nice
        self.region = region
        self.workdir = workdir
        self.interval = interval
        self.broken_images: set[str] = set()
        self.machines: dict[str, Machine] = {}
        self.booted = 0
        self._reaped: set[str] = set()  # instances terminated before they were booted
        self._ec2 = boto3.client("ec2", region_name=region, endpoint_url=moto_url,
                                 aws_access_key_id="emulator", aws_secret_access_key="emulator")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ec2-emulator", daemon=True)
        self._bin = workdir / "bin"  # a `shutdown` that does nothing: the emulator terminates instead
        self._bin.mkdir(parents=True, exist_ok=True)
        _script(self._bin / "shutdown", "#!/bin/sh\nexit 0\n")
        self._broken_bin = workdir / "broken-bin"
        self._broken_bin.mkdir(exist_ok=True)
        _script(self._broken_bin / f"python{sys.version_info.major}.{sys.version_info.minor}", BROKEN_PYTHON)

    def start(self) -> "EC2Emulator":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for machine in list(self.machines.values()):
            self._kill(machine)

    # -- what tests do to machines -----------------------------------------------------------
    def interrupt(self, instance_id: str) -> None:
        """EC2 announces that it takes this spot instance back in two minutes."""
        when = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=2))
        self.machines[instance_id].metadata.identity.spot_action = json.dumps(
            {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")})

    def console(self, instance_id: str) -> Optional[str]:
        machine = self.machines.get(instance_id)
        if machine is None:
            return None
        return (machine.directory / "console.log").read_text(errors="replace")

    def running(self) -> list[str]:
        return [m.id for m in self.machines.values() if m.process.poll() is None]

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - keep emulating; the tests see the effects
                print(f"ec2 emulator: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.interval)

    def _step(self) -> None:
        pages = self._ec2.get_paginator("describe_instances").paginate()
        listed = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        alive = {i["InstanceId"]: i for i in listed if i["State"]["Name"] in ("pending", "running")}
        for item in listed:
            # Terminated before it was ever booted here (between two looks): its root
            # volume still goes, as EC2's DeleteOnTermination does.
            gone = item["InstanceId"]
            if item["State"]["Name"] == "terminated" and gone not in self.machines and gone not in self._reaped:
                self._reaped.add(gone)
                self._delete_volumes(gone)
        for instance_id, item in alive.items():
            if instance_id not in self.machines:
                self._boot(item)
        for machine in list(self.machines.values()):
            if machine.terminated:
                continue
            if machine.id not in alive:  # terminated through the API
                machine.terminated = True
                threading.Thread(target=self._kill, args=(machine,), daemon=True).start()
                self._delete_volumes(machine.id)
            elif machine.process.poll() is not None:  # shut itself down
                machine.terminated = True
                self._ec2.terminate_instances(InstanceIds=[machine.id])
                machine.metadata.close()
                self._delete_volumes(machine.id)

    def _delete_volumes(self, instance_id: str) -> None:
        """EC2 deletes a terminated instance's root volume and primary network interface
        (DeleteOnTermination); moto keeps both."""
        attached = [{"Name": "attachment.instance-id", "Values": [instance_id]}]
        for volume in self._ec2.describe_volumes(Filters=attached)["Volumes"]:
            self._ec2.detach_volume(VolumeId=volume["VolumeId"], InstanceId=instance_id, Force=True)
            self._ec2.delete_volume(VolumeId=volume["VolumeId"])
        for eni in self._ec2.describe_network_interfaces(Filters=attached)["NetworkInterfaces"]:
            self._ec2.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])

    def _boot(self, item: dict) -> None:
        instance_id = item["InstanceId"]
        attribute = self._ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        encoded = attribute.get("UserData", {}).get("Value")
        if not encoded:
            return
        user_data = base64.b64decode(encoded)
        if user_data[:2] == b"\x1f\x8b":  # cloud-init unpacks gzip-compressed user-data
            user_data = gzip.decompress(user_data)
        directory = self.workdir / instance_id
        (directory / "tmp").mkdir(parents=True)
        script = directory / "user-data"
        script.write_bytes(user_data)
        profile = (item.get("IamInstanceProfile") or {}).get("Arn", "/coiled-lab-instance").rsplit("/", 1)[-1]
        metadata = MetadataServer(Identity(
            instance_id=instance_id, private_ip=item["PrivateIpAddress"],
            zone=item["Placement"]["AvailabilityZone"], instance_type=item["InstanceType"],
            lifecycle=item.get("InstanceLifecycle") or "on-demand", role_name=profile,
        ))
        broken = item.get("ImageId") in self.broken_images
        path = [str(self._broken_bin)] if broken else []
        path += [str(self._bin), os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]
        env = {
            "PATH": os.pathsep.join(path),
            "HOME": str(directory),
            "TMPDIR": str(directory / "tmp"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            # What a VM has: a metadata service and (here) the endpoint AWS answers at. No keys.
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata.url,
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        with open(directory / "console.log", "wb") as console:
            niced = ["nice", "-n", str(self.nice)] if self.nice else []
            process = subprocess.Popen([*niced, "/bin/sh", str(script)], cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                       stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        if self.nice:
            with contextlib.suppress(OSError):  # no autogroups here: the nice value alone counts
                Path(f"/proc/{process.pid}/autogroup").write_text(str(self.nice))
        with self._lock:
            self.machines[instance_id] = Machine(instance_id, item.get("ImageId", ""), directory, metadata, process)
            self.booted += 1

    def _kill(self, machine: Machine) -> None:
        """Termination: the machine's processes end (see :func:`end_group`)."""
        machine.terminated = True
        end_group(machine.process)
        machine.metadata.close()


def end_group(process: subprocess.Popen) -> None:
    """A machine's end: its process group gets SIGTERM, then SIGKILL (shared with the GCE emulator)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(process.pid):
            process.poll()
            time.sleep(0.05)
        if not _group_alive(process.pid):
            break
    process.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)
