"""The live cluster widget: what ``display(cluster)`` and ``%coiled start`` show.

Standard ipywidgets 8 controls only, so it renders in JupyterLab, Notebook 7 and VS Code
without a front-end extension of its own. It follows the control plane's event stream
(state, progress, cost, lifetime) instead of polling; between two events the cost and the
time left are advanced locally from the last record. A ``lifetime`` event (work, a client
connecting or leaving, a timeout edited) carries the new time left, which restarts the
countdown: the widget never counts down from a stale reading.
"""

from __future__ import annotations

import asyncio
import html
import threading
import time
import urllib.parse
from concurrent.futures import Future
from typing import Any, Optional

import ipywidgets as w

from .. import utc
from ..display import STATUS_STYLE, stops_in
from ..logs import LogRecord, follow
from ..pricing import extrapolate

_COLORS = {"green": "#2e7d32", "yellow": "#b26a00", "cyan": "#00838f", "magenta": "#8e24aa", "dim": "#757575",
           "bold red": "#c62828"}
MAX_LOG_LINES = 500
PLOT_REFRESH = 30.0  # seconds between two reloads of the usage plot (on events)


def log_line(rec: LogRecord) -> str:
    """A log line as the lab's log viewer shows it: ``scheduler``, ``worker-<id>``, the
    role alone where the instance is named after it (a local scheduler), not
    ``scheduler-scheduler``."""
    source = rec.role if rec.instance in ("", rec.role) else f"{rec.role}-{rec.instance}"
    return f"{utc.clock(rec.time)} {source} {rec.level:<7} {rec.message}"


def _badge(status: str) -> str:
    color = _COLORS.get(STATUS_STYLE.get(status, ""), "#757575")
    return (f'<span style="background:{color};color:white;border-radius:4px;padding:1px 6px;'
            f'font-size:90%">{html.escape(status)}</span>')


class ClusterWidget(w.VBox):
    """State, workers k/N, $/hour and cost so far, time left, dashboard link, scale, stop, logs."""

    def __init__(self, cluster_id: str, control: Any, show_logs: bool = True):
        self.cluster_id = cluster_id
        self.control = control
        self.record: dict[str, Any] = {}
        self._fetched_at = time.time()
        self._tasks: list[Future] = []
        # update() runs on the control's thread, state() in the kernel's: a record is shown
        # whole (status, counts, buttons) before anyone reads what the widget shows.
        self._lock = threading.Lock()

        self.header = w.HTML()
        self.progress = w.IntProgress(min=0, max=1, value=0, description="workers", bar_style="info")
        self.counts = w.Label()
        self.cost = w.HTML()
        self.stops = w.Label()
        self.dashboard = w.HTML()
        self.scale_to = w.BoundedIntText(min=0, max=10_000, description="workers", layout=w.Layout(width="180px"))
        self.scale_button = w.Button(description="Scale", icon="arrows-v")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop")
        self.message = w.HTML()
        self.software = w.HTML()  # "software: synced from ... (N packages, M local, built)"
        self.usage = w.HTML()
        self._usage_loaded_at = 0.0
        self.logs = w.Textarea(layout=w.Layout(width="100%", height="180px"), disabled=True)
        self.follow = w.Checkbox(value=True, description="follow logs", indent=False)

        self.scale_button.on_click(lambda _: self._act(self.control.scale(self.cluster_id, self.scale_to.value)))
        self.stop_button.on_click(lambda _: self._act(self.control.stop(self.cluster_id)))
        self.follow.observe(lambda change: self._follow_logs() if change["new"] else None, names="value")

        children = [
            self.header,
            w.HBox([self.progress, self.counts]),
            w.HBox([self.cost, w.HTML("&nbsp;·&nbsp;"), self.stops, w.HTML("&nbsp;·&nbsp;"), self.dashboard]),
            w.HBox([self.scale_to, self.scale_button, self.stop_button]),
            self.software,
            self.message,
            self.usage,
        ]
        if show_logs:
            children += [self.follow, self.logs]
        super().__init__(children)
        self.start(show_logs)

    # -- background work on the control's loop ------------------------------------------
    def start(self, show_logs: bool) -> None:
        self._tasks.append(self.control.thread.submit(self._follow_events()))
        self._tasks.append(self.control.thread.submit(self._tick()))
        if show_logs:
            self._follow_logs()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        super().close()

    async def _follow_events(self) -> None:
        self.update(await self.control.get(self.cluster_id))
        for note in await self.control.notifications(self.cluster_id):
            self._notified(note)
        async for event in self.control.events(self.cluster_id):
            if event.kind == "notification":
                self._notified(event.data)
            if event.kind == "lifetime" and self.record:
                self.update({**self.record, "time_left": event.data})
            else:
                self.update(await self.control.get(self.cluster_id))

    def _notified(self, note: dict[str, Any]) -> None:
        """The latest word on where the cluster's software comes from, as one line."""
        if note.get("kind") == "software":
            colour = "#c62828" if note.get("level") == "error" else "#ef6c00" if note.get("level") == "warning" else ""
            text = html.escape(note["message"])
            self.software.value = f'<span style="color:{colour}">{text}</span>' if colour else text

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(5)
            if self.record.get("status") in ("stopped", "error"):
                return
            self._render_clocks()

    def _follow_logs(self) -> None:
        def emit(rec: LogRecord) -> None:
            lines = (self.logs.value.splitlines() + [log_line(rec)])[-MAX_LOG_LINES:]
            self.logs.value = "\n".join(lines)

        async def run() -> None:
            try:
                await follow(self.control, self.cluster_id, emit, interval=2.0)
            finally:
                self.follow.value = False

        self._tasks.append(self.control.thread.submit(run()))

    def _act(self, coro) -> None:
        """Run a button's request; show its error under the buttons."""
        self.message.value = ""
        future = self.control.thread.submit(coro)

        def done(f: Future) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self.message.value = f'<span style="color:#c62828">{html.escape(str(exc))}</span>'

        future.add_done_callback(done)

    # -- rendering -------------------------------------------------------------------
    def update(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._update(record)

    def _update(self, record: dict[str, Any]) -> None:
        self.record, self._fetched_at = record, time.time()
        workers = record["workers"]
        status = record["status"]
        message = f" — {html.escape(record['message'])}" if record.get("message") else ""
        self.header.value = (f"<b>{html.escape(record['name'])}</b> on {html.escape(record['backend'])} "
                             f"{_badge(status)}{message}")
        self.progress.max = max(1, workers["target"])
        self.progress.value = min(workers["ready"], self.progress.max)
        self.progress.bar_style = {"running": "success", "error": "danger"}.get(status, "info")
        self.counts.value = f"{workers['ready']}/{workers['target']} ready"
        if not self.scale_to.value or status in ("running", "scaling"):
            self.scale_to.value = workers["target"]
        link = self.control.dashboard_url(record)
        self.dashboard.value = f'<a href="{html.escape(link)}" target="_blank">dashboard</a>' if link else ""
        live = status not in ("stopped", "error")
        self._render_usage(live)
        self.scale_button.disabled = self.stop_button.disabled = self.scale_to.disabled = not live
        self._render_clocks()

    def usage_plot_url(self) -> Optional[str]:
        """The server's usage plot page (coiled_lab.usage_plot), as a path on the Jupyter
        server the browser shows; None without a server (nothing serves the page then)."""
        server = getattr(self.control, "server_url", None)
        if not server:
            return None
        base = urllib.parse.urlsplit(server).path
        return f"{base}coiled-lab/api/clusters/{urllib.parse.quote(self.cluster_id, safe='')}/usage/plot"

    def _render_usage(self, live: bool) -> None:
        """The usage plots in an iframe of the server's page, reloaded at most every
        PLOT_REFRESH seconds, when an event updates the widget."""
        url = self.usage_plot_url()
        if url is None or not live:
            self.usage.value = ""
            return
        if time.time() - self._usage_loaded_at < PLOT_REFRESH and self.usage.value:
            return
        self._usage_loaded_at = time.time()
        src = f"{url}?t={int(self._usage_loaded_at)}"
        self.usage.value = (f'<iframe class="coiled-lab-usage" src="{html.escape(src)}" title="usage" '
                            'style="width:100%;height:400px;border:0" loading="lazy"></iframe>')

    def _render_clocks(self) -> None:
        record = self.record
        cost = extrapolate(record.get("cost")) if record.get("status") not in ("stopped", "error") else record.get("cost")
        if cost and cost.get("accrued") is None:
            self.cost.value = "cost unknown"
        elif cost:
            self.cost.value = f"${cost['per_hour']:.2f}/hour · ${cost['accrued']:.2f} so far"
        elapsed = time.time() - self._fetched_at
        left = {k: (v - elapsed if v is not None else None) for k, v in (record.get("time_left") or {}).items()}
        self.stops.value = f"stops in: {stops_in({'time_left': left})}" if left else ""

    def state(self) -> dict[str, Any]:
        """What the widget shows, for tests and for ``repr``."""
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        return {
            "status": self.record.get("status"),
            "ready": self.progress.value,
            "target": self.progress.max,
            "counts": self.counts.value,
            "cost": self.cost.value,
        }

    def __repr__(self) -> str:
        s = self.state()
        return f"<ClusterWidget {self.record.get('name')}: {s['status']}, {s['counts']}>"
