"""A cluster's logs: its CloudWatch streams, with EC2 console output for silent machines.

Each VM's bootstrap writes to the stream ``<cluster-id>/<role>-<instance-id>`` of one log
group, so one ``FilterLogEvents`` request (stream-name prefix = the cluster id, pages
followed through ``nextToken``) reads a whole cluster, whatever its size. A machine whose
bootstrap never reached CloudWatch (a broken image, no route to the endpoint, a crash
before the shipper started) has no stream; its console output, which the bootstrap also
writes every line to, stands in for it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Optional

from ..base import Instance
from ...logs import LogRecord, parse_lines
from .session import AWSSession, error_code

# Console output is one call per machine: only this many silent machines are read.
MAX_CONSOLES = 10


def stream_name(cluster_id: str, role: str, instance_id: str) -> str:
    return f"{cluster_id}/{role}-{instance_id}"


async def cluster_logs(aws: AWSSession, region: str, group: str, cluster_id: str,
                       since: Optional[float] = None) -> list[LogRecord]:
    """Every record of the cluster's streams after ``since``, oldest first."""
    params: dict[str, Any] = {"logGroupName": group, "logStreamNamePrefix": f"{cluster_id}/"}
    if since is not None:
        params["startTime"] = int(since * 1000)
    try:
        events = await aws.pages("logs", region, "filter_log_events", "events", **params)
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":  # no log group: setup never ran here
            return []
        raise
    records: list[LogRecord] = []
    for event in events:
        if not event["logStreamName"].startswith(params["logStreamNamePrefix"]):
            continue  # AWS filters by prefix; a stand-in that does not (moto) must not mix clusters
        role, _, instance = event["logStreamName"].split("/", 1)[-1].partition("-")
        records.extend(parse_lines([event["message"]], instance, role, fallback_time=event["timestamp"] / 1000))
    records.sort(key=lambda r: r.time)
    return records


async def console_logs(aws: AWSSession, region: str, instances: list[Instance]) -> list[LogRecord]:
    """What the machines printed to their consoles (the scheduler's first, at most MAX_CONSOLES)."""
    records: list[LogRecord] = []
    for instance in sorted(instances, key=lambda i: (i.role != "scheduler", -i.launched_at))[:MAX_CONSOLES]:
        try:
            answer = await aws.call("ec2", region, "get_console_output", InstanceId=instance.id, Latest=True)
        except Exception as exc:
            if error_code(exc) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                continue
            raise
        text = _decode(answer.get("Output") or "")
        when = answer["Timestamp"].timestamp() if answer.get("Timestamp") else instance.launched_at
        records.extend(parse_lines(text.splitlines(), instance.id, instance.role, fallback_time=when))
    records.sort(key=lambda r: r.time)
    return records


def _decode(output: str) -> str:
    """EC2 sends console output base64-encoded."""
    try:
        return base64.b64decode(output, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return output
