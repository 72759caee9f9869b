"""The ``startup-script`` metadata: what a GCE VM runs at boot, with no credentials.

One shell script carrying the shared bootstrap archive (:mod:`coiled_lab.backends.bootconfig`:
the bootstrap modules and ``config.json``), gzip-compressed and base64-encoded in a
here-document (metadata values are text). It makes sure the image has a ``python3``
(Debian 12's and the deep-learning images' do; else it installs one with apt-get or dnf),
unpacks the archive under ``$TMPDIR`` or ``/var/tmp``, checks that this Python can run the
bootstrap and runs ``python3 -m coiled_lab.bootstrap.vm`` with it (the bootstrap installs
the Python and packages dask runs with itself). The VM logs to Cloud Logging with its own
service account (``roles/logging.logWriter`` on the project) and, when the cluster syncs an
environment through the bucket (:mod:`.envstore`), reads and writes it with that account's
token too: ``config.json`` then names the bucket and the keys instead of carrying the pins.

However the bootstrap ends (an idle or lifetime timeout, its scheduler gone, a failed
boot), the VM then deletes itself with that account's token (``instances.delete``, which
its own IAM policy allows it, on itself alone: :func:`.instances.grant_self_delete`), so
that no stopped VM is left whose disk bills; its disk goes with it. A Python that cannot
even start the bootstrap (whose own lines go to Cloud Logging from its first) has its
output sent to Cloud Logging by the script first, labelled as the bootstrap labels its
lines, so the reason outlives the VM. When the delete is refused (no grant, no route to
Compute) the VM powers off instead: GCE stops it, and the backend deletes stopped VMs of
its clusters as soon as it sees them, after reading their serial output.
"""

from __future__ import annotations

import base64
import gzip
import re
from typing import Any

from ...bootstrap.cloudlogging import CLUSTER_LABEL, DEFAULT_ENDPOINT, INSTANCE_LABEL, ROLE_LABEL
from ...bootstrap.gce import COMPUTE_ENDPOINT_ENV, LOGGING_ENDPOINT_ENV
from ...spec import ClusterSpecError
from ..bootconfig import INSTALL_PYTHON

LIMIT = 256 * 1024  # GCE accepts at most 256 KiB per metadata value

_SCRIPT = r"""#!/bin/sh
# coiled-lab: the @ROLE@ of cluster @CLUSTER@. It unpacks the bootstrap below and runs it;
# however that ends, the VM deletes itself (its own IAM policy lets its service account do
# that, to this VM alone), or else powers off and coiled-lab deletes it.
PYTHON=@PYTHON@
COMPUTE=${@COMPUTE_ENV@:-@COMPUTE@}
LOGGING=${@LOGGING_ENV@:-@LOGGING@}
MD=http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1
meta() { curl -sf -m 5 --noproxy '*' -H 'Metadata-Flavor: Google' "$MD/$1"; }
api() {  # METHOD URL [JSON]: one request with this VM's service account's token
    token=$(meta instance/service-accounts/default/token | sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p')
    [ -n "$token" ] && curl -sf -m 30 -o /dev/null -X "$1" -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' --data-binary "${3-}" "$2"
}
tell() {  # FILE: its last lines to Cloud Logging, labelled as the bootstrap labels its own
    lines=$(tail -n 40 "$1" | LC_ALL=C tr -cd '\n\40-\176' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' \
        -e 's/.*/{"textPayload":"&"}/' | paste -sd, -)
    [ -n "$lines" ] && api POST "$LOGGING/v2/entries:write" "{\"logName\":\"projects/$project/logs/@LOG@\",\
\"resource\":{\"type\":\"gce_instance\",\"labels\":{\"project_id\":\"$project\",\"zone\":\"$zone\",\
\"instance_id\":\"$(meta instance/id)\"}},\"labels\":{\"@CLUSTER_LABEL@\":\"@CLUSTER@\",\"@ROLE_LABEL@\":\"@ROLE@\",\
\"@INSTANCE_LABEL@\":\"$name\"},\"entries\":[$lines]}"
}
end() {
    project=$(meta project/project-id); zone=$(meta instance/zone); zone=${zone##*/}; name=$(meta instance/name)
    [ -n "$why" ] && tell "$why"
    if api DELETE "$COMPUTE/compute/v1/projects/$project/zones/$zone/instances/$name"; then
        echo "coiled-lab: this VM deletes itself"
    else
        echo "coiled-lab: this VM could not delete itself; it powers off and coiled-lab deletes it"
    fi
    shutdown -h now
}
why=
trap end EXIT
@INSTALL_PYTHON@dir=$(mktemp -d "${TMPDIR:-/var/tmp}/coiled-lab.XXXXXX") || exit 1
base64 -d <<'COILED_LAB_ARCHIVE' | gzip -d | tar -x -C "$dir" || exit 1
@ARCHIVE@
COILED_LAB_ARCHIVE
cd "$dir" || exit 1
if ! "$PYTHON" -c 'import coiled_lab.bootstrap.vm' > preflight.log 2>&1; then
    echo "coiled-lab: $PYTHON cannot run the bootstrap; this VM ends" >> preflight.log
    cat preflight.log
    why=$dir/preflight.log
    exit 1
fi
"$PYTHON" -m coiled_lab.bootstrap.vm config.json
exit $?
"""


def build(archive: bytes, bootstrap: dict[str, Any], compute_endpoint: str, python: str = "python3") -> str:
    """The script text, at most :data:`LIMIT` bytes. ``python`` runs the bootstrap: the
    image's own (any 3.9 or newer does). ``compute_endpoint``: where the VM deletes itself,
    unless its image names another (:data:`~coiled_lab.bootstrap.gce.COMPUTE_ENDPOINT_ENV`,
    as it may name Cloud Logging's)."""
    encoded = base64.encodebytes(gzip.compress(archive, mtime=0)).decode().strip()
    values = {
        "ROLE": bootstrap["role"], "CLUSTER": bootstrap["cluster_id"], "PYTHON": python,
        "COMPUTE": compute_endpoint, "COMPUTE_ENV": COMPUTE_ENDPOINT_ENV,
        "LOGGING": bootstrap.get("logging_endpoint") or DEFAULT_ENDPOINT, "LOGGING_ENV": LOGGING_ENDPOINT_ENV,
        "LOG": bootstrap["log_name"], "CLUSTER_LABEL": CLUSTER_LABEL, "ROLE_LABEL": ROLE_LABEL,
        "INSTANCE_LABEL": INSTANCE_LABEL, "INSTALL_PYTHON": INSTALL_PYTHON, "ARCHIVE": encoded,
    }
    script = re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], _SCRIPT)
    if len(script.encode()) > LIMIT:
        raise ClusterSpecError(
            f"package_sync: the VM's startup-script would be {len(script) / 1024:.1f} KiB, over GCE's 256 KiB; "
            "turn package_sync off and give software as a requirements file with fewer packages", "package_sync")
    return script
