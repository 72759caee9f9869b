"""package_sync: the same Python packages on the VMs as in the environment that asked for them.

:func:`snapshot` runs where the cluster is requested: it records every installed
distribution and its exact version. Distributions installed from a local directory, an
editable checkout or a VCS URL cannot be installed on a VM from a package index; they are
returned separately so the caller can name them in a warning (and the VM's log repeats
it), never dropped in silence. :func:`install` runs on the VM: it pip-installs exactly the
recorded versions that are not already there, so an image that already matches costs
nothing. Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from typing import Callable, Iterable, Optional

# Tools of the environment itself: the VM's own versions serve it as well.
_NEVER_SYNCED = {"pip", "setuptools", "wheel", "distribute"}


def canonical(name: str) -> str:
    """PEP 503 normalized name: ``Foo_Bar`` and ``foo-bar`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _local_origin(dist: metadata.Distribution) -> Optional[str]:
    """Why a distribution cannot come from an index (PEP 610 direct_url.json), or None."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return "unknown origin"
    if info.get("dir_info", {}).get("editable"):
        return f"editable install from {info.get('url', '?')}"
    if "vcs_info" in info:
        return f"{info['vcs_info'].get('vcs', 'vcs')} checkout {info.get('url', '?')}"
    url = info.get("url", "")
    if url.startswith("file:"):
        return f"local path {url}"
    return None  # a wheel/sdist URL on an index-like server: pinning the version works


def snapshot(distributions: Optional[Iterable[metadata.Distribution]] = None) -> tuple[list[str], list[str]]:
    """``(["name==version", ...], ["name: why it cannot be synced", ...])`` for this environment.

    The first distribution of a name on ``sys.path`` wins, as it does for imports.
    """
    pinned: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for dist in distributions if distributions is not None else metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = canonical(name)
        if key in pinned or key in skipped or key in _NEVER_SYNCED:
            continue
        origin = _local_origin(dist)
        if origin:
            skipped[key] = f"{name} {dist.version}: {origin}"
        else:
            pinned[key] = f"{name}=={dist.version}"
    return sorted(pinned.values(), key=str.lower), sorted(skipped.values(), key=str.lower)


def missing(requirements: Iterable[str]) -> list[str]:
    """The ``name==version`` pins this interpreter does not already satisfy."""
    out = []
    for req in requirements:
        name, _, version = req.partition("==")
        try:
            if metadata.version(name) == version:
                continue
        except metadata.PackageNotFoundError:
            pass
        out.append(req)
    return out


def install(
    requirements: list[str],
    emit: Callable[[str], None],
    say: Callable[..., None],
    requirements_text: Optional[str] = None,
    python: str = sys.executable,
) -> bool:
    """Install the pins not yet satisfied (and a requirements file's content, if given).

    Every line pip prints goes to ``emit``, this function's own messages to ``say``. The
    pins form a complete, consistent set, so they install without dependency resolution
    (``--no-deps``). Returns False when pip failed; the dask process is still started,
    since most of an environment may work.
    """
    todo = missing(requirements)
    ok = True
    if requirements:
        say(f"package_sync: {len(requirements) - len(todo)} of {len(requirements)} packages already installed, "
            f"installing {len(todo)}")
    if todo:
        ok = _pip_install(python, ["--no-deps", *todo], emit, say) and ok
    if requirements_text:
        path = "coiled-lab-requirements.txt"
        with open(path, "w") as f:
            f.write(requirements_text)
        say("installing the software requirements")
        ok = _pip_install(python, ["-r", path], emit, say) and ok
    return ok


def _pip_install(python: str, args: list[str], emit: Callable[[str], None], say: Callable[..., None]) -> bool:
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--progress-bar", "off", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        emit(line.rstrip("\n"))
    if proc.wait() != 0:
        say(f"pip exited with status {proc.returncode}; starting dask with what is installed", "ERROR")
        return False
    return True
