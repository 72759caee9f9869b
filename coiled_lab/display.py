"""How clusters look in a terminal and in a notebook (rich renders in both)."""

from __future__ import annotations

import time
from typing import Any, Optional

STATUS_STYLE = {
    "pending": "yellow", "provisioning": "yellow", "running": "green", "scaling": "cyan",
    "stopping": "magenta", "stopped": "dim", "error": "bold red",
}


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def stops_in(cluster: dict[str, Any]) -> str:
    """The soonest of the cluster's timeouts, e.g. 'idle 18m'."""
    left = {k: v for k, v in (cluster.get("time_left") or {}).items() if v is not None}
    if not left:
        return "-"
    field, seconds = min(left.items(), key=lambda kv: kv[1])
    label = {"idle_timeout": "idle", "no_client_timeout": "no client", "max_lifetime": "lifetime"}[field]
    return f"{label} {duration(seconds)}"


def clusters_table(clusters: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title=None, show_lines=False, header_style="bold")
    for column in ("name", "id", "backend", "status", "workers", "age", "stops in"):
        table.add_column(column)
    now = time.time()
    for c in clusters:
        w = c["workers"]
        status = f"[{STATUS_STYLE.get(c['status'], '')}]{c['status']}[/]"
        table.add_row(
            c["name"], c["id"], c["backend"], status, f"{w['ready']}/{w['target']}",
            duration((c.get("stopped_at") or now) - c["created_at"]), stops_in(c),
        )
    return table


def cluster_detail(c: dict[str, Any], dashboard: Optional[str] = None):
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    w = c["workers"]
    rows = [
        ("name", c["name"]), ("id", c["id"]), ("backend", c["backend"]),
        ("status", f"[{STATUS_STYLE.get(c['status'], '')}]{c['status']}[/]"),
        ("workers", f"{w['ready']} ready, {w['launched']} launched, {w['target']} wanted"),
        ("scheduler", c.get("scheduler_address") or "-"),
        ("dashboard", dashboard or "-"),
        ("stops in", stops_in(c)),
    ]
    if c.get("message"):
        rows.append(("message", c["message"]))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", str(value))
    return table


def progress_line(event) -> Optional[str]:
    """One human line for a state or progress event (None for events not worth a line)."""
    d = event.data
    if event.kind == "state":
        text = d["status"]
        return text + (f": {d['message']}" if d.get("message") else "")
    if event.kind == "progress":
        if d["step"] == "workers":
            return f"workers {d['ready']}/{d['target']} ready ({d['launched']} launched)"
        return f"starting {d['step']}"
    return None


def estimate_table(est: dict[str, Any]):
    """An estimate (from :func:`coiled_lab.pricing.estimate`) as a small table."""
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    rows = [
        ("per hour", f"[bold]${est['per_hour']:.2f}[/] {est['currency']}"),
        ("workers", f"{est['n_workers']} x ${est['worker_each']:.4f} = ${est['workers']:.2f}"),
        ("scheduler", f"${est['scheduler']:.2f}"),
        ("storage", f"${est['storage']:.2f}"),
        ("source", str(est["source"])),
    ]
    if est.get("spot_savings"):
        rows.insert(2, ("spot saves", f"${est['spot_savings']:.2f}/hour"))
    for note in est.get("notes") or []:
        rows.append(("note", note))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    return table


def notifications_lines(notes: list[dict[str, Any]]) -> list[str]:
    """One line per notification: time (UTC), level, message."""
    from .utc import stamp

    style = {"error": "bold red", "warning": "yellow", "info": ""}
    return [
        f"{stamp(n['time'])} "
        f"[{style.get(n['level'], '')}]{n['level']:<7}[/] {n['message']}"
        for n in notes
    ]


def environment_text(env: dict[str, Any], built: Optional[bool], backend: str) -> str:
    """``coiled-lab env`` / ``%coiled env``: what package sync sends from here (a
    :meth:`~coiled_lab.environment.Environment.summary`) and whether ``backend`` has it built."""
    lines = [f"software from {env['where']}",
             f"  python {env['python']} on {env['platform']}: {env['packages']} packages, {env['pinned']} from the "
             f"package index, {len(env['local'])} local"]
    for name, size in env["wheels"].items():
        lines.append(f"  local wheel {name} ({size / 1024:.1f} KiB)")
    lines.append(f"  files of the working directory: {env['files']} ({env['files_bytes'] / 1024:.1f} KiB packed)")
    for item in env["skipped"]:
        lines.append(f"  skipped {item['item']}: {item['reason']}")
    if env["conda_only"]:
        lines.append(f"  conda packages not on the package index (not installed on the VMs): "
                     f"{', '.join(env['conda_only'])}")
    if env["environ"]:
        lines.append(f"  environment variables: {', '.join(env['environ'])}")
    state = {True: "built: clusters mount it", False: "not built yet: the first cluster builds and uploads it",
             None: "no environment bucket: every VM installs it" if backend != "local" else
             "the local backend runs the Jupyter server's own environment"}[built]
    lines.append(f"  environment {env['hash']} on {backend}: {state}")
    return "\n".join(lines)
