r"""The bootstrap of one cluster VM: ``python3 -m coiled_lab.bootstrap.vm config.json``.

The VM's start-up data (EC2 user-data, built by :mod:`coiled_lab.backends.aws.userdata`;
GCE ``startup-script`` metadata, built by :mod:`coiled_lab.backends.gcp.startup`) unpacks
this package next to a ``config.json`` and runs it with the image's own ``python3`` (a bare
Debian 12 image's 3.11, Amazon Linux 2023's 3.9); when it returns, for whatever reason, the
start-up script ends the machine: on EC2 it shuts down and EC2 terminates it
(``InstanceInitiatedShutdownBehavior=terminate``); a GCE VM deletes itself, else powers off
and the backend deletes it. ``config["cloud"]`` says which cloud. Everything up to
starting dask uses the standard library only. In order, it:

1. asks the instance metadata service (EC2: IMDSv2 at ``AWS_EC2_METADATA_SERVICE_ENDPOINT``;
   GCE: the metadata server, :mod:`.gce`) who it is: instance id, private address,
   region, purchase option;
2. starts shipping its own output, from then on, and later the dask process's, to the
   cloud's log service: the CloudWatch stream ``<cluster-id>/<role>-<instance-id>``
   (:class:`~.logship.CloudWatchLogs`, signed with the instance role's credentials), or
   Cloud Logging entries labelled with the cluster id (:mod:`.cloudlogging`). Every line
   also goes to stdout, which is the console (serial port) output the cloud keeps, so a
   boot that never reached the log service can still be read;
3. fetches uv, makes a virtual environment with the Python the cluster asked for
   (``python_version``) and installs the packages into it (:mod:`.packages`). A package
   the cluster cannot run without that cannot be installed ends the boot here, with the
   installer's explanation as the last log lines;
4. starts ``dask scheduler`` (with the preloads that stop an idle or abandoned cluster and
   keep a history of its use) or, once the scheduler accepts connections, ``dask worker`` / ``dask cuda
   worker`` named after the instance, all over the cluster's TLS, with the environment's python;
5. on a spot worker, watches for an interruption notice and then retires the worker
   through the scheduler (a process of the environment's python: it needs distributed),
   so its data moves to the others before the machine goes.

Each phase's duration is one log line (console and log service), to be read by people and
benchmarks alike; after the log format's prefix (``<date> <time>,<ms>Z - coiled_lab.bootstrap
- INFO - ``, in UTC like every line a VM writes) it is ``boot: <phase> <details> in <seconds> s``, matched by
``boot: (?P<phase>[a-z]+)\b(?P<details>.*) in (?P<seconds>[0-9]+\.[0-9]) s$``::

    boot: uv 0.13.9 ready in 1.4 s
    boot: python 3.11.2 (/usr/bin/python3.11, the distribution's) ready in 2.1 s
    boot: packages: 187 installed, 2 skipped in 34.0 s
    boot: scheduler tls://10.0.1.5:8786 reachable in 0.3 s      (workers only)
    boot: dask scheduler started in 1.3 s                       (or: dask worker started)
    boot: total to dask scheduler started in 39.1 s

``python``'s source is ``the distribution's`` (the image's interpreter), ``uv's download`` or
``found on this machine``. The same phases (``total`` aside: it is a line only, the time
since the bootstrap started) are in ``boot-report.json`` next to config.json
(``{"python", "python_source", "phases": [{"name", "seconds"}], "installed", "skipped":
[{"requirement", "reason"}]}``), rewritten after each phase; the dask process gets its path
in ``COILED_LAB_BOOT_REPORT`` and the scheduler's preload (:mod:`.lifetime`) answers it.

A worker ends when its scheduler has been unreachable for ``death_timeout`` seconds,
so no VM outlives its cluster even when nobody is left to terminate it. This module holds
no credentials and is given none: the VM's role (EC2) or service account (GCE) provides
them through the metadata service.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from . import envcache, packages
from .logship import CloudWatchLogs, InstanceRoleCredentials, LogShipper, utc_stamps

DEFAULT_METADATA_ENDPOINT = "http://169.254.169.254"
# Metadata services are reached directly, never through a proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# The lines of distributed that say a dask process is up (scheduler; worker or cuda worker).
STARTED = {"scheduler": "Scheduler at:", "worker": "Registered to:"}
# The bootstrap's own lines: dask's format, stamped in UTC as the dask processes' are (.utclog).
_SAY = utc_stamps(logging.Formatter("%(asctime)s - coiled_lab.bootstrap - %(levelname)s - %(message)s"))
# Given first to every dask process: its log lines are stamped in UTC.
UTC_PRELOAD = "coiled_lab.bootstrap.utclog"


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
        with _DIRECT.open(request, timeout=self.timeout) as response:
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
                with _DIRECT.open(request, timeout=self.timeout) as response:
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
        """A line of uv's or dask's output, as it came."""
        print(line, flush=True)
        self.shipper.write(line)

    def say(self, message: str, level: str = "INFO") -> None:
        """A line of the bootstrap's own, in dask's log format so it parses the same way."""
        self(_SAY.format(logging.LogRecord("coiled_lab.bootstrap", logging.getLevelName(level), "", 0, message,
                                           None, None)))


class BootReport:
    """``boot-report.json``: what the boot did and how long each phase took, written anew
    (atomically) after every phase; each phase is also one ``boot:`` line (module docstring)."""

    def __init__(self, path: Path, say: Callable[..., None]):
        self.path = path
        self.say = say
        self.data: dict[str, Any] = {"python": None, "python_source": None, "phases": [], "installed": 0,
                                     "skipped": []}
        self.save()

    def phase(self, name: str, started: float, details: str) -> None:
        """One phase done: ``started`` is its ``time.monotonic()`` at the start."""
        seconds = time.monotonic() - started
        self.data["phases"].append({"name": name, "seconds": round(seconds, 1)})
        self.say(f"boot: {name}{details} in {seconds:.1f} s")
        self.save()

    def save(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data))
        partial.replace(self.path)


def dask_command(config: dict[str, Any], me: Identity, workdir: Path, python: str = sys.executable) -> list[str]:
    """The dask process this VM runs with ``python`` (the environment's), bound to its
    private address, over the cluster's TLS."""
    tls = ["--tls-ca-file", str(workdir / "tls-cert.pem"), "--tls-cert", str(workdir / "tls-cert.pem"),
           "--tls-key", str(workdir / "tls-key.pem")]
    if config["role"] == "scheduler":
        return [
            python, "-m", "distributed.cli.dask_scheduler",
            "--host", me.private_ip, "--port", str(config["scheduler_port"]), "--protocol", "tls", *tls,
            "--dashboard-address", f"{me.private_ip}:{config['dashboard_port']}",
            "--preload", UTC_PRELOAD, "--preload", "coiled_lab.bootstrap.lifetime",
            "--preload", "coiled_lab.bootstrap.watchdog",
        ]
    command = [python, "-m", "dask", "cuda", "worker"] if config["gpu"] else [
        python, "-m", "distributed.cli.dask_worker"]
    command += [
        config["scheduler_address"], "--name", me.instance_id, "--host", me.private_ip, *tls,
        "--death-timeout", str(config["death_timeout"]), "--preload", UTC_PRELOAD,
    ]
    options = config.get("worker_options") or {}  # the spec's worker_options
    command += ["--nthreads", str(options["nthreads"])] if "nthreads" in options else []
    command += ["--memory-limit", str(options["memory_limit"])] if "memory_limit" in options else []
    if not config["gpu"]:
        command += ["--nanny" if config["nanny"] else "--no-nanny", "--no-dashboard"]
        # dask cuda worker has no such option: its nanny's few lines are in the image's zone (UTC on clouds).
        command += ["--preload-nanny", UTC_PRELOAD] if config["nanny"] else []
    return command


def dask_environment(config: dict[str, Any], workdir: Path, venv: Optional[str] = None) -> dict[str, str]:
    """The dask process's environment: this one, the cluster's ``environ``, TLS required,
    the bootstrap importable (for the preloads), the virtual environment first on PATH,
    and where the boot report is."""
    env = dict(os.environ)
    env.update(config["environ"])
    env.update(
        {
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "PYTHONUNBUFFERED": "1",
            # The preload (coiled_lab.bootstrap.lifetime) is importable from here.
            # The user's code first (package sync ships the working directory's files).
            "PYTHONPATH": os.pathsep.join(p for p in (str(workdir / "code") if (workdir / "code").is_dir() else "",
                                                      str(workdir), env.get("PYTHONPATH")) if p),
            "COILED_LAB_BOOT_REPORT": str(workdir / "boot-report.json"),
        }
    )
    if venv:
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = os.pathsep.join(p for p in (os.path.join(venv, "bin"), env.get("PATH")) if p)
    return env


def _on_ec2(config: dict[str, Any]) -> tuple[Identity, LogShipper, Callable[[], Optional[str]], Callable[[dict], Any]]:
    """Who this EC2 VM is, its CloudWatch Logs shipper, its spot interruption notice, and
    its environment bucket (signed with the instance role's credentials)."""
    metadata = Metadata()
    me = metadata.identity()
    credentials = InstanceRoleCredentials(metadata.get)
    shipper = LogShipper(lambda: CloudWatchLogs(me.region, credentials), config["log_group"],
                         f"{config['cluster_id']}/{config['role']}-{me.instance_id}")
    return (me, shipper, lambda: metadata.get("spot/instance-action"),
            lambda store: envcache.open_bucket(store, credentials))


def prepare(config: dict[str, Any], workdir: Path, out: Output, report: BootReport,
            bucket: Optional[envcache.Bucket] = None) -> Optional[str]:
    """The environment dask runs in, under ``workdir``: mounted from the bucket's image when
    it is built (a worker of a cluster building it waits for it), else uv, the virtual environment
    and the packages (:mod:`.packages`), each a timed phase. Returns the environment's
    python, or None when dask cannot start (said at ERROR, the last lines)."""
    env = config.get("env")
    if env and bucket is not None and (env["built"] or not env["build"]):
        started = time.monotonic()
        try:
            got = envcache.mount(bucket, env["archive"], workdir)
            if not got and not env["built"]:
                out.say(f"waiting for environment {env['hash']}, which the scheduler installs and uploads")
                got = envcache.wait_for(bucket, env["archive"], workdir, env["wait"], out.say)
            python = str(workdir / "venv" / "bin" / "python")
            if got and subprocess.run([python, "-c", "import dask, distributed"], capture_output=True).returncode == 0:
                report.phase("environment", started, f" {env['hash']} mounted")
                config["env"]["built"] = True
                return python
            if got:
                out.say(f"environment image {env['archive']} does not run dask; installing instead", "WARNING")
        except (OSError, ValueError, KeyError) as exc:
            out.say(f"environment image {env['archive']} could not be used ({type(exc).__name__}: {exc}); "
                    "installing instead", "WARNING")
        envcache.discard(workdir)
        config["env"]["built"] = False
    index = packages.index_url(config.get("index_url"))
    uv_env = packages.uv_environment(workdir, index)
    pins = list(config.get("packages") or [])
    try:
        if env and bucket is not None:
            started = time.monotonic()
            envcache.fetch_inputs(bucket, env["inputs"], workdir / "inputs")
            pins = [x for x in (workdir / "inputs" / "pins.txt").read_text().splitlines() if x.strip()]
            pins += [str(w) for w in sorted((workdir / "inputs" / "wheels").glob("*.whl"))]
            if (workdir / "inputs" / "code").exists():
                (workdir / "inputs" / "code").replace(workdir / "code")
            report.phase("inputs", started, f" of environment {env['hash']} fetched")
        started = time.monotonic()
        uv = packages.fetch_uv(workdir / "bin", index)
        report.phase("uv", started, f" {packages.UV_VERSION} ready")
        started = time.monotonic()
        wanted = config.get("python_version") or "%d.%d" % sys.version_info[:2]
        python, version, source = packages.make_venv(uv, wanted, workdir / "venv", uv_env, out)
        report.data.update(python=version, python_source=source)
        report.phase("python", started, f" {version} ({source}) ready")
    except (packages.BootError, OSError, tarfile.TarError) as exc:
        out.say(f"cannot start dask: {exc}", "ERROR")
        return None
    started = time.monotonic()
    outcome = packages.install(
        packages.Installer(uv, python, uv_env, out, workdir), pins, out.say,
        config.get("requirements"), {"dask": config.get("dask_version"), "distributed": config.get("distributed_version")},
        bool(config.get("gpu")), config.get("required_packages") or (),
    )
    report.data.update(installed=len(outcome.installed),
                       skipped=[{"requirement": s.requirement, "reason": s.reason} for s in outcome.skipped])
    report.phase("packages", started, f": {len(outcome.installed)} installed, {len(outcome.skipped)} skipped")
    for message in outcome.fatal:
        out.say(f"cannot start dask: {message}", "ERROR")
    return None if outcome.fatal else python


def upload(bucket: envcache.Bucket, env: dict[str, Any], workdir: Path, say: Callable[..., None]) -> None:
    """The scheduler that installed a new environment packs and uploads it, while dask runs."""
    started = time.monotonic()
    try:
        image = envcache.pack(workdir, env["hash"])
        size = image.stat().st_size
        bucket.put(env["archive"], image)
        image.unlink()
        say(f"environment {env['hash']} imaged ({size / 2**20:.0f} MiB) and uploaded to {env['archive']} "
            f"in {time.monotonic() - started:.1f} s")
    except Exception as exc:  # noqa: BLE001 - the next cluster builds it again
        say(f"environment {env['hash']} could not be uploaded: {type(exc).__name__}: {exc}", "WARNING")


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    boot_started = time.monotonic()
    config_path = Path(args[0] if args else "config.json").resolve()
    config = json.loads(config_path.read_text())
    if config.get("cloud") == "gcp":
        from .gce import on_gce

        me, shipper, notice_of, open_bucket = on_gce(config)
    else:
        me, shipper, notice_of, open_bucket = _on_ec2(config)
    shipper.start()  # lines reach the log service from now on, while everything installs
    out = Output(shipper)
    try:
        bucket = open_bucket(config["env"]["store"]) if config.get("env") else None
        return _boot(config, config_path, me, notice_of, out, boot_started, bucket)
    except Exception:  # noqa: BLE001 - said where the manager reads it, then the machine goes
        for line in traceback.format_exc().rstrip().splitlines():
            out(line)
        out.say(f"cannot start dask: the bootstrap failed: {sys.exc_info()[0].__name__}: {sys.exc_info()[1]}",
                "ERROR")
        return 1
    finally:
        shipper.close()


def _boot(config: dict[str, Any], config_path: Path, me: Identity, notice_of: Callable[[], Optional[str]],
          out: Output, boot_started: float, bucket: Optional[envcache.Bucket] = None) -> int:
    workdir, role = config_path.parent, config["role"]
    out.say(f"{role} {me.instance_id} ({me.instance_type}, {me.zone}, {'spot' if me.spot else 'on-demand'}) "
            f"of cluster {config['cluster_id']} at {me.private_ip}; this bootstrap runs under {sys.executable} "
            f"(Python {'%d.%d.%d' % sys.version_info[:3]})")
    for line in config.get("packages_skipped") or ():
        out.say(f"package_sync cannot install {line}", "WARNING")
    report = BootReport(workdir / "boot-report.json", out.say)
    python = prepare(config, workdir, out, report, bucket)
    if python is None:
        return 1

    for name, text in (("tls-cert.pem", config["tls"]["cert"]), ("tls-key.pem", config["tls"]["key"])):
        fd = os.open(workdir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    if role == "worker":
        from . import worker

        started = time.monotonic()
        if not worker.wait_for_scheduler(config["scheduler_address"], config["start_timeout"], out.say):
            return 1
        report.phase("scheduler", started, f" {config['scheduler_address']} reachable")

    venv = str(Path(python).parent.parent)
    env = dask_environment(config, workdir, venv)
    command = dask_command(config, me, workdir, python)
    out.say(f"starting dask {role}: {' '.join(command)}")
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
                            env=env, errors="replace")
    # Termination (EC2 stopping the machine) reaches us first: pass it on, then drain.
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    marker = STARTED[role]

    def pump() -> None:
        assert proc.stdout is not None
        up = False
        for line in proc.stdout:
            out(line.rstrip("\n"))
            if not up and marker in line:
                up = True
                report.phase("dask", started, f" {role} started")
                out.say(f"boot: total to dask {role} started in {time.monotonic() - boot_started:.1f} s")

    reader = threading.Thread(target=pump, name="coiled-lab-output", daemon=True)
    reader.start()
    env = config.get("env")
    if env and bucket is not None and env["build"] and not env["built"]:
        threading.Thread(target=upload, args=(bucket, env, workdir, out.say), name="coiled-lab-upload",
                         daemon=True).start()
    if role == "worker" and me.spot:
        retire_worker = lambda: worker.retire_with(python, config_path, me.instance_id, env, out)  # noqa: E731
        threading.Thread(target=worker.watch_spot, args=(notice_of, config["spot_poll_interval"], proc, out.say,
                                                         retire_worker), name="coiled-lab-spot", daemon=True).start()
    code = proc.wait()
    reader.join(10)
    out.say(f"dask {role} exited with status {code}; this machine shuts down")
    return code


if __name__ == "__main__":
    sys.exit(main())
