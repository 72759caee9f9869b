"""Who asks: the identity every manager verb acts for.

In single-user mode the Jupyter server's own user asks for everything and sees every
cluster (:data:`LOCAL`). In team mode (``coiled-lab serve`` behind JupyterHub) the
service turns each request's JupyterHub token into a :class:`Caller`; the manager records
it as a cluster's owner, shows and changes only that owner's clusters (admins see all),
applies that user's and groups' limits and writes it into the audit log.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool = False
    groups: frozenset[str] = field(default_factory=frozenset)

    def sees(self, owner: str) -> bool:
        """Whether this caller may see and change a cluster owned by ``owner``."""
        return self.admin or owner == self.name


def _local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container's random uid): still one user
        return "local"


LOCAL = Caller(name=_local_user(), admin=True)

# The audit log's actors for what the server does by itself on an owner's behalf.
ADAPTIVE = "coiled-lab (adaptive)"  # adaptive scaling (:mod:`.adaptive`)
BUDGET = "coiled-lab (budget)"  # a stop at limits.max-cost-per-cluster
