"""The Python environment of a cluster VM: package_sync's pins, uv, a virtual environment.

What is installed is decided where the cluster is asked for (:mod:`coiled_lab.environment`:
pins, the user's own wheels); this runs on the VM, under the image's own ``python3`` (3.9 or newer), before
anything is installed: standard library only. A bare image has no pip, no ``venv``
module and no compiler, so the VM:

1. fetches uv (:data:`UV_VERSION`): its wheel for this machine's architecture from the
   package index's JSON simple API (PEP 691), checked against the sha256 the index gives,
   and takes only the ``uv`` binary out of it (:func:`fetch_uv`);
2. makes a virtual environment with the Python the cluster asked for (:func:`make_venv`):
   the image's own ``python3`` when its major.minor is that one, else another interpreter
   of the machine of that version, else a CPython build uv downloads (from GitHub, through
   the proxy if there is one: that path cannot be exercised without internet access);
3. installs the packages into it (:func:`install`): package_sync's pins all at once
   without dependency resolution (they are a complete set); if that fails, the pins that
   cannot be installed are found by bisection, each skipped one with the installer's lines
   that explain it. Without pins: dask and distributed at the versions of the environment
   that asked, plus a requirements file's content, resolved with those as constraints.
   GPU workers also get dask-cuda and its own dependencies, resolved with the pins as
   constraints and without ``rapids-dask-dependency``, so that dask and distributed are
   never replaced.

The package index is ``index_url`` of config.json, else ``UV_INDEX_URL``/``PIP_INDEX_URL``,
else PyPI; every other uv setting of the environment (``UV_FIND_LINKS``, ``UV_OFFLINE``,
``UV_NO_INDEX``, ``UV_CACHE_DIR``, ``SSL_CERT_FILE``, the proxy variables...) reaches uv
unchanged. uv trusts the image's CA store like every other tool there: ``UV_SYSTEM_CERTS=1``
(uv 0.13.9 deprecates the older spelling ``--native-tls``/``UV_NATIVE_TLS`` for it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

def canonical(name: str) -> str:
    """PEP 503 normalized name: ``Foo_Bar`` and ``foo-bar`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


# -- on the VM: uv -------------------------------------------------------------------------

UV_VERSION = "0.13.9"
DEFAULT_INDEX = "https://pypi.org/simple"
# What the cluster cannot run without: one of these not installed and dask is not started.
REQUIRED = ("dask", "distributed", "cloudpickle", "msgpack", "tornado", "toolz")


class BootError(Exception):
    """Why this VM cannot get the environment dask needs (said as the last log line)."""


def index_url(configured: Optional[str] = None) -> str:
    """The package index: config.json's ``index_url``, ``UV_INDEX_URL``, ``PIP_INDEX_URL``, PyPI."""
    return (configured or os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def uv_environment(home: Path, index: str) -> dict:
    """The environment of every uv command: this one, plus the index, uv's cache and the
    Pythons it downloads under ``home`` (unless ``UV_CACHE_DIR``/``UV_PYTHON_INSTALL_DIR``
    say where), the system's CA store (``SSL_CERT_FILE`` if set), no colours or progress bars."""
    env = {"UV_CACHE_DIR": f"{home}/uv-cache", "UV_PYTHON_INSTALL_DIR": f"{home}/python", **os.environ}
    return {**env, "UV_INDEX_URL": index, "UV_SYSTEM_CERTS": "1", "UV_NO_PROGRESS": "1", "NO_COLOR": "1"}


def _get(url: str, accept: str, timeout: float, attempts: int = 4):
    """urllib's answer to a GET (through the environment's proxy, if any), tried again on
    network errors and 5xx answers after growing pauses."""
    for attempt in range(attempts):
        try:
            # A new opener reads the proxy variables as they are now (urlopen's is made once).
            return urllib.request.build_opener().open(urllib.request.Request(url, headers={"Accept": accept}),
                                                      timeout=timeout)
        except OSError as exc:
            if (isinstance(exc, urllib.error.HTTPError) and exc.code < 500) or attempt + 1 == attempts:
                raise
        time.sleep(2 ** attempt)


def fetch_uv(dest: Path, index: str, version: str = UV_VERSION, machine: Optional[str] = None,
             timeout: float = 60.0) -> Path:
    """``dest/uv``: the uv binary of the index's ``version`` wheel for this machine
    (``manylinux2014_<arch>``), read from the index's JSON simple API (PEP 691) and its
    sha256 checked. Raise :class:`BootError` when there is none, it cannot be fetched, or
    its sha256 is not the one the index gives (or the index gives none)."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get((machine or platform.machine()).lower(),
                                                     (machine or platform.machine()).lower())
    page = f"{index}/uv/"
    try:
        with _get(page, "application/vnd.pypi.simple.v1+json", timeout) as response:
            files, page = json.loads(response.read())["files"], response.geturl()
        wheel = next((f for f in files if re.fullmatch(rf"uv-{re.escape(version)}-py3-none-\S*manylinux2014_{arch}\S*\.whl",
                                                        f["filename"])), None)
        if wheel is None:
            raise BootError(f"{page} has no uv {version} wheel for {arch} Linux")
        expected = wheel.get("hashes", {}).get("sha256", "").lower()
        dest.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tempfile.TemporaryFile() as download:
            with _get(urllib.parse.urljoin(page, wheel["url"]), "*/*", timeout) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    download.write(chunk)
            if digest.hexdigest() != expected:
                raise BootError(f"{wheel['filename']} has sha256 {digest.hexdigest()}; the index says "
                                f"{expected or 'nothing'}: refusing it")
            with zipfile.ZipFile(download) as archive, open(dest / "uv.partial", "wb") as target:
                shutil.copyfileobj(archive.open(f"uv-{version}.data/scripts/uv"), target)
        (dest / "uv.partial").chmod(0o755)
        return (dest / "uv.partial").replace(dest / "uv")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise BootError(f"uv {version} could not be fetched from {page}: {type(exc).__name__}: {exc}") from None


# -- on the VM: the virtual environment ------------------------------------------------------

def run(command: list, env: dict, emit: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run ``command``, each line of its output to ``emit`` as it comes: (status, lines)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            errors="replace")
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line.rstrip("\n"))
        emit(lines[-1])
    return proc.wait(), lines


def make_venv(uv: Path, version: str, path: Path, env: dict, emit: Callable[[str], None]) -> tuple[str, str, str]:
    """A virtual environment made anew at ``path`` with Python ``version`` (major.minor);
    returns its python, that Python's full version and where it came from (``<path>, the
    distribution's``, ``, uv's download`` or ``, found on this machine``).

    The image's own interpreter (the one running this) when its major.minor is ``version``;
    else uv looks for one on the machine (``--python-preference system``) and downloads a
    CPython build only when there is none (from GitHub: not possible in tests here). pip,
    setuptools and wheel are put in as ``python -m venv`` would (``--seed``) where the index has them.
    """
    python = sys.executable if version == "%d.%d" % sys.version_info[:2] else version
    command = [str(uv), "venv", "--clear", "--python", python, "--python-preference", "system", str(path)]
    status, lines = run(command + ["--seed"], env, emit)
    if status:
        status, lines = run(command, env, emit)
    if status:
        raise BootError(f"no virtual environment with Python {version}: {reason(explain(lines))}")
    executable = f"{path}/bin/python"
    answer = subprocess.run([executable, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                            text=True)
    if answer.returncode:
        raise BootError(f"the virtual environment's Python does not run: {answer.stderr.strip()[-300:]}")
    full, base = answer.stdout.strip(), os.path.realpath(executable)  # uv links it to the interpreter it used
    source = ("uv's download" if base.startswith(os.path.realpath(env["UV_PYTHON_INSTALL_DIR"]) + "/") else
              "the distribution's" if base.startswith(("/usr/bin/", "/bin/")) else "found on this machine")
    return executable, full, f"{base}, {source}"


# -- on the VM: packages -----------------------------------------------------------------------

@dataclass
class Skipped:
    requirement: str
    reason: str  # one line


@dataclass
class Outcome:
    installed: set = field(default_factory=set)  # names of the distributions uv installed
    skipped: list = field(default_factory=list)  # [Skipped]
    fatal: list = field(default_factory=list)  # why dask cannot start, one message each


def explain(lines: Iterable[str], keep: int = 4) -> list[str]:
    """The few lines of an installer's output that say why it failed: uv's errors and their
    causes (``error:``/``cause:``, or ``×``/``╰─▶`` on a terminal) and the last error line
    of a failed build's own output (a compiler missing, an exception)."""
    found, build = [], None
    for line in lines:
        line = line.strip()
        text = re.sub(r"^(error:|cause:|Caused by:|[×╰├─▶]+)\s*", "", line)
        if text != line and text and text not in found:
            found.append(text)
        elif re.match(r"\w+(Error|Exception)\b|.*\berror\b:|.*No such file or directory", line):
            build = line
    return found[:keep] + ([build] if build else [])


def reason(lines: list[str], limit: int = 300) -> str:
    """One line out of :func:`explain`'s: the specific ones, joined."""
    text = "; ".join([x for x in lines if not x.startswith(("No solution found", "The build backend returned"))]
                     or lines) or "the installer failed without saying why"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def requirement_name(line: str) -> str:
    """The canonical name a requirement line installs (``Foo_Bar[x]>=1`` -> ``foo-bar``)."""
    return canonical(re.match(r"\s*([\w.-]*)", line).group(1))  # type: ignore[union-attr]


class Installer:
    """``uv pip install`` into one Python; counts its runs (:attr:`calls`) and the
    distributions they installed (:attr:`installed`)."""

    def __init__(self, uv: Path, python: str, env: dict, emit: Callable[[str], None], workdir: Path):
        self.uv, self.python, self.env, self.emit, self.workdir = str(uv), python, env, emit, workdir
        self.calls = 0
        self.installed: set = set()

    def run(self, lines: list[str], args: Iterable[str] = ()) -> tuple[bool, list[str]]:
        """Install the requirement ``lines`` (passed as a requirements file) with ``args``."""
        self.calls += 1
        path = self.workdir / "coiled-lab-install.txt"
        path.write_text("".join(f"{line}\n" for line in lines))
        status, output = run([self.uv, "pip", "install", "--python", self.python, *args, "-r", str(path)],
                             self.env, self.emit)
        if not status:
            self.installed |= {canonical(x.split()[1].split("==")[0]) for x in output if x.startswith((" + ", " ~ "))}
        return not status, output

    def each(self, items: list[str], args: Iterable[str] = (), header: list[str] = []) -> tuple[list, list]:
        """Install ``items`` all at once; if that fails, find the ones that cannot be
        installed by bisection: a half that installs is done, a half that fails is split
        again, a single item that fails is skipped with the lines that explain why. A half
        whose sibling installed after their parent failed is split without being tried
        whole, so one bad item among n costs about log2(n) more runs. ``header`` lines (a
        requirements file's options) go with every run. Returns (installed, [Skipped])."""
        done: list[str] = []
        skipped: list[Skipped] = []

        def attempt(group: list[str], bad: bool = False) -> bool:
            if not bad or len(group) == 1:
                ok, output = self.run(header + group, args)
                if ok:
                    done.extend(group)
                    return True
                if len(group) == 1:
                    skipped.append(Skipped(group[0], reason(explain(output))))
                    return False
            half = len(group) // 2
            attempt(group[half:], bad=attempt(group[:half]))
            return False

        if items:
            attempt(list(items))
        return done, skipped


def install(installer: Installer, pins: list[str], say: Callable[..., None], requirements: Optional[str] = None,
            versions: Optional[dict] = None, gpu: bool = False, required: Iterable[str] = ()) -> Outcome:
    """Install the cluster's packages with ``installer``: ``pins`` (package_sync's complete
    set, ``--no-deps``); then what the pins lack of dask and distributed (at ``versions``,
    ``{"dask": "2026.8.0", ...}``) and the ``requirements`` file's lines, resolved with the
    installed pins (or those versions) as constraints; then, on GPU machines, dask-cuda and
    the dependencies it declares, resolved with the same constraints but without
    ``rapids-dask-dependency`` (its pins of dask and distributed must not replace the
    cluster's): a dask-cuda release whose dependencies fit the pins is chosen.

    What cannot be installed is skipped and said; a package of :data:`REQUIRED`,
    ``required`` or dask-cuda (GPU) that cannot is :attr:`Outcome.fatal`: dask must not start.
    """
    must = {canonical(n) for n in (*REQUIRED, *required)}
    out = Outcome()
    ok: list[str] = []
    if pins:
        say(f"package_sync: installing {len(pins)} pinned packages")
        ok, out.skipped = installer.each(pins, ["--no-deps"])
    core = [f"{n}=={(versions or {}).get(n)}" if (versions or {}).get(n) else n
            for n in ("dask", "distributed") if n not in map(requirement_name, pins)]
    constraints = installer.workdir / "coiled-lab-constraints.txt"
    constraints.write_text("".join(f"{x}\n" for x in ok + core if "==" in x))
    options, lines = [], []
    for line in re.sub(r"\\\n", " ", requirements or "").splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        if line:
            (options if line.startswith("-") and not line.startswith(("-e", "--editable")) else lines).append(line)
    if core or lines:
        say(f"installing {', '.join(core + ([f'the {len(lines)} software requirements'] if lines else []))}")
        out.skipped += installer.each(core + lines, ["-c", str(constraints)], options)[1]
    if gpu and "dask-cuda" not in installer.installed:
        say("GPU machine: installing dask-cuda and its dependencies")
        excluded = installer.workdir / "coiled-lab-excludes.txt"
        excluded.write_text("rapids-dask-dependency\n")  # what pins dask-cuda's own dask and distributed
        done, output = installer.run(["dask-cuda"], ["-c", str(constraints), "--excludes", str(excluded)])
        if not done:
            out.skipped.append(Skipped("dask-cuda", reason(explain(output))))
            out.fatal.append(f"required package dask-cuda could not be installed: {out.skipped[-1].reason}")
    for item in out.skipped:
        say(f"skipped {item.requirement}: {item.reason}", "WARNING")
        name = requirement_name(item.requirement)
        if name in must and name not in installer.installed:  # ("dask<2000" skipped, dask there: no matter)
            out.fatal.append(f"required package {item.requirement} could not be installed: {item.reason}")
    out.installed = installer.installed
    return out
