"""A cluster's logs: its Cloud Logging entries, with serial-port output for silent machines.

Each VM's bootstrap writes entries to the log ``coiled-lab.gcp.log-name`` labelled
``coiled-lab-cluster=<id>`` (and role, instance), so one ``entries.list`` (filter on the
log, the label and the time; pages followed through page tokens) reads a whole cluster,
whatever its size. A machine whose bootstrap never reached Cloud Logging (a broken image,
a crash before the shipper started) has no entries; its serial port 1 output
(``instances.getSerialPortOutput``), where the bootstrap also prints every line, stands
in for it.
"""

from __future__ import annotations

import datetime
from typing import Optional

from ...bootstrap.cloudlogging import CLUSTER_LABEL, INSTANCE_LABEL, ROLE_LABEL
from ..base import Instance
from ...logs import LogRecord, parse_lines
from .session import GCPSession, is_not_found

# Serial output is one call per machine: only this many silent machines are read.
MAX_SERIAL = 10


def log_filter(project: str, log_name: str, cluster_id: str, since: Optional[float]) -> str:
    parts = [f'logName="projects/{project}/logs/{log_name}"', f'labels."{CLUSTER_LABEL}"="{cluster_id}"']
    if since is not None:
        when = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
        parts.append(f'timestamp>="{when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"')
    return " AND ".join(parts)


async def cluster_logs(gcp: GCPSession, log_name: str, cluster_id: str,
                       since: Optional[float] = None) -> list[LogRecord]:
    """Every record of the cluster after ``since``, oldest first: one ``entries.list``."""
    from google.cloud.logging import ASCENDING

    client, project = gcp.logging(), gcp.project

    def collect() -> list[LogRecord]:
        records: list[LogRecord] = []
        for entry in client.list_entries(resource_names=[f"projects/{project}"], order_by=ASCENDING, page_size=1000,
                                         filter_=log_filter(project, log_name, cluster_id, since)):
            labels = entry.labels or {}
            if labels.get(CLUSTER_LABEL) != cluster_id:
                continue
            when = entry.timestamp.timestamp() if entry.timestamp else 0.0
            records.extend(parse_lines([str(entry.payload)], labels.get(INSTANCE_LABEL, "?"),
                                       labels.get(ROLE_LABEL, "worker"), fallback_time=when))
        return records

    records = await gcp.call(collect)
    records.sort(key=lambda r: r.time)
    return records


async def serial_logs(gcp: GCPSession, instances: list[Instance]) -> list[LogRecord]:
    """What the machines printed to serial port 1 (the scheduler's first, at most MAX_SERIAL)."""
    client = gcp.compute("Instances")
    records: list[LogRecord] = []
    for instance in sorted(instances, key=lambda i: (i.role != "scheduler", -i.launched_at))[:MAX_SERIAL]:
        if not instance.zone:
            continue
        try:
            answer = await gcp.call(client.get_serial_port_output, request={
                "project": gcp.project, "zone": instance.zone, "instance": instance.id, "port": 1})
        except Exception as exc:
            if is_not_found(exc):
                continue
            raise
        records.extend(parse_lines(answer.contents.splitlines(), instance.id, instance.role,
                                   fallback_time=instance.launched_at))
    records.sort(key=lambda r: r.time)
    return records
