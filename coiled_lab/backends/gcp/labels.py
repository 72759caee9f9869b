"""Labels and network tags: how every GCE resource coiled-lab makes is found again without the store.

Per VM: the label ``coiled-lab-cluster=<id>`` (what ``describe``, logs, cleanup filter on),
``coiled-lab-role`` and ``coiled-lab-owner`` (the store that made the cluster, hashed, so a
cleanup never touches another installation's clusters in the same project); the spec's
``tags`` become labels too, made valid (lower case, at most 63 characters). Network tags
select firewall rules: ``coiled-lab`` on every VM (members reach each other), and on a
scheduler one tag per ingress CIDR (:func:`ingress_tag`).
"""

from __future__ import annotations

import hashlib
import re

CLUSTER = "coiled-lab-cluster"
ROLE = "coiled-lab-role"
OWNER = "coiled-lab-owner"
NETWORK_TAG = "coiled-lab"


def valid(text: str) -> str:
    """A label key or value GCE accepts: lower case letters, digits, ``-`` and ``_``, 63 at most."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def cluster_labels(spec_tags: dict[str, str], cluster_id: str, role: str, owner: str) -> dict[str, str]:
    labels = {valid(k): valid(v) for k, v in spec_tags.items() if valid(k) and valid(k)[0].isalpha()}
    return {**labels, CLUSTER: valid(cluster_id), ROLE: role, OWNER: owner}


def label_filter(key: str, value: str) -> str:
    """A Compute list filter on one label."""
    return f'labels.{key} = "{value}"'


def ssh_tag(cidr: str) -> str:
    """The network tag a firewall rule opening SSH to ``cidr`` (``allow_ssh_from``) targets."""
    return f"coiled-lab-ssh-{hashlib.sha256(cidr.encode()).hexdigest()[:12]}"


def ingress_tag(cidr: str) -> str:
    """The network tag a firewall rule opening the scheduler to ``cidr`` targets."""
    return f"coiled-lab-in-{hashlib.sha256(cidr.encode()).hexdigest()[:12]}"
