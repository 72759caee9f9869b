"""The ``startup-script`` metadata: what a GCE VM runs at boot, with no credentials.

One shell script carrying the shared bootstrap archive (:mod:`coiled_lab.backends.bootconfig`:
the bootstrap modules and ``config.json``), gzip-compressed and base64-encoded in a
here-document (metadata values are text). It makes sure the image has a ``python3``
(Debian 12's and the deep-learning images' do; else it installs one with apt-get or dnf),
unpacks the archive under ``$TMPDIR`` or ``/var/tmp``, runs ``python3 -m
coiled_lab.bootstrap.vm`` with it (the bootstrap installs the Python and packages dask runs
with itself) and, however that ends, powers the machine off; GCE then stops it (billing
for its vCPUs and memory ends) and the backend deletes stopped machines of its clusters as
soon as it sees them. The VM logs to Cloud Logging with its own service account
(``roles/logging.logWriter`` on the project) and, when the cluster syncs an environment
through the bucket (:mod:`.envstore`), reads and writes it with that account's token too:
``config.json`` then names the bucket and the keys instead of carrying the pins.
"""

from __future__ import annotations

import base64
import gzip
from typing import Any

from ...spec import ClusterSpecError
from ..bootconfig import INSTALL_PYTHON

LIMIT = 256 * 1024  # GCE accepts at most 256 KiB per metadata value

_SCRIPT = """#!/bin/sh
# coiled-lab: the {role} of cluster {cluster}. It unpacks the bootstrap below and runs it;
# however that ends, the machine then powers off and coiled-lab deletes it.
trap 'shutdown -h now' EXIT
PYTHON={python}
{install_python}dir=$(mktemp -d "${{TMPDIR:-/var/tmp}}/coiled-lab.XXXXXX") || exit 1
base64 -d <<'COILED_LAB_ARCHIVE' | gzip -d | tar -x -C "$dir" || exit 1
{archive}
COILED_LAB_ARCHIVE
cd "$dir" && "$PYTHON" -m coiled_lab.bootstrap.vm config.json
exit $?
"""


def build(archive: bytes, bootstrap: dict[str, Any], python: str = "python3") -> str:
    """The script text, at most :data:`LIMIT` bytes. ``python`` runs the bootstrap: the
    image's own (any 3.9 or newer does)."""
    encoded = base64.encodebytes(gzip.compress(archive, mtime=0)).decode().strip()
    script = _SCRIPT.format(role=bootstrap["role"], cluster=bootstrap["cluster_id"], python=python, archive=encoded,
                            install_python=INSTALL_PYTHON)
    if len(script.encode()) > LIMIT:
        raise ClusterSpecError(
            f"package_sync: the VM's startup-script would be {len(script) / 1024:.1f} KiB, over GCE's 256 KiB; "
            "turn package_sync off and give software as a requirements file with fewer packages", "package_sync")
    return script
