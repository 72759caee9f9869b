"""The store's schema, as numbered SQL steps per dialect (``sqlite/``, ``postgresql/``).

``NNNN_what.sql`` takes a store from version NNNN-1 to NNNN; a store records the version it
is at (``meta.schema_version``) and the steps above it are applied at open, all in one
transaction, so a store is at one version or the next, never between. Plain SQL rather
than Alembic: the schema is a handful of tables written by hand-written SQL, and a DBA can
read (and apply) these files as they are.
"""

from __future__ import annotations

import re
from importlib import resources

DIALECTS = ("sqlite", "postgresql")

_STEP = re.compile(r"^(\d{4})_[\w-]+\.sql$")


def steps(dialect: str) -> list[tuple[int, list[str]]]:
    """``(version, statements)`` for every step of ``dialect``, oldest first."""
    out = []
    for entry in resources.files(__package__).joinpath(dialect).iterdir():
        match = _STEP.match(entry.name)
        if match:
            out.append((int(match.group(1)), statements(entry.read_text(encoding="utf-8"))))
    return sorted(out)


def statements(script: str) -> list[str]:
    """The statements of a script: its ``--`` comment lines dropped, split on ``;`` (the
    steps hold no ``;`` in a string or a function body)."""
    text = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def latest(dialect: str) -> int:
    """The version a store of ``dialect`` is at once every step is applied."""
    return steps(dialect)[-1][0]
