"""Ship a GCE VM's output to Cloud Logging: the log shipper with an ``entries.write`` sink.

Runs on the VM, with the standard library only (no google-cloud-logging there). Batching,
ordering, the bounded buffer and retries are :class:`~coiled_lab.bootstrap.logship.LogShipper`'s;
only sending differs from CloudWatch. Every entry goes to the log ``coiled-lab`` of the
project, on the VM's ``gce_instance`` resource, labelled with the cluster id, role and
instance name, so one ``entries.list`` filter on the cluster label reads a whole cluster.
The token is the VM's service account's (``roles/logging.logWriter`` only), from the
metadata server: no credential is ever shipped to the VM.
"""

from __future__ import annotations

import datetime
import json
import urllib.request
from typing import Any, Callable

from .logship import LogShipper

DEFAULT_ENDPOINT = "https://logging.googleapis.com"
CLUSTER_LABEL = "coiled-lab-cluster"
ROLE_LABEL = "coiled-lab-role"
INSTANCE_LABEL = "coiled-lab-instance"


class CloudLoggingShipper(LogShipper):
    def __init__(self, token: Callable[[], str], endpoint: str, log_name: str, resource: dict[str, Any],
                 labels: dict[str, str], **options: Any):
        """``log_name``: ``projects/<p>/logs/<name>``; ``resource``: the monitored
        resource (type and labels); ``labels``: put on every entry."""
        super().__init__(lambda: None, log_name, labels.get(INSTANCE_LABEL, ""), **options)
        self.url = f"{(endpoint or DEFAULT_ENDPOINT).rstrip('/')}/v2/entries:write"
        self.token = token
        self.resource = resource
        self.labels = labels

    def _send(self, batch: list[dict[str, Any]]) -> None:
        body = {
            "logName": self.group,
            "resource": self.resource,
            "labels": self.labels,
            "entries": [{"textPayload": e["message"], "timestamp": _rfc3339(e["timestamp"])} for e in batch],
        }
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
            "Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        self.sent += len(batch)


def _rfc3339(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}Z"
