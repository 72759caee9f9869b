"""The bootstrap of one cluster VM: ``python -m coiled_lab.bootstrap.vm config.json``.

The VM's start-up data (EC2 user-data, built by :mod:`coiled_lab.backends.aws.userdata`;
GCE ``startup-script`` metadata, built by :mod:`coiled_lab.backends.gcp.startup`) unpacks
this package next to a ``config.json`` and runs it; when it returns, for whatever reason,
the start-up script shuts the machine down (EC2 then terminates it,
``InstanceInitiatedShutdownBehavior=terminate``; GCE stops it, and the backend deletes
stopped machines of its clusters). ``config["cloud"]`` says which cloud. In order, it:

1. asks the instance metadata service (EC2: IMDSv2 at ``AWS_EC2_METADATA_SERVICE_ENDPOINT``;
   GCE: the metadata server, :mod:`.gce`) who it is: instance id, private address,
   region, purchase option;
2. installs the packages ``package_sync`` recorded (only those not already there);
3. starts shipping its own output and the dask process's to the cloud's log service:
   the CloudWatch stream ``<cluster-id>/<role>-<instance-id>``, or Cloud Logging entries
   labelled with the cluster id (:mod:`.cloudlogging`). Every line also goes to stdout,
   which is the console (serial port) output the cloud keeps, so a boot that never
   reached the log service can still be read;
4. starts ``dask scheduler`` (with the preloads that stop an idle or abandoned cluster and
   keep a history of its use) or, once the scheduler accepts connections, ``dask worker`` / ``dask cuda
   worker`` named after the instance, all over the cluster's TLS;
5. on a spot worker, watches for an interruption notice and then retires the worker
   through the scheduler, so its data moves to the others before the machine goes.

A worker ends when its scheduler has been unreachable for ``death_timeout`` seconds,
so no VM outlives its cluster even when nobody is left to terminate it. This module holds
no credentials and is given none: the VM's role (EC2) or service account (GCE) provides
them through the metadata service.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from . import packages
from .logship import LogShipper

DEFAULT_METADATA_ENDPOINT = "http://169.254.169.254"


@dataclass(frozen=True)
class Identity:
    instance_id: str
    private_ip: str
    region: str
    zone: str
    instance_type: str
    spot: bool


class Metadata:
    """A minimal IMDSv2 client: a session token first, then plain GETs that carry it."""

    def __init__(self, endpoint: Optional[str] = None, timeout: float = 2.0):
        self.base = (endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_METADATA_ENDPOINT)
        self.base = self.base.rstrip("/")
        self.timeout = timeout
        self._token: Optional[str] = None

    def _new_token(self) -> str:
        request = urllib.request.Request(
            f"{self.base}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read().decode()

    def get(self, path: str) -> Optional[str]:
        """The value at ``/latest/meta-data/<path>``, or None where there is none (404)."""
        for attempt in range(2):  # a second time only with a fresh token, if it expired
            if self._token is None or attempt:
                self._token = self._new_token()
            request = urllib.request.Request(
                f"{self.base}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self._token}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code != 401:
                    raise
        raise PermissionError("the instance metadata service refused a fresh token")

    def identity(self) -> Identity:
        zone = self.get("placement/availability-zone") or ""
        return Identity(
            instance_id=self.get("instance-id") or "",
            private_ip=self.get("local-ipv4") or "",
            region=self.get("placement/region") or zone[:-1],
            zone=zone,
            instance_type=self.get("instance-type") or "",
            spot=self.get("instance-life-cycle") == "spot",
        )


class Output:
    """Every line to stdout (the console) and to the log shipper."""

    def __init__(self, shipper: LogShipper):
        self.shipper = shipper

    def __call__(self, line: str) -> None:
        """A line of pip's or dask's output, as it came."""
        print(line, flush=True)
        self.shipper.write(line)

    def say(self, message: str, level: str = "INFO") -> None:
        """A line of the bootstrap's own, in dask's log format so it parses the same way."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        self(f"{stamp} - coiled_lab.bootstrap - {level} - {message}")


def dask_command(config: dict[str, Any], me: Identity, workdir: Path) -> list[str]:
    """The dask process this VM runs, bound to its private address, over the cluster's TLS."""
    tls = ["--tls-ca-file", str(workdir / "tls-cert.pem"), "--tls-cert", str(workdir / "tls-cert.pem"),
           "--tls-key", str(workdir / "tls-key.pem")]
    if config["role"] == "scheduler":
        return [
            sys.executable, "-m", "distributed.cli.dask_scheduler",
            "--host", me.private_ip, "--port", str(config["scheduler_port"]), "--protocol", "tls", *tls,
            "--dashboard-address", f"{me.private_ip}:{config['dashboard_port']}",
            "--preload", "coiled_lab.bootstrap.lifetime", "--preload", "coiled_lab.bootstrap.watchdog",
        ]
    command = [sys.executable, "-m", "dask", "cuda", "worker"] if config["gpu"] else [
        sys.executable, "-m", "distributed.cli.dask_worker"]
    command += [
        config["scheduler_address"], "--name", me.instance_id, "--host", me.private_ip, *tls,
        "--death-timeout", str(config["death_timeout"]),
    ]
    if not config["gpu"]:
        command += ["--nanny" if config["nanny"] else "--no-nanny", "--no-dashboard"]
    return command


def dask_environment(config: dict[str, Any], workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(config["environ"])
    env.update(
        {
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "PYTHONUNBUFFERED": "1",
            # The preload (coiled_lab.bootstrap.lifetime) is importable from here.
            "PYTHONPATH": os.pathsep.join(p for p in (str(workdir), env.get("PYTHONPATH")) if p),
        }
    )
    return env


def wait_for_scheduler(address: str, timeout: float, say: Callable[..., None]) -> bool:
    """Wait until the scheduler accepts TCP connections (it boots in parallel with us)."""
    host, port = address.split("://", 1)[-1].rsplit(":", 1)
    deadline = time.monotonic() + timeout
    say(f"waiting for the scheduler at {address}")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            time.sleep(0.25)
    say(f"the scheduler at {address} did not answer within {timeout:g}s", "ERROR")
    return False


def retire(config: dict[str, Any], workdir: Path, name: str) -> None:
    """Ask the scheduler to move this worker's data elsewhere and close it."""
    import asyncio

    from distributed.core import rpc
    from distributed.security import Security

    cert, key = str(workdir / "tls-cert.pem"), str(workdir / "tls-key.pem")
    security = Security(tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, require_encryption=True)

    async def _retire() -> None:
        async with rpc(config["scheduler_address"], connection_args=security.get_connection_args("client")) as r:
            await asyncio.wait_for(r.retire_workers(names=[name], close_workers=True, remove=True), 90)

    asyncio.run(_retire())


def watch_spot(
    notice_of: Callable[[], Optional[str]], config: dict[str, Any], workdir: Path, me: Identity,
    proc: subprocess.Popen, say: Callable[..., None],
) -> None:
    """Poll for a spot interruption notice (EC2 gives two minutes, GCE 30 seconds); retire gracefully."""
    while proc.poll() is None:
        try:
            notice = notice_of()
        except OSError:
            notice = None
        if notice:
            say(f"spot interruption notice {notice}; retiring this worker", "WARNING")
            try:
                retire(config, workdir, me.instance_id)
            except Exception as exc:  # noqa: BLE001 - then stop it less gracefully
                say(f"graceful retirement failed ({type(exc).__name__}: {exc}); stopping the worker", "ERROR")
                proc.terminate()
            return
        time.sleep(config["spot_poll_interval"])


def _logs_client(region: str):
    from botocore.config import Config

    import boto3

    return boto3.client("logs", region_name=region, config=Config(retries={"mode": "standard", "max_attempts": 10}))


def _on_gce(config: dict[str, Any]) -> tuple[Identity, LogShipper, Callable[[], Optional[str]]]:
    """Who this GCE VM is, its Cloud Logging shipper, and its preemption notice."""
    from . import cloudlogging, gce

    metadata = gce.Metadata()
    me = Identity(**metadata.identity())
    project = config.get("project") or metadata.project()
    shipper = cloudlogging.CloudLoggingShipper(
        metadata.token, config.get("logging_endpoint") or cloudlogging.DEFAULT_ENDPOINT,
        f"projects/{project}/logs/{config['log_name']}",
        {"type": "gce_instance", "labels": {"project_id": project, "zone": me.zone,
                                            "instance_id": metadata.get("instance/id") or me.instance_id}},
        {cloudlogging.CLUSTER_LABEL: config["cluster_id"], cloudlogging.ROLE_LABEL: config["role"],
         cloudlogging.INSTANCE_LABEL: me.instance_id},
    )
    return me, shipper, metadata.preempted


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config_path = Path(args[0] if args else "config.json").resolve()
    workdir = config_path.parent
    config = json.loads(config_path.read_text())
    role = config["role"]
    if config.get("cloud") == "gcp":
        me, shipper, notice_of = _on_gce(config)
    else:
        metadata = Metadata()
        me = metadata.identity()
        shipper = LogShipper(lambda: _logs_client(me.region), config["log_group"],
                             f"{config['cluster_id']}/{role}-{me.instance_id}")
        notice_of = lambda: metadata.get("spot/instance-action")  # noqa: E731
    out = Output(shipper)
    out.say(f"{role} {me.instance_id} ({me.instance_type}, {me.zone}, {'spot' if me.spot else 'on-demand'}) "
            f"of cluster {config['cluster_id']} at {me.private_ip}")
    for line in config["packages_skipped"]:
        out.say(f"package_sync cannot install {line}", "WARNING")
    packages.install(config["packages"], out, out.say, config.get("requirements"))
    if config.get("cloud") != "gcp":
        try:
            import boto3  # noqa: F401 - the shipper needs it; an image without it gets it now
        except ImportError:
            packages.install([], out, out.say, requirements_text="boto3\n")
    shipper.start()

    for name, text in (("tls-cert.pem", config["tls"]["cert"]), ("tls-key.pem", config["tls"]["key"])):
        fd = os.open(workdir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    if role == "worker" and not wait_for_scheduler(config["scheduler_address"], config["start_timeout"], out.say):
        shipper.close()
        return 1

    command = dask_command(config, me, workdir)
    out.say(f"starting dask {role}: python {' '.join(command[1:])}")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
                            env=dask_environment(config, workdir))
    # Termination (EC2 stopping the machine) reaches us first: pass it on, then drain.
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out(line.rstrip("\n"))

    reader = threading.Thread(target=pump, name="coiled-lab-output", daemon=True)
    reader.start()
    if role == "worker" and me.spot:
        threading.Thread(target=watch_spot, args=(notice_of, config, workdir, me, proc, out.say),
                         name="coiled-lab-spot", daemon=True).start()
    code = proc.wait()
    reader.join(10)
    out.say(f"dask {role} exited with status {code}; this machine shuts down")
    shipper.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
