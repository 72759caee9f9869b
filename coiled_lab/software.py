"""``software``: a requirements file the cluster's VMs install, read and checked before any
cloud call.

The file is read where coiled-lab runs (the Jupyter server, or the process of a script),
and its text is sent to every VM with the rest of the start-up data. A VM has PyPI and
nothing of this machine, so a file is refused, naming its line, when it asks for what a VM
cannot install:

- every line that is not blank or a comment is a PEP 508 requirement (``dask[dataframe]>=2024.8``,
  ``pandas==2.2.2 ; python_version >= "3.10"``, ``mylib @ https://example.org/mylib-1.0-py3-none-any.whl``),
  optionally followed by pip's ``--hash=<algorithm>:<digest>`` options (as
  ``pip-compile --generate-hashes`` writes them; a line may go on after a ``\\``);
- no other pip option: ``-e``/``--editable`` and local paths (``./pkg``, ``file:`` URLs)
  name this machine's files; ``-r``/``-c`` name files that are not sent; ``--index-url``,
  ``--extra-index-url``, ``--find-links`` and ``--no-index`` would point the VMs away from
  PyPI (and such addresses often carry credentials, which start-up data never does).

A container image (or anything else that is not a ``.txt`` path) is not supported on the
cloud backends: the VMs boot a bare image and install the requirements themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from .spec import ClusterSpecError

MAX_BYTES = 64 * 1024  # the text travels in every VM's start-up data
ACCEPTED_OPTIONS = ("--hash",)
_HASH = re.compile(r"--hash[=\s]+[A-Za-z0-9]+:[0-9A-Fa-f]+")
_COMMENT = re.compile(r"(^|\s+)#.*$")
# Options a VM cannot follow, and why.
_REFUSED = {
    ("-e", "--editable"): "an editable install is a directory or checkout on this machine, which the VMs cannot "
                          "read; list the package by name and version instead",
    ("-r", "--requirement", "-c", "--constraint"): "only this file is sent to the VMs, not the files it names; "
                                                   "put their lines in it",
    ("-i", "--index-url", "--extra-index-url", "--find-links", "-f", "--no-index"):
        "the VMs install from PyPI only; another index's address (often with credentials in it) is not sent to them",
}


def _error(software: str, why: str) -> ClusterSpecError:
    return ClusterSpecError(f"software: {software!r} is not allowed: {why}", "software")


def requirements(software: Optional[str], cloud: str) -> Optional[str]:
    """The text of the requirements file ``software`` names, checked line by line; None when
    ``software`` is not given. Raise :class:`~coiled_lab.spec.ClusterSpecError` naming
    ``software`` (and, for a bad line, the file, the line's number and the line)."""
    if not software:
        return None
    path = Path(software)
    try:
        path = path.expanduser()
    except RuntimeError:  # ~user of no such user: taken as written, and not found below
        pass
    if path.suffix.lower() != ".txt":
        raise _error(software, f"the {cloud} backend takes a requirements file: the path of a .txt file of PEP 508 "
                               "requirements on the Jupyter server; container images are not supported on it")
    where = path if path.is_absolute() else Path.cwd() / path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        hint = "" if path.is_absolute() else " (a relative path is read from the Jupyter server's working directory)"
        raise _error(software, f"no such file: {where}{hint}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise _error(software, f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None
    if not path.is_file():
        raise _error(software, f"{where} is not a file")
    if size > MAX_BYTES:
        raise _error(software, f"{where} has {size} bytes; a requirements file may have at most {MAX_BYTES}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no part of line 1
    except UnicodeDecodeError:
        raise _error(software, f"{where} is not UTF-8 text") from None
    except OSError as exc:
        raise _error(software, f"cannot read {where}: {exc.strerror or exc}") from None
    for number, line in _logical_lines(text):
        why = _check_line(line)
        if why:
            raise ClusterSpecError(f"software: {where}, line {number}: {line.strip()!r} is not allowed: {why}",
                                   "software")
    return text


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(number of its first line, text) of each line with ``\\`` continuations joined and
    comments removed; blank ones left out."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = _COMMENT.sub("", raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            out.append((start, line))
    if pending.strip():
        out.append((start, pending))
    return out


def _check_line(line: str) -> Optional[str]:
    """Why a VM cannot install this line, or None."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = line.strip()
    if text.startswith("-"):
        option = re.split(r"[=\s]", text, maxsplit=1)[0]
        for options, why in _REFUSED.items():
            if option in options or any(option.startswith(o) and not o.startswith("--") for o in options):
                return why
        return (f"the pip option {option} is not supported here; allowed: PEP 508 requirements, each optionally "
                f"followed by {', '.join(ACCEPTED_OPTIONS)}")
    requirement = _HASH.sub("", text).strip()
    if " --" in f" {requirement}":
        option = requirement[requirement.index("--"):].split()[0]
        return (f"the pip option {option} is not supported here; allowed after a requirement: "
                f"{', '.join(ACCEPTED_OPTIONS)}=<algorithm>:<digest>")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", requirement):
        if requirement.lower().startswith("file:"):
            return "a file: URL names this machine's files, which the VMs cannot read; name a package on PyPI"
        return "not a PEP 508 requirement: a URL needs the package's name, as in 'name @ https://...'"
    if _local_path(requirement):
        return "a local path: the VMs cannot read this machine's files; name a package on PyPI or an https URL"
    try:
        parsed = Requirement(requirement)
    except InvalidRequirement as exc:
        detail = str(exc).splitlines()[0]
        return (f"not a PEP 508 requirement such as 'pandas>=2.2' or 'name @ https://...' ({detail})")
    if parsed.url and parsed.url.lower().startswith("file:"):
        return "a file: URL names this machine's files, which the VMs cannot read; name a package on PyPI or an https URL"
    return None


def _local_path(text: str) -> bool:
    """``./pkg``, ``/srv/wheels/x.whl``, ``~/src/lib``, ``pkg.whl``, ``C:\\...``: pip takes these
    as paths on the machine that installs."""
    if text.startswith((".", "/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
        return True
    head = re.split(r"[\s;]", text, maxsplit=1)[0]
    return "@" not in text and head.lower().endswith((".whl", ".tar.gz", ".zip", ".tgz"))
