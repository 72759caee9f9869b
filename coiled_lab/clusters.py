"""Module-level helpers about clusters, with Coiled's names: ``coiled_lab.list_clusters()``,
``cluster_logs()``, ``delete_cluster()`` and ``get_notifications()``.

They reach the control plane as every front door does (:func:`coiled_lab.connect.get_control`):
the Jupyter server's API from a kernel, else a manager in this process; so a notebook
cell and a script see the same clusters as the sidebar and the CLI.
"""

from __future__ import annotations

from typing import Any, Optional

STOP_WAIT = 300.0  # seconds delete_cluster(wait=True) waits for the machines to be gone


def _control() -> Any:
    from .connect import get_control

    return get_control()


def list_clusters(include_stopped: bool = False) -> list[dict[str, Any]]:
    """The live clusters (and stopped ones with ``include_stopped``), newest first, as the
    sidebar shows them: name, id, backend, status, worker counts, cost."""
    control = _control()
    return control.run(control.list(live_only=not include_stopped))


def cluster_logs(name_or_id: str, since: Optional[float] = None, instance: Optional[str] = None,
                 grep: Optional[str] = None, level: Optional[str] = None, limit: Optional[int] = 1000) -> Any:
    """A cluster's logs by machine (``"Scheduler"``, then each worker's instance id), oldest
    line first: the same records ``coiled-lab logs`` prints, in distributed's ``Logs`` shape
    (what ``cluster.get_logs()`` returns)."""
    from distributed.utils import Log, Logs

    from .logs import LogRecord

    control = _control()
    records = control.run(control.logs(name_or_id, since=since, instance=instance, q=grep, level=level, limit=limit))
    by_instance: dict[str, list[str]] = {}
    for data in records:
        record = LogRecord(**data)
        key = "Scheduler" if record.role == "scheduler" else record.instance
        by_instance.setdefault(key, []).append(record.format())
    return Logs({key: Log("\n".join(lines)) for key, lines in by_instance.items()})


def delete_cluster(name_or_id: str, wait: bool = True) -> dict[str, Any]:
    """Stop a cluster (every machine of it terminates); with ``wait``, return once it has
    stopped. Returns its record."""
    control = _control()
    record = control.run(control.stop(name_or_id))
    if wait and record["status"] not in ("stopped", "error"):
        record = control.run(control.wait(record["id"], ("stopped",), STOP_WAIT))
    return record


def get_notifications(name_or_id: str) -> list[dict[str, Any]]:
    """What coiled-lab told about a cluster (capacity, spot fallbacks, software, shutdown
    soon, idle GPUs, budget), oldest first; kept after the cluster stops."""
    control = _control()
    return control.run(control.notifications(name_or_id))
