"""One bare emulated VM: the cached Debian image, its own namespaces, its user-data as boot.

What runs inside is what a fresh cloud VM would run: the distribution's programs from
the image (no test venv, no pip), as root, with the VM's own process tree, hostname,
network and copy-on-write disk. The boot sequence::

    nice? ip netns exec <vm netns> unshare --pid --fork --mount --uts --ipc --kill-child
        sh (host's) mounts the overlay (lower = cached image, upper/work under workdir),
           /proc, /sys (ro), a minimal /dev, tmpfs /tmp and /run, sets the hostname,
        chroot <overlay> /usr/lib/coiled-lab-vm/init      <- PID 1 of the VM
            exec user-data (honouring its #!), output to the console log; when it
            ends, PID 1 keeps the machine up, like a real VM, until power-off.

All mounts live in the VM's own mount namespace, so they vanish with its last process.
``shutdown``/``poweroff``/``halt`` in the image are replaced by a script that signals
PID 1, whose exit ends every process of the VM (the PID namespace dies with its init);
:meth:`VM.kill` does the same from outside (SIGKILL), as a termination through the API.

The VM has no DNS resolver: its ``http_proxy``/``https_proxy`` (the emulated network's
egress proxy) resolve names for it, and ``/etc/hosts`` names the metadata server. Its CA
bundle is this machine's plus the emulator CA (this machine reaches the registries
through a CA only its own bundle holds, and the package cache presents the emulator CA's
certificates); the TLS variables in :data:`TLS_ENV` point Python tools at that bundle.
Both are sandbox concessions that stay in the emulator: a real image has its own CAs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .network import Network
from .pki import HOST_BUNDLE

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT = "/usr/lib/coiled-lab-vm/init"
SCRIPT_EXIT = "/var/lib/coiled-lab-vm/user-data-exit"  # the user-data's exit status, once it ended
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TLS_ENV = {"SSL_CERT_FILE": BUNDLE, "REQUESTS_CA_BUNDLE": BUNDLE, "PIP_CERT": BUNDLE}
POWER_OFF = ("shutdown", "poweroff", "halt")

# PID 1 of the VM, run by the image's /bin/sh (dash). A trapped signal is how power-off
# reaches it: PID 1 of a namespace gets only signals it has a handler for. `env
# --default-signal` undoes the SIGINT/SIGQUIT ignoring that sh applies to `&` jobs, so the
# user-data starts with default signal handling, as under cloud-init.
INIT_SCRIPT = f"""#!/bin/sh
# PID 1 of an emulated VM (coiled-lab tests): runs the user-data, then keeps the machine up.
trap 'exit 0' USR2 TERM
cd /
unset OLDPWD
env --default-signal=INT,QUIT "$1" </dev/null &
wait $!
status=$?
mkdir -p {os.path.dirname(SCRIPT_EXIT)} && echo "$status" > {SCRIPT_EXIT}
while :; do
    sleep 86400 &
    wait $!
done
"""

POWER_OFF_SCRIPT = """#!/bin/sh
# Emulated VM: every shutdown/poweroff/halt powers the machine off now (PID 1 exits).
kill -USR2 1
sleep 10
"""

# Run by the host's /bin/sh as PID 1 of the new PID namespace, before it becomes the init.
SETUP_SCRIPT = """set -eu
lower=$1 upper=$2 work=$3 root=$4 name=$5 script=$6
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,noexec,mode=0755,size=4m tmpfs "$root/dev"
cd "$root/dev"
mknod -m 666 null c 1 3; mknod -m 666 zero c 1 5; mknod -m 666 full c 1 7
mknod -m 666 random c 1 8; mknod -m 666 urandom c 1 9; mknod -m 666 tty c 5 0
# A cloud VM's devtmpfs has the loop devices (environment images are mounted from them);
# the kernel hands out the lowest free one, shared with the host and the other VMs.
mknod -m 660 loop-control c 10 237; i=0; while [ $i -lt 64 ]; do mknod -m 660 loop$i b 7 $i; i=$((i+1)); done
ln -s /proc/self/fd fd; ln -s /proc/self/fd/0 stdin; ln -s /proc/self/fd/1 stdout; ln -s /proc/self/fd/2 stderr
mkdir -m 0755 pts; mkdir -m 1777 shm
if mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec devpts pts; then ln -s pts/ptmx ptmx; fi
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs shm
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs "$root/run"
mkdir -m 1777 "$root/run/lock"
hostname "$name"
cd /
exec chroot "$root" {init} "$script"
""".replace("{init}", INIT)


class VM:
    """A bare machine on ``network``, booting ``script`` (user-data bytes, already unpacked).

    ``env`` is all the environment the VM gets beyond PATH, HOME, LANG, the proxy
    variables, ``no_proxy`` and :data:`TLS_ENV`. ``files`` (path in the VM -> bytes) are
    put on its disk before boot, e.g. a broken interpreter for a "broken image" test.
    ``workdir`` holds the copy-on-write layer (removed by :meth:`close`) and
    ``console.log`` (kept, so a terminated instance's console can still be read).
    ``script`` is run as is: gzip-compressed user-data is the caller's (cloud-init's) to
    unpack. ``hostname`` defaults to EC2's ``ip-10-0-0-5`` form. ``reboot`` is not
    emulated (the image has none); shutdown/poweroff/halt always power off at once.

    API: :meth:`start`, :attr:`alive`, :meth:`poll`, :attr:`exit_code` (0 after a
    power-off, -9 after :meth:`kill`), :attr:`script_exit`, :meth:`wait`,
    :meth:`console`, :meth:`run` (a command inside the running VM), :meth:`kill`,
    :meth:`close`; :attr:`netns`, :attr:`env`, :attr:`console_path`.
    """

    def __init__(self, network: Network, vm_id: str, rootfs: Path, workdir: Path, script: bytes,
                 env: Mapping[str, str], private_ip: str, vpc_id: str, vpc_cidr: str,
                 public_ip: Optional[str] = None, metadata_handler: Optional[type[BaseHTTPRequestHandler]] = None,
                 nice: int = 0, hostname: Optional[str] = None,
                 script_path: str = "/var/lib/cloud/instance/user-data",
                 files: Optional[Mapping[str, bytes]] = None):
        self.network = network
        self.vm_id = vm_id
        self.rootfs = Path(rootfs)
        self.workdir = Path(workdir)
        self.script = script
        self.private_ip = private_ip
        self.vpc_id = vpc_id
        self.vpc_cidr = vpc_cidr
        self.public_ip = public_ip
        self.metadata_handler = metadata_handler
        self.nice = nice
        self.hostname = hostname or "ip-" + private_ip.replace(".", "-")
        self.script_path = script_path
        self.files = dict(files or {})
        self.netns: Optional[str] = None
        self.started_at: Optional[float] = None
        self._process: Optional[subprocess.Popen] = None
        self._closed = False
        proxy = network.proxy_url
        self.env = {
            "PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8",
            "http_proxy": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy,
            **{k: f"{network.metadata_address},metadata.google.internal,localhost,127.0.0.1,{vpc_cidr}"
               for k in ("no_proxy", "NO_PROXY")},
            **TLS_ENV,
            **env,
        }

    @property
    def upper(self) -> Path:
        return self.workdir / "upper"

    @property
    def console_path(self) -> Path:
        return self.workdir / "console.log"

    # -- life ------------------------------------------------------------------------------
    def start(self) -> "VM":
        """Attach to the network, lay out the disk, boot. Anything half-done is undone on failure."""
        if self._process is not None or self._closed:
            raise RuntimeError(f"{self.vm_id} was started already")
        try:
            for part in (self.upper, self.workdir / "work", self.workdir / "root"):
                part.mkdir(parents=True, exist_ok=True)
            for path in (self.rootfs, self.upper, self.workdir / "work", self.workdir / "root"):
                if any(c in str(path) for c in ",:\n"):
                    raise ValueError(f"{path}: overlayfs paths cannot contain ',' or ':'")
            self._lay_out_disk()
            self.netns = self.network.attach(self.vm_id, self.private_ip, self.vpc_id, self.vpc_cidr,
                                             self.public_ip, self.metadata_handler)
            self._boot()
        except BaseException:
            self.close()
            raise
        return self

    def _boot(self) -> None:
        assert self.netns is not None
        cmd = ["ip", "netns", "exec", self.netns,
               "unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--kill-child", "--propagation", "private",
               "/bin/sh", "-c", SETUP_SCRIPT, "vm-setup",
               str(self.rootfs), str(self.upper), str(self.workdir / "work"), str(self.workdir / "root"),
               self.hostname, self.script_path]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        with open(self.console_path, "ab") as console:
            self.started_at = time.monotonic()
            self._process = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=console,
                                             stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
        if self.nice:
            # Each VM is a session of its own; where Linux schedules sessions as groups
            # (autogroup), the nice value counts within the group, so the group is niced too.
            with contextlib.suppress(OSError):
                Path(f"/proc/{self._process.pid}/autogroup").write_text(str(self.nice))

    def _lay_out_disk(self) -> None:
        """Files this VM's disk differs in from the image, written to the overlay's upper layer."""
        ca = self.network.ca_pem
        hosts = (f"127.0.0.1\tlocalhost\n{self.private_ip}\t{self.hostname}\n"
                 f"{self.network.metadata_address}\tmetadata.google.internal metadata\n")
        power_off = {f"/usr/sbin/{name}": (POWER_OFF_SCRIPT.encode(), 0o755) for name in POWER_OFF}
        power_off.update({f"/sbin/{name}": (POWER_OFF_SCRIPT.encode(), 0o755) for name in POWER_OFF})
        layout: dict[str, tuple[bytes, int]] = {
            BUNDLE: (HOST_BUNDLE.read_bytes().rstrip(b"\n") + b"\n" + ca, 0o644),
            "/etc/hosts": (hosts.encode(), 0o644),
            "/etc/hostname": (f"{self.hostname}\n".encode(), 0o644),
            "/etc/resolv.conf": (b"# no resolver: names are resolved by the egress proxy (http_proxy)\n", 0o644),
            INIT: (INIT_SCRIPT.encode(), 0o755),
            **power_off,
            self.script_path: (self.script, 0o700),
            **{path: (data, 0o755 if data.startswith(b"#!") else 0o644) for path, data in self.files.items()},
        }
        for path, (data, mode) in layout.items():
            target = self.upper / _inside(self.rootfs, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            target.write_bytes(data)
            target.chmod(mode)

    # -- state -----------------------------------------------------------------------------
    def poll(self) -> Optional[int]:
        """None while the VM runs, else how it ended (0 after power-off, -9 after :meth:`kill`)."""
        return self._process.poll() if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def exit_code(self) -> Optional[int]:
        return self.poll()

    @property
    def script_exit(self) -> Optional[int]:
        """The user-data's exit status once it ended (the VM may still be running)."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.upper / SCRIPT_EXIT.lstrip("/")).read_text().strip())
        return None

    def wait(self, timeout: float) -> Optional[int]:
        """Wait at most ``timeout`` seconds for the VM to end; its exit code, or None."""
        if self._process is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self._process.wait(timeout)
        return None

    def console(self) -> str:
        """Everything the boot printed so far (the user-data's stdout and stderr)."""
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run(self, cmd: Sequence[str], timeout: float = 30, env: Optional[Mapping[str, str]] = None
            ) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the running VM (all its namespaces and root), as root, with its env.
        Right after :meth:`start` it first waits (at most 10 s) for the VM's init to run."""
        init = self._booted_init(10)
        if init is None:
            raise RuntimeError(f"{self.vm_id} is not running")
        return subprocess.run(["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "-r", "-w", *cmd],
                              env=dict(env if env is not None else self.env), capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    # -- the end ---------------------------------------------------------------------------
    def kill(self) -> None:
        """Hard stop, as a termination through the API: SIGKILL to the VM's PID 1."""
        if self._process is None or self._process.poll() is not None:
            return
        init = self._init_pid()
        if init is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self._process.send_signal(signal.SIGKILL)  # --kill-child takes PID 1 with it too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(10)

    def close(self) -> None:
        """Stop the VM if needed and remove its namespace, network state and disk layer
        (everything but ``console.log``); safe to call at any point, more than once."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for step in (self.kill, self._detach, self._remove_disk):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - do every step, report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]

    def _detach(self) -> None:
        if self.netns is not None:  # attached by this object (not a clash with another VM's id)
            self.network.detach(self.vm_id)

    def _remove_disk(self) -> None:
        for part in ("upper", "work", "root"):
            path = self.workdir / part
            if path.exists():
                shutil.rmtree(path)

    def _init_pid(self) -> Optional[int]:
        """The host PID of the VM's PID 1: the only child of ``unshare``."""
        if self._process is None or self._process.poll() is not None:
            return None
        pid = self._process.pid
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
        return None

    def _booted_init(self, timeout: float) -> Optional[int]:
        """PID 1 once it is the VM's init (chrooted), not the setup shell before it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._init_pid()
            if pid is None and not self.alive:
                return None
            with contextlib.suppress(OSError):
                if pid is not None and Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:2] == [INIT.encode()]:
                    return pid
            time.sleep(0.01)
        return None

    def __enter__(self) -> "VM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _inside(root: Path, path: str) -> str:
    """``path`` of the VM's filesystem as a relative path in its layers, following the
    image's symlinks in the parent directories (``/sbin`` -> ``usr/sbin`` on a merged-/usr
    Debian), so the upper layer never shadows an image symlink with a directory."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"{path!r} names no file")
    resolved: list[str] = []
    pending = parts[:-1]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise ValueError(f"{path}: too many symlinks in the image")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = []
            pending = [p for p in link.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    return "/".join([*resolved, parts[-1]])
