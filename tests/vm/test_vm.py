"""The bare-VM emulation itself: image, boot, power-off, network isolation, metadata, egress.

Every check here can fail: each asserts something the emulation has to make true (a
missing pip, a dropped packet, a metadata answer from the right handler), not merely that
a call returned.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .host import netns_inode, processes_in_netns, run
from .machine import VM
from .network import PREFIX, Network, Rule, _try_slot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="emulated VMs need root (namespaces, mounts, nftables)"),
    pytest.mark.timeout(180),
]

VPC_A, VPC_B = "10.211.0.0/16", "10.212.0.0/16"
IDLE = b"#!/bin/sh\necho ready\n"  # the machine stays up after its user-data ends


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def identity_handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = f"{name} {self.client_address[0]} {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def boot(vm_network: Network, bare_rootfs: Path, tmp_path: Path) -> Iterator[Callable[..., VM]]:
    """Boots VMs on the session network; every one is closed after the test."""
    machines: list[VM] = []

    def start(vm_id: str, private_ip: str, script: bytes = IDLE, vpc: str = "vpc-a", cidr: str = VPC_A,
              network: Network = vm_network, **kwargs) -> VM:
        vm = VM(network, vm_id, bare_rootfs, tmp_path / vm_id, script, kwargs.pop("env", {}), private_ip, vpc, cidr,
                **kwargs)
        machines.append(vm)
        return vm.start()

    yield start
    for vm in machines:
        vm.close()


def sh(vm: VM, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return vm.run(["sh", "-c", command], timeout=timeout)


def curl_status(vm: VM, url: str, *options: str) -> tuple[int, str]:
    """(curl's exit code, HTTP status or error text) for ``url`` from inside ``vm``."""
    proc = sh(vm, f"curl -sS -o /dev/null --connect-timeout 2 --max-time 20 -w '%{{http_code}}' {' '.join(options)} '{url}'")
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def connect(address: str, port: int, timeout: float = 1.5) -> str:
    """Connect from the root namespace: "ok", "timeout" or "refused"."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "ok"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"


def test_bare_image_boots_its_own_python_and_keeps_running(boot):
    script = b"""#!/bin/sh
echo "first line"
echo "uid=$(id -u) pid=$$ host=$(hostname)"
echo "python3=$(command -v python3) $(python3 --version)"
python3 -m pip --version; echo "pip-exit=$?"
python3 -m venv /tmp/venv; echo "venv-exit=$?"
python3 -c 'import dask'; echo "dask-exit=$?"
command -v gcc cc; echo "cc-exit=$?"
echo "PATH=$PATH"
echo done
"""
    started = time.monotonic()
    vm = boot("i-image", "10.211.0.10", script)
    wait_for(lambda: "first line" in vm.console(), 10, "the first console line")
    first_line = time.monotonic() - started
    wait_for(lambda: "done" in vm.console(), 30, "the user-data to finish")
    console = vm.console()
    assert re.search(r"^python3=/usr/bin/python3 Python 3\.11\.\d+$", console, re.M), console
    assert "uid=0 " in console and "host=ip-10-211-0-10" in console
    assert "pid=" in console and int(re.search(r"pid=(\d+)", console).group(1)) < 100  # own PID namespace
    assert "No module named pip" in console and "pip-exit=1" in console
    assert "ensurepip is not" in console and "venv-exit=1" in console
    assert "No module named 'dask'" in console and "dask-exit=1" in console
    assert "cc-exit=1" in console
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" in console
    wait_for(lambda: vm.script_exit is not None, 5, "the user-data's exit status")
    time.sleep(1.0)
    assert vm.alive, "a VM does not power off when its user-data ends"
    assert vm.script_exit == 0
    assert first_line < 10


def test_environment_is_the_given_one_plus_proxy_and_tls(boot, vm_network: Network):
    vm = boot("i-env", "10.211.0.11", env={"COILED_LAB_TEST": "given"})
    env = dict(line.split("=", 1) for line in sh(vm, "cat /proc/1/environ | tr '\\0' '\\n'").stdout.decode().split())
    assert env["COILED_LAB_TEST"] == "given"
    assert env["https_proxy"] == env["HTTP_PROXY"] == vm_network.proxy_url
    assert env["no_proxy"] == f"169.254.169.254,metadata.google.internal,localhost,127.0.0.1,{VPC_A}"
    assert env["HOME"] == "/root" and env["LANG"] == "C.UTF-8"
    assert not any(k.startswith(("VIRTUAL_ENV", "PYTEST", "DASK")) for k in env)
    bundle = sh(vm, "cat /etc/ssl/certs/ca-certificates.crt").stdout
    assert vm_network.ca_pem.strip() in bundle  # the emulator CA joined the host bundle
    assert b"nameserver" not in sh(vm, "cat /etc/resolv.conf").stdout


def test_egress_only_through_the_proxy_to_the_registries(boot, vm_network: Network):
    vm = boot("i-egress", "10.211.0.12")
    code, status = curl_status(vm, "https://pypi.org/simple/uv/")
    assert (code, status) == (0, "200"), status
    code, status = curl_status(vm, "https://example.com/")
    assert code != 0 and "403" in status, status  # not on the allow-list
    code, status = curl_status(vm, "http://example.com/")
    assert status.startswith("403"), status
    # Around the proxy there is no way out: no resolver, and packets are dropped
    # (a timeout, not a refusal: nothing on this machine answered either).
    code, status = curl_status(vm, "https://pypi.org/simple/uv/", "--noproxy", "'*'")
    assert code == 6, status  # could not resolve host
    code, status = curl_status(vm, "https://203.0.113.80/", "--noproxy", "'*'", "-k")
    assert code == 28, status
    code, status = curl_status(vm, f"http://{vm_network.egress_address}:22/", "--noproxy", "'*'")
    assert code == 28, status
    assert vm_network.downloaded().get("pypi.org", 0) > 0


class _Echo(BaseHTTPRequestHandler):
    """A loopback stand-in (like moto): echoes what reached it."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        out = json.dumps({"method": self.command, "path": self.path, "host": self.headers["Host"],
                          "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def test_allowed_loopback_stand_in_is_reached_by_its_alias(boot, vm_network: Network):
    stand_in = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=stand_in.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        port = stand_in.server_address[1]
        assert vm_network.allow("127.0.0.1", port, alias="cloud.emulator") == f"cloud.emulator:{port}"
        vm = boot("i-stand-in", "10.211.0.17")
        got = sh(vm, f"curl -sS --max-time 10 -d Action=DescribeInstances http://cloud.emulator:{port}/q?x=1").stdout
        assert json.loads(got) == {"method": "POST", "path": "/q?x=1", "host": f"cloud.emulator:{port}",
                                   "body": "Action=DescribeInstances"}
        # 127.0.0.1 is the VM's own loopback (no_proxy), and other loopback ports stay closed.
        assert curl_status(vm, f"http://127.0.0.1:{port}/")[0] == 7
        assert curl_status(vm, f"http://cloud.emulator:{port + 1}/")[1].startswith("403")
    finally:
        stand_in.shutdown()
        stand_in.server_close()


def test_nice_applies_to_every_process_of_the_vm(boot):
    vm = boot("i-nice", "10.211.0.18", nice=7)
    assert sh(vm, "ps -o ni= -p 1").stdout.split() == [b"7"]


def test_vpc_ranges_that_would_capture_host_traffic_are_refused(vm_network: Network):
    with pytest.raises(ValueError, match="overlaps this machine"):
        vm_network.attach("i-bad-cidr", "10.0.0.5", "vpc-x", "10.0.0.0/8")  # holds this machine's resolver
    with pytest.raises(ValueError, match="private range"):
        vm_network.attach("i-bad-cidr", "100.81.0.5", "vpc-x", "100.81.0.0/16")
    with pytest.raises(KeyError):
        vm_network.netns("i-bad-cidr")


def test_metadata_answers_each_vm_from_its_own_handler(boot):
    a = boot("i-meta-a", "10.211.0.13", metadata_handler=identity_handler("alpha"))
    b = boot("i-meta-b", "10.211.0.14", metadata_handler=identity_handler("beta"))
    got_a = sh(a, "curl -sS --max-time 5 http://169.254.169.254/latest/meta-data/instance-id").stdout.decode()
    got_b = sh(b, "curl -sS --max-time 5 http://metadata.google.internal/computeMetadata/v1/x").stdout.decode()
    assert got_a == "alpha 10.211.0.13 /latest/meta-data/instance-id"
    assert got_b == "beta 10.211.0.14 /computeMetadata/v1/x"


def test_poweroff_inside_ends_the_machine(boot):
    vm = boot("i-off", "10.211.0.15", b"#!/bin/sh\necho up\nsleep 300 &\npoweroff\necho after-poweroff\n")
    wait_for(lambda: not vm.alive, 10, "the VM to power off")
    assert vm.exit_code == 0
    assert "up" in vm.console() and "after-poweroff" not in vm.console()
    assert not processes_in_netns({netns_inode(vm.netns)})


def test_kill_is_a_hard_stop(boot):
    vm = boot("i-kill", "10.211.0.16", b"#!/bin/sh\nsleep 300 &\nexec sleep 300\n")
    inode = netns_inode(vm.netns)
    wait_for(lambda: len(processes_in_netns({inode})) >= 4, 10, "the VM's processes")
    vm.kill()
    assert not vm.alive and vm.exit_code == -9
    wait_for(lambda: not processes_in_netns({inode}), 5, "every process of the VM to end")


LISTENERS = """#!/bin/sh
python3 -u -m http.server --bind {ip} 8786 >/dev/null 2>&1 &
python3 -u -m http.server --bind {ip} 8790 >/dev/null 2>&1 &
echo listening
"""


def _listening(vm: VM) -> bool:
    out = sh(vm, "cat /proc/net/tcp").stdout.decode()
    return ":2252 " in out.upper() and ":2256 " in out.upper()  # 8786, 8790 in hex


def test_security_groups_vpcs_and_public_addresses(boot, vm_network: Network):
    public = vm_network.public_address()
    a = boot("i-sg-a", "10.211.1.1", LISTENERS.format(ip="10.211.1.1").encode(), public_ip=public)
    b = boot("i-sg-b", "10.211.1.2")
    other = boot("i-sg-other", "10.212.1.3", vpc="vpc-b", cidr=VPC_B)
    vm_network.firewall(a.vm_id, [Rule("tcp", (8786, 8787), (VPC_A, f"{vm_network.egress_address}/32"))])
    wait_for(lambda: _listening(a), 15, "the listeners in VM a")

    # From the root namespace ("the Jupyter server"): the private address is not routed
    # to anyone; the public one is, on allowed ports only.
    assert connect("10.211.1.1", 8786) == "timeout"
    assert connect(public, 8786) == "ok"
    assert connect(public, 8790) == "timeout"
    # Same VPC: allowed ports only; the VM sees b's private address as the source.
    assert curl_status(b, "http://10.211.1.1:8786/", "--noproxy", "'*'") == (0, "200")
    assert curl_status(b, "http://10.211.1.1:8790/", "--noproxy", "'*'")[0] == 28
    # Another VPC: neither the private address nor (without a public address) the public one.
    assert curl_status(other, "http://10.211.1.1:8786/", "--noproxy", "'*'")[0] == 28
    assert curl_status(other, f"http://{public}:8786/", "--noproxy", "'*'")[0] == 28

    # Rules are replaced as a whole: now 8790 from anywhere, 8786 no more.
    vm_network.firewall(a.vm_id, [Rule("tcp", 8790, ("0.0.0.0/0",))])
    assert connect(public, 8790) == "ok"
    assert connect(public, 8786) == "timeout"
    assert curl_status(b, "http://10.211.1.1:8786/", "--noproxy", "'*'")[0] == 28


def test_package_files_come_through_the_caching_proxy(boot, tmp_path: Path):
    """A fresh cache: the first download of a wheel goes upstream, the second is served
    from disk, and the VM verifies TLS against the emulator CA and the wheel's hash."""
    with Network(files_cache=tmp_path / "files") as network:
        vm = boot("i-cache", "10.211.2.1", network=network)
        index = sh(vm, "curl -sS --max-time 20 https://pypi.org/simple/six/").stdout.decode()
        match = re.search(r'(https://files\.pythonhosted\.org/[^"#]+/six-1\.16\.0-py2\.py3-none-any\.whl)'
                          r"#sha256=([0-9a-f]{64})", index)
        assert match, index[:500]
        url, expected = match.groups()
        network.reset_counters()
        fetch = f"curl -sS -v --max-time 30 -o /tmp/six.whl '{url}' 2>&1 && sha256sum /tmp/six.whl"
        first = sh(vm, fetch, timeout=40).stdout.decode()
        assert "issuer: O=coiled-lab tests; CN=coiled-lab VM emulator CA" in first, first
        assert "ALPN: server accepted http/1.1" in first
        assert expected in first, first
        size = int(sh(vm, "stat -c %s /tmp/six.whl").stdout)
        assert network.downloaded() == {"files.pythonhosted.org": size}
        assert network.from_cache() == {}
        second = sh(vm, fetch, timeout=40).stdout.decode()
        assert expected in second
        assert network.downloaded() == {"files.pythonhosted.org": size}  # nothing more from upstream
        assert network.from_cache() == {"files.pythonhosted.org": size}
        cached = list((tmp_path / "files").glob("*/*.json"))
        assert [json.loads(p.read_text())["url"] for p in cached] == [url]
        ranged = sh(vm, f"curl -sS --max-time 20 -r 0-3 '{url}' | od -An -c").stdout.decode().split()
        assert ranged == ["P", "K", "003", "004"]  # a zip, from a range request


def test_close_leaves_nothing_behind(bare_rootfs: Path, tmp_path: Path):
    network = Network()
    try:
        prefix = network.prefix
        vms = [VM(network, f"i-close-{n}", bare_rootfs, tmp_path / f"vm{n}", b"#!/bin/sh\nsleep 300 &\nsleep 300\n",
                  {}, f"10.211.3.{n}", "vpc-a", VPC_A, public_ip=network.public_address()).start() for n in (1, 2)]
        names = [vm.netns for vm in vms] + [network.router]
        inodes = {netns_inode(n) for n in names}
        wait_for(lambda: len(processes_in_netns(inodes)) >= 6, 10, "the VMs' processes")
        vms[0].close()  # one closed by its owner, the other left running for the network to end
        assert not (tmp_path / "vm1" / "upper").exists()
        assert not os.path.exists(f"/run/netns/{vms[0].netns}")
    finally:
        network.close()
    assert not vms[1].alive
    vms[1].close()
    assert not processes_in_netns(inodes)
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}-")]
    assert f"{prefix}:" not in run(["ip", "-o", "link"]).stdout.decode()
    routes = run(["ip", "route"]).stdout.decode()
    assert f"dev {prefix} " not in routes and str(network.public_pool) not in routes
    mounts = Path("/proc/mounts").read_text()
    assert str(tmp_path) not in mounts and f"/run/netns/{prefix}-" not in mounts


def test_failed_boot_undoes_everything(vm_network: Network, bare_rootfs: Path, tmp_path: Path, monkeypatch):
    vm = VM(vm_network, "i-broken-boot", bare_rootfs, tmp_path / "vm", IDLE, {}, "10.211.4.1", "vpc-a", VPC_A)

    def fail() -> None:
        raise RuntimeError("boot failed")

    monkeypatch.setattr(vm, "_boot", fail)
    with pytest.raises(RuntimeError, match="boot failed"):
        vm.start()
    assert vm.netns and not os.path.exists(f"/run/netns/{vm.netns}")
    assert not (tmp_path / "vm" / "upper").exists()
    with pytest.raises(KeyError):
        vm_network.netns("i-broken-boot")


def test_sweep_removes_a_crashed_sessions_leftovers():
    handle = next((h for slot in range(15, 0, -1) if (h := _try_slot(slot)) is not None), None)
    if handle is None:
        pytest.skip("no free slot to play a crashed session in")
    slot = int(Path(handle.name).stem.rsplit("-", 1)[1])
    name = f"{PREFIX}{slot}-vm1-leftover"
    run(["ip", "netns", "add", name])
    sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "300"])
    try:
        inode = netns_inode(name)
        wait_for(lambda: processes_in_netns({inode}), 5, "the leftover process")
        handle.close()  # the "crashed" session's lock goes with it
        removed = Network.sweep()
        assert name in removed
        assert sleeper.wait(5) == -9
        assert not os.path.exists(f"/run/netns/{name}")
    finally:
        sleeper.kill()
        sleeper.wait(5)
        run(["ip", "netns", "del", name], check=False)
