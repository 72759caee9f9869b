"""The software environment a cluster is to run, taken where the user's code runs.

:func:`snapshot` runs in the kernel (``Cluster(...)``, ``%coiled``, the sidebar through
its kernel) or in the CLI's interpreter; never silently in the Jupyter server (when no
environment is sent, the server takes its own and says so). It records:

- the Python (major.minor) and platform (``linux-x86_64``);
- every installed distribution with its version and origin: ``index`` (pinned by name),
  ``conda`` (a conda package with Python metadata: pinned under its index name, the name
  of its ``.dist-info``), ``editable`` (built into a wheel from its source directory),
  ``local`` or ``vcs`` (re-packed into a wheel from its installed files, as listed in its
  ``RECORD``: the source may be gone and the VMs have no git);
- conda packages without Python metadata (``openssl``, ``libgcc``...): not on the index,
  listed in :attr:`Environment.conda_only` and told before launch;
- the code of the working directory (``coiled-lab.sync.include``, default every ``.py``
  file, minus ``.gitignore``'d paths, ``coiled-lab.sync.exclude`` and files that hold
  secrets by name (:data:`SECRET_PATTERNS`), at most ``coiled-lab.sync.max-bytes``),
  shipped as one archive and put on the workers' ``sys.path``;
- the environment variables ``coiled-lab.sync.environ`` names (none by default).

An environment is identified by :attr:`Environment.hash`, a sha256 of all of that: the
cloud backends build it once per hash into an archive in the user's bucket
(:mod:`coiled_lab.backends.envstore`). :meth:`Environment.to_json` is what a create
request carries (wheels and files base64-encoded); :meth:`Environment.from_json` checks it
on the server, every field named in the error.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import fnmatch
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

from . import config
from .bootstrap.packages import canonical
from .errors import quoted
from .spec import ENV_NAME, MAX_ENVIRON, ClusterSpecError, check_environ_size

# Tools of the environment itself (the VMs' environment gets its own), and coiled-lab:
# the VMs run its bootstrap, shipped with their start-up data, not the library.
NEVER_SYNCED = {"pip", "setuptools", "wheel", "distribute", "coiled-lab"}
ALWAYS_SYNCED = frozenset({"dask", "distributed"})  # whatever package_sync_only says
ORIGINS = ("index", "conda", "editable", "local", "vcs")
# Never shipped, whatever the include patterns say: files that hold secrets by name.
SECRET_PATTERNS = (".env", ".env.*", "*.env", ".aws", ".ssh", ".gnupg", ".netrc", ".pypirc", ".git-credentials",
                   "*.pem", "*.key", "*.p12", "*.pfx", "id_*", "credentials*", "*credentials.json")
# Directories never walked: tools' and environments' own.
SKIPPED_DIRS = (".git", ".hg", ".svn", "__pycache__", ".ipynb_checkpoints", "node_modules", ".venv", "venv",
                ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache")
MAX_WHEEL_BYTES = 100 * 1024 * 1024
_WHEEL = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-\d[A-Za-z0-9_]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl$")


def _error(field_name: str, why: str) -> ClusterSpecError:
    return ClusterSpecError(f"{field_name}: {why}", field_name)


@dataclass
class Package:
    name: str
    version: str
    origin: str  # one of ORIGINS
    source: Optional[str] = None  # a path, URL or conda channel; None for the index

    def pin(self) -> Optional[str]:
        """The requirement the VMs install from the index, or None (a shipped wheel)."""
        return f"{self.name}=={self.version}" if self.origin in ("index", "conda") else None


@dataclass
class Environment:
    where: str  # "kernel (/opt/env/bin/python)", "the coiled-lab CLI (...)", "the Jupyter server (...)"
    python: str  # major.minor
    platform: str  # "linux-x86_64"
    packages: list[Package] = field(default_factory=list)
    wheels: dict[str, bytes] = field(default_factory=dict)  # filename: content
    files: Optional[bytes] = None  # a tar.gz of the working directory's code
    file_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, why)
    conda_only: list[str] = field(default_factory=list)  # "openssl 3.3.1": no Python metadata
    environ: dict[str, str] = field(default_factory=dict)

    # -- what the VMs do with it ------------------------------------------------------------
    def pins(self) -> list[str]:
        """``name==version`` of what the VMs install from the index."""
        return sorted((p for p in (x.pin() for x in self.packages) if p), key=str.lower)

    @property
    def local(self) -> list[Package]:
        """What the index does not have: shipped as wheels (or skipped, and said so)."""
        return [p for p in self.packages if p.pin() is None]

    @property
    def hash(self) -> str:
        """What identifies the built environment: Python, platform, pins, wheels, files.
        (``where`` and ``environ`` are not part of it: they change nothing installed.)"""
        h = hashlib.sha256()
        h.update(json.dumps([self.python, self.platform, self.pins()]).encode())
        for name in sorted(self.wheels):
            h.update(name.encode() + b"\0" + _wheel_digest(self.wheels[name]))
        h.update(hashlib.sha256(self.files or b"").digest())
        return h.hexdigest()[:32]

    def summary(self) -> dict[str, Any]:
        """What ``coiled-lab env --json`` prints: everything but the contents."""
        return {
            "hash": self.hash, "where": self.where, "python": self.python, "platform": self.platform,
            "packages": len(self.packages), "pinned": len(self.pins()),
            "local": [{"name": p.name, "version": p.version, "origin": p.origin, "source": p.source}
                      for p in self.local],
            "wheels": {n: len(d) for n, d in sorted(self.wheels.items())},
            "files": len(self.file_names), "files_bytes": len(self.files or b""),
            "skipped": [{"item": i, "reason": r} for i, r in self.skipped],
            "conda_only": self.conda_only, "environ": sorted(self.environ),
        }

    def line(self, state: Optional[str] = None) -> str:
        """``software: synced from <where> (N packages, M local, <state>)``: the form's and
        the cluster widget's line."""
        count = len(self.packages)
        return (f"software: synced from {self.where} ({count} package{'' if count == 1 else 's'}, {len(self.local)} local"
                f"{', ' + state if state else ''})")

    def filtered(self, ignore: list[str], only: Optional[list[str]]) -> "Environment":
        """This environment without the packages ``ignore`` names, or with only those ``only``
        names (``package_sync_ignore`` / ``package_sync_only``): their pins, wheels and what
        was said about them. dask and distributed always stay: no cluster runs without them."""
        if not ignore and only is None:
            return self
        dropped = {canonical(n) for n in ignore}
        kept = None if only is None else {canonical(n) for n in only} | ALWAYS_SYNCED

        def wanted(name: str) -> bool:
            key = canonical(name)
            return key not in dropped and (kept is None or key in kept)

        return dataclasses.replace(
            self, packages=[p for p in self.packages if wanted(p.name)],
            wheels={f: d for f, d in self.wheels.items() if wanted(f.split("-", 1)[0])},
            skipped=[(item, why) for item, why in self.skipped if wanted(item.split(" ", 1)[0])],
            conda_only=[c for c in self.conda_only if wanted(c.split(" ", 1)[0])])

    def unsynced(self) -> list[str]:
        """What the VMs will not have, one line each (the VMs' log repeats them)."""
        return [f"{item}: {why}" for item, why in self.skipped] + [
            f"{x}: a conda package with no Python distribution (not on the package index)" for x in self.conda_only]

    # -- the wire ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where, "python": self.python, "platform": self.platform,
            "packages": [[p.name, p.version, p.origin, p.source] for p in self.packages],
            "wheels": {n: base64.b64encode(d).decode() for n, d in self.wheels.items()},
            "files": base64.b64encode(self.files).decode() if self.files else None,
            "file_names": self.file_names, "skipped": [list(s) for s in self.skipped],
            "conda_only": self.conda_only, "environ": self.environ,
        }

    @classmethod
    def from_json(cls, data: Any, max_bytes: Optional[int] = None) -> "Environment":
        """An environment as a create request sent it, checked: raise
        :class:`~coiled_lab.spec.ClusterSpecError` naming ``environment.<field>``."""
        if not isinstance(data, dict):
            raise _error("environment", f"{type(data).__name__} is not allowed: an object as coiled_lab.environment "
                                        "makes it")
        unknown = set(data) - {"where", "python", "platform", "packages", "wheels", "files", "file_names", "skipped",
                               "conda_only", "environ"}
        if unknown:
            raise _error("environment", f"unknown fields {', '.join(sorted(unknown))}")

        def text(key: str, pattern: str) -> str:
            value = data.get(key)
            if not isinstance(value, str) or not re.fullmatch(pattern, value):
                raise _error(f"environment.{key}", f"{quoted(value)} is not allowed")
            return value

        def strings(key: str, width: int = 0) -> list:
            value = data.get(key) or []
            ok = isinstance(value, list) and all(
                isinstance(x, str) if not width else
                isinstance(x, list) and len(x) == width and all(y is None or isinstance(y, str) for y in x)
                for x in value)
            if not ok:
                raise _error(f"environment.{key}", "is not allowed: a list of " + ("strings" if not width else
                                                                                   f"{width}-item lists of strings"))
            return value

        packages = []
        for name, version, origin, source in strings("packages", 4):
            if not name or not version or origin not in ORIGINS:
                raise _error("environment.packages", f"{quoted(name)} {quoted(version)} from {quoted(origin)} is "
                                                     f"not allowed: origin is one of {', '.join(ORIGINS)}")
            packages.append(Package(name, version, origin, source))
        limit = max_bytes if max_bytes is not None else int(config.get("sync.max-bytes"))
        wheels = {}
        for name, encoded in (data.get("wheels") or {}).items():
            if not _WHEEL.fullmatch(str(name)):
                raise _error("environment.wheels", f"{quoted(name)} is not allowed: a wheel's file name")
            wheels[name] = _decode(f"environment.wheels.{name}", encoded, MAX_WHEEL_BYTES)
        files = _decode("environment.files", data["files"], limit) if data.get("files") else None
        environ = data.get("environ") or {}
        if not isinstance(environ, dict) or not all(isinstance(v, str) for v in environ.values()) or \
                len(environ) > MAX_ENVIRON:
            raise _error("environment.environ", f"is not allowed: an object of at most {MAX_ENVIRON} strings")
        try:
            check_environ_size(environ)
        except ValueError as exc:
            raise _error("environment.environ", f"is not allowed: {exc}") from None
        for key in environ:
            check_variable_name(key, "environment.environ")
        return cls(
            where=str(data.get("where") or "an unnamed environment")[:200],
            python=text("python", r"3\.\d{1,2}"), platform=text("platform", r"[a-z0-9]+-[a-z0-9_]+"),
            packages=packages, wheels=wheels, files=files, file_names=strings("file_names"),
            skipped=[tuple(x) for x in strings("skipped", 2)], conda_only=strings("conda_only"), environ=environ,
        )


def _wheel_digest(data: bytes) -> bytes:
    """A wheel's contents, not its bytes: building the same source again changes only the
    zip's time stamps."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as wheel:
            for info in sorted(wheel.infolist(), key=lambda i: i.filename):
                if not info.filename.endswith(".dist-info/RECORD"):  # (RECORD lists the same digests)
                    h.update(info.filename.encode() + b"\0" + hashlib.sha256(wheel.read(info)).digest())
    except (zipfile.BadZipFile, OSError):
        h.update(hashlib.sha256(data).digest())
    return h.digest()


def _decode(field_name: str, value: Any, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > (limit + 2) * 4 // 3 + 4:
        raise _error(field_name, f"is not allowed: base64 text of at most {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _error(field_name, "is not allowed: not base64") from None


def check_variable_name(name: str, field_name: str = "environ") -> None:
    if not ENV_NAME.fullmatch(name):
        raise _error(field_name, f"{quoted(name)} is not allowed: an environment variable name is letters, digits and "
                                 "underscores, not starting with a digit")


# == taking it ==================================================================================

def platform_tag() -> str:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    return f"{sys.platform}-{machine}"


def snapshot(where: Optional[str] = None, cwd: Optional[Path] = None, include: Optional[list[str]] = None,
             exclude: Optional[list[str]] = None, environ: Optional[list[str]] = None,
             distributions: Optional[Iterable[metadata.Distribution]] = None, prefix: Optional[Path] = None,
             build: bool = True) -> Environment:
    """This interpreter's environment (module docstring). ``include``/``exclude``/``environ``
    default to ``coiled-lab.sync.*``; ``build=False`` lists local packages without building
    their wheels. Raise :class:`~coiled_lab.spec.ClusterSpecError` for what cannot be
    shipped: a local package whose wheel cannot be built, code over the size cap, an
    allow-listed name that is not a variable name."""
    env = Environment(where=where or f"{sys.executable}", python="%d.%d" % sys.version_info[:2],
                      platform=platform_tag())
    dists = list(distributions if distributions is not None else metadata.distributions())
    seen: set[str] = set()
    for dist in dists:
        name = dist.metadata["Name"]
        key = canonical(name or "")
        if not name or key in seen or key in NEVER_SYNCED:
            continue
        seen.add(key)
        origin, source = _origin(dist)
        env.packages.append(Package(name, dist.version, origin, source))
        if origin in ("editable", "local", "vcs"):
            if build:
                filename, data = _wheel(dist, origin, source)
                env.wheels[filename] = data
            else:
                env.skipped.append((f"{name} {dist.version}", f"{origin} install from {source}: not shipped from "
                                                              f"{env.where}"))
    env.packages.sort(key=lambda p: p.name.lower())
    env.conda_only = _conda_only(prefix or Path(sys.prefix))
    env.file_names, env.files = code_archive(cwd or Path.cwd(), include, exclude)
    for pattern in environ if environ is not None else list(config.get("sync.environ") or []):
        for name in sorted(n for n in os.environ if fnmatch.fnmatchcase(n, pattern)) or [pattern]:
            check_variable_name(name, "sync.environ")
            if name in os.environ:
                env.environ[name] = os.environ[name]
    return env


def describe_here() -> str:
    """How the process taking the snapshot is named to the user."""
    if "ipykernel" in sys.modules:
        return f"the kernel ({sys.executable})"
    return f"{Path(sys.argv[0]).name if sys.argv and sys.argv[0] else 'python'} ({sys.executable})"


def for_request(spec: Any, where: Optional[str] = None) -> Optional[dict[str, Any]]:
    """What a create request from this process carries: its environment when the cluster
    syncs packages on a cloud (the local backend runs the server's own processes)."""
    if spec.backend == "local" or not spec.package_sync or spec.software:
        return None
    return snapshot(where or describe_here()).to_json()


def _origin(dist: metadata.Distribution) -> tuple[str, Optional[str]]:
    """(origin, source) from PEP 610's direct_url.json and the INSTALLER file."""
    text = dist.read_text("direct_url.json")
    if text:
        try:
            info = json.loads(text)
        except ValueError:
            info = {}
        url = info.get("url", "")
        if info.get("dir_info", {}).get("editable"):
            return "editable", url
        if "vcs_info" in info:
            return "vcs", f"{info['vcs_info'].get('vcs', 'vcs')}+{url}@{info['vcs_info'].get('commit_id', '')}"
        if url.startswith("file:"):
            return "local", url
    if (dist.read_text("INSTALLER") or "").strip() == "conda":
        return "conda", "conda"
    return "index", None


def _wheel(dist: metadata.Distribution, origin: str, source: Optional[str]) -> tuple[str, bytes]:
    """(file name, content) of a wheel of a distribution the index does not have."""
    if origin == "editable":
        return _build(dist, source or "")
    if origin == "local" and (source or "").endswith(".whl"):
        from urllib.parse import unquote, urlsplit

        path = Path(unquote(urlsplit(source or "").path))
        if path.is_file():  # the very wheel it was installed from
            return path.name, path.read_bytes()
    return _repack(dist)


def _build(dist: metadata.Distribution, url: str) -> tuple[str, bytes]:
    """Build the wheel of an editable install from its source directory: with this
    interpreter's pip (without build isolation first: offline and fast; then with it), else
    with uv (environments uv made have no pip)."""
    import importlib.util
    import shutil
    from urllib.parse import unquote, urlsplit

    path = unquote(urlsplit(url).path)
    name = dist.metadata["Name"]
    why = f"its source directory {path} is gone"
    if Path(path).is_dir():
        with tempfile.TemporaryDirectory(prefix="coiled-lab-wheel-") as out:
            pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, path]
            commands = [[*pip, "--no-build-isolation"], pip] if importlib.util.find_spec("pip") else []
            if shutil.which("uv"):
                commands.append(["uv", "build", "--wheel", "-q", "--python", sys.executable, "--out-dir", out, path])
            why = "neither pip nor uv is installed here" if not commands else why
            for command in commands:
                done = subprocess.run(command, capture_output=True, text=True)
                built = sorted(Path(out).glob("*.whl"))
                if done.returncode == 0 and built:
                    return built[0].name, built[0].read_bytes()
                lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
                why = next((x.strip() for x in reversed(lines) if "rror" in x), lines[-1] if lines else "pip failed")
    raise _error("package_sync", f"the editable package {name} {dist.version} cannot be shipped: its wheel does not "
                                 f"build ({why[:300]}); fix the build or uninstall it")


def _repack(dist: metadata.Distribution) -> tuple[str, bytes]:
    """A wheel made of an installed distribution's files (its RECORD), with the tag its
    WHEEL file names: for local-path and VCS installs, whose source may be gone."""
    name, version = dist.metadata["Name"], dist.version
    files = [f for f in dist.files or [] if "__pycache__" not in str(f)]
    scripts = Path(sys.prefix) / "bin"
    info = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if not files or info is None:
        raise _error("package_sync", f"the local package {name} {version} cannot be shipped: it lists no files "
                                     "(no RECORD); reinstall it with pip")
    tag = next((line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
                if line.startswith("Tag:")), "py3-none-any")
    buffer, record = io.BytesIO(), io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for f in files:
            rel = str(f).replace(os.sep, "/")
            if rel.startswith(".."):  # outside site-packages: only the scripts are taken back
                located = Path(os.path.normpath(f.locate()))
                if located.parent != scripts:
                    continue
                rel = f"{info[:-len('.dist-info')]}.data/scripts/{located.name}"
            data = Path(f.locate()).read_bytes()
            if rel.startswith(f"{info[:-len('.dist-info')]}.data/scripts/") and data.startswith(b"#!") and \
                    b"python" in data.split(b"\n", 1)[0]:
                data = b"#!python\n" + data.split(b"\n", 1)[1]  # the installer writes the VM's interpreter
            if rel in (f"{info}/RECORD", f"{info}/INSTALLER", f"{info}/direct_url.json", f"{info}/REQUESTED"):
                continue
            wheel.writestr(zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([rel, f"sha256={digest}", len(data)])
        writer.writerow([f"{info}/RECORD", "", ""])
        wheel.writestr(f"{info}/RECORD", record.getvalue())
    return f"{canonical(name).replace('-', '_')}-{version.replace('-', '_')}-{tag}.whl", buffer.getvalue()


def _conda_only(prefix: Path) -> list[str]:
    """``name version`` of the conda packages in ``prefix`` that have no Python metadata
    (so no index equivalent); empty outside a conda environment."""
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        return []
    out = []
    for record in sorted(meta.glob("*.json")):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if data.get("name") in ("python", "conda", "pip"):
            continue
        if not any(re.search(r"site-packages/[^/]+\.(dist|egg)-info(/|$)", f) for f in data.get("files") or []):
            out.append(f"{data.get('name')} {data.get('version')}")
    return out


def code_archive(cwd: Path, include: Optional[list[str]] = None, exclude: Optional[list[str]] = None,
                 max_bytes: Optional[int] = None) -> tuple[list[str], Optional[bytes]]:
    """(paths, tar.gz) of the working directory's code; stops as soon as what matches
    passes ``max_bytes`` and raises naming the size, the largest files and the options."""
    import pathspec

    include = list(include if include is not None else config.get("sync.include") or [])
    exclude = list(exclude if exclude is not None else config.get("sync.exclude") or [])
    limit = int(max_bytes if max_bytes is not None else config.get("sync.max-bytes"))
    wanted = pathspec.GitIgnoreSpec.from_lines(include)
    ignored = pathspec.GitIgnoreSpec.from_lines([*exclude, *SECRET_PATTERNS])
    gitignore = cwd / ".gitignore"
    if gitignore.is_file():
        ignored = ignored + pathspec.GitIgnoreSpec.from_lines(gitignore.read_text(errors="replace").splitlines())
    found: list[tuple[str, int]] = []
    total = 0
    for root, dirs, names in os.walk(cwd):
        here = Path(root)
        rel_dir = here.relative_to(cwd).as_posix()
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not (here / d / "pyvenv.cfg").exists()
                         and not (here / d).is_symlink()
                         and not ignored.match_file(f"{'' if rel_dir == '.' else rel_dir + '/'}{d}/"))
        for name in sorted(names):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            path = here / name
            if not wanted.match_file(rel) or ignored.match_file(rel) or not path.is_file() or path.is_symlink():
                continue
            size = path.stat().st_size
            found.append((rel, size))
            total += size
            if total > limit:
                largest = ", ".join(f"{r} ({s / 2**20:.1f} MiB)" for r, s in sorted(found, key=lambda x: -x[1])[:3])
                raise _error("sync.include", f"{include} matches more than {limit / 2**20:.0f} MiB in {cwd} (the "
                                             f"largest: {largest}); narrow coiled-lab.sync.include, add to "
                                             "coiled-lab.sync.exclude or .gitignore, or raise coiled-lab.sync.max-bytes")
    if not found:
        return [], None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for rel, _ in found:
            info = tar.gettarinfo(str(cwd / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0  # the same files make the same archive, so the same hash
            with open(cwd / rel, "rb") as f:
                tar.addfile(info, f)
    return [r for r, _ in found], _deterministic_gzip(buffer.getvalue())


def _deterministic_gzip(data: bytes) -> bytes:
    """gzip's header holds a time stamp: zeroed, so equal files give equal bytes."""
    return data[:4] + b"\0\0\0\0" + data[8:] if len(data) > 8 else data
