"""On a cluster VM: the environment image in the user's bucket, fetched or built.

An environment (:mod:`coiled_lab.environment`) is built once per hash: the first
scheduler to boot with it installs it (:mod:`.packages`) and uploads ``envs/<hash>.squashfs``
(the virtual environment, the user's code and uv's Python as one compressed read-only
image); every later VM, and the workers of that first cluster, which wait for it, mount
it instead of installing. What an install needs that the index does not have (the pins,
the user's wheels and code) is ``inputs/<hash>.tar``, put there by the server before launch.

Both are read and written with the machine's own identity: the instance role's
credentials (S3, SigV4) or the service account's token (GCS). A missing or damaged
image is never fatal: the VM installs instead, and a scheduler uploads it again.
Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

GCS_ENDPOINT = "https://storage.googleapis.com"
PARTS = ("venv", "code", "python")  # what an environment is, under a VM's workdir
IMAGE_FILE, MOUNT_DIR = "env.squashfs", "env"
META = "coiled-lab-env.json"  # in venv/: the hash and where it was built


class Bucket:
    """GET and PUT of whole objects; :meth:`get` returns None for a missing one."""

    def __init__(self, request: Callable[[str, str, Any, dict], urllib.request.Request], missing: tuple[int, ...],
                 timeout: float = 120.0):
        self._request, self.missing, self.timeout = request, missing, timeout
        self._opener = urllib.request.build_opener()  # the proxy variables as they are now

    def get(self, key: str):
        try:
            return self._opener.open(self._request("GET", key, None, {}), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in self.missing:
                return None
            raise

    def put(self, key: str, path: Path) -> None:
        with open(path, "rb") as body:
            headers = {"Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"}
            with self._opener.open(self._request("PUT", key, body, headers), timeout=self.timeout * 10):
                pass


def s3(bucket: str, region: str, credentials: Callable[[], Any], endpoint: Optional[str] = None) -> Bucket:
    """An S3 bucket, path-style, requests signed with ``credentials`` (SigV4, unsigned payload)."""
    from .logship import sigv4_headers

    base = (endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or f"https://s3.{region}.amazonaws.com").rstrip("/")

    def request(method: str, key: str, body: Any, headers: dict) -> urllib.request.Request:
        url = f"{base}/{bucket}/{urllib.parse.quote(key)}"
        signed = sigv4_headers(url, {**headers, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}, b"", credentials(),
                               region, "s3", method=method, payload="UNSIGNED-PAYLOAD")
        return urllib.request.Request(url, body, signed, method=method)

    return Bucket(request, (403, 404))  # S3 answers 403 for a missing key to those who may not list


def gcs(bucket: str, token: Callable[[], str], endpoint: Optional[str] = None) -> Bucket:
    """A GCS bucket through the JSON API, with the service account's ``token``."""
    host = endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or GCS_ENDPOINT
    base = host if "://" in host else f"http://{host}"

    def request(method: str, key: str, body: Any, headers: dict) -> urllib.request.Request:
        name = urllib.parse.quote(key, safe="")
        url = (f"{base}/storage/v1/b/{bucket}/o/{name}?alt=media" if method == "GET" else
               f"{base}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}")
        return urllib.request.Request(url, body, {**headers, "Authorization": f"Bearer {token()}"},
                                      method="GET" if method == "GET" else "POST")

    return Bucket(request, (404,))  # (403 on GCS is a permission missing: said, not taken for "absent")


def open_bucket(store: dict[str, Any], credentials: Callable[[], Any]) -> Bucket:
    """The bucket config.json's ``env.store`` names; ``credentials`` is the instance
    role's (S3) or the service account's token function (GCS)."""
    if store["kind"] == "gcs":
        return gcs(store["bucket"], credentials)
    return s3(store["bucket"], store["region"], credentials)


def fetch_inputs(bucket: Bucket, key: str, dest: Path) -> dict[str, Any]:
    """Unpack ``inputs/<hash>.tar`` into ``dest``: ``pins.txt``, ``wheels/``, ``code/``."""
    response = bucket.get(key)
    if response is None:
        raise FileNotFoundError(f"the environment's inputs {key} are not in the bucket")
    dest.mkdir(parents=True, exist_ok=True)
    with response, tarfile.open(fileobj=response, mode="r|") as tar:
        tar.extractall(dest, members=_checked(tar))
    code = dest / "files.tar.gz"
    if code.exists():
        with tarfile.open(code) as tar:
            tar.extractall(dest / "code", members=_checked(tar))
    return json.loads((dest / "meta.json").read_text()) if (dest / "meta.json").exists() else {}


def mount(bucket: Bucket, key: str, workdir: Path) -> bool:
    """The environment image, downloaded next to ``workdir`` and mounted read-only at
    ``workdir/env``; ``venv``, ``code`` and ``python`` under ``workdir`` become links into
    it. False when there is no image; a damaged one raises (OSError).

    Why an image and not an archive to unpack: writing the 30k files of a data-science
    environment is most of a VM's boot (seconds per GB on a cloud disk), while a squashfs
    image is one sequential write, mounts in a moment, and the kernel decompresses only the
    files that dask and the user's code import. The environment's links and ``pyvenv.cfg``
    name the directory it was built in (the building scheduler's ``workdir``): that path
    is made here a link to the mount, so nothing in the image needs rewriting."""
    response = bucket.get(key)
    if response is None:
        return False
    image, mounted = workdir / IMAGE_FILE, workdir / MOUNT_DIR
    with response, open(image, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    mounted.mkdir(exist_ok=True)
    _run(["mount", "-t", "squashfs", "-o", "loop,ro,nodev,nosuid", str(image), str(mounted)], f"mounting {key}")
    built_in = Path(json.loads((mounted / "venv" / META).read_text())["built_in"])
    if built_in != workdir:
        if os.path.lexists(built_in):
            raise OSError(f"{built_in}, where environment {key} was built, already exists on this machine")
        built_in.parent.mkdir(parents=True, exist_ok=True)
        built_in.symlink_to(mounted)
    for part in PARTS:
        if (mounted / part).exists():
            (workdir / part).symlink_to(mounted / part)
    return True


def _checked(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The inputs archive's members, each checked before it is written (the images'
    Pythons, 3.9 and 3.11.2, predate tarfile's extraction filters): regular files,
    directories and links only, every name and link inside the directory, owners and
    special bits dropped."""
    for member in tar:
        name = member.name
        if name.startswith("/") or ".." in Path(name).parts or not (member.isfile() or member.isdir() or member.issym()):
            raise tarfile.TarError(f"{name}: not allowed in an environment archive")
        if member.issym():
            target = member.linkname
            inside = os.path.normpath(os.path.join(os.path.dirname(name), target))
            if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
                raise tarfile.TarError(f"{name} links to {target}: not allowed in an environment archive")
        member.mode &= 0o755
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        yield member


def pack(workdir: Path, env_hash: str) -> Path:
    """``envs/<hash>.squashfs``: ``venv/``, ``code/`` and uv's ``python/`` (if it made one)
    under ``workdir`` as one compressed read-only image (zstd, fast to decompress), written
    to a temporary file. It runs while dask starts, so the bytecode dask's imports write
    goes in too (later VMs import at once); mksquashfs comes from the OS's packages the
    first time (squashfs-tools: Debian and Amazon Linux have it)."""
    (workdir / "venv" / META).write_text(json.dumps({"hash": env_hash, "built_in": str(workdir)}))
    parts = [str(workdir / p) for p in PARTS if (workdir / p).exists()]
    fd, name = tempfile.mkstemp(prefix="coiled-lab-env-", suffix=".squashfs", dir=workdir)
    os.close(fd)
    _run([_mksquashfs(), *parts, name, "-noappend", "-keep-as-directory", "-comp", "zstd", "-Xcompression-level",
          "3", "-all-root", "-no-xattrs", "-quiet", "-no-progress"], "packing the environment")
    return Path(name)


def _mksquashfs() -> str:
    """The image's mksquashfs, installed from the OS's packages when missing."""
    found = shutil.which("mksquashfs")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if shutil.which("apt-get"):
        subprocess.run("apt-get update -q && apt-get install -y -q squashfs-tools", shell=True, env=env,
                       capture_output=True, timeout=600)
    elif shutil.which("dnf"):
        subprocess.run(["dnf", "install", "-y", "-q", "squashfs-tools"], capture_output=True, timeout=600)
    found = shutil.which("mksquashfs")
    if not found:
        raise OSError("mksquashfs is not installed and squashfs-tools could not be installed")
    return found


def _run(command: list[str], doing: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if done.returncode:
        raise OSError(f"{doing} failed ({command[0]} status {done.returncode}): "
                      f"{(done.stderr or done.stdout).strip()[-300:]}")


def wait_for(bucket: Bucket, key: str, workdir: Path, seconds: float, say: Callable[..., None]) -> bool:
    """Poll for the image another VM is building; mount it when it comes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if mount(bucket, key, workdir):
                return True
        except (OSError, ValueError, KeyError) as exc:
            say(f"environment image {key} could not be used ({type(exc).__name__}: {exc}); installing instead",
                "WARNING")
            return False
        time.sleep(3)
    return False


def discard(workdir: Path) -> None:
    """What an image that could not be used, or a damaged install, left behind."""
    for part in PARTS:
        if (workdir / part).is_symlink():
            (workdir / part).unlink()
        else:
            shutil.rmtree(workdir / part, ignore_errors=True)
    if (workdir / MOUNT_DIR).is_mount():
        subprocess.run(["umount", "-l", str(workdir / MOUNT_DIR)], capture_output=True)
    (workdir / IMAGE_FILE).unlink(missing_ok=True)
