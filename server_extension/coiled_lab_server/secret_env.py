"""The cloud secrets in the Jupyter server's environment, moved out of it into memory.

Kernels and terminals inherit the server's ``os.environ``. The secrets must be gone from it
before the first kernel starts, whatever else of the extension fails: so they are taken
when Jupyter first asks the package for its extension points (before it imports the
extension's modules, links or loads it), with nothing but the standard library, and
:class:`~coiled_lab_server.credentials.Credentials` claims them from here.

What this cannot undo: Linux keeps the environment a process was *started* with in
``/proc/<pid>/environ``, readable by every process of the same user (a kernel included),
and the shell or service that started the server keeps its own copy. Secrets given to
the server in its starting environment stay readable there; put them in the credentials
store (``PUT /coiled-lab/api/credentials``) or a profile instead (SECURITY.md).
"""

from __future__ import annotations

import os
from typing import MutableMapping

# Environment variables that carry a secret (or pair with one); the server keeps them.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "CLOUDSDK_AUTH_ACCESS_TOKEN",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
    # A path, not a secret, but to the server's key: a kernel's Application Default
    # Credentials (and so Cluster.send_credentials) must be the user's, not this.
    "GOOGLE_APPLICATION_CREDENTIALS",
)

_taken: dict[str, str] = {}  # taken from this process's environment, not yet claimed


def take(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Remove the secret variables from ``environ``; what they were."""
    return {key: environ.pop(key) for key in SECRET_ENV if key in environ}


def take_from_process() -> None:
    """Move this process's secret variables into memory (kept until :func:`claim`)."""
    _taken.update(take(os.environ))


def claim() -> dict[str, str]:
    """What this process's environment held (taken now if not yet), handed over once: the
    next server made in this process (tests make many) claims only what its own
    environment brings."""
    take_from_process()
    claimed = dict(_taken)
    _taken.clear()
    return claimed
