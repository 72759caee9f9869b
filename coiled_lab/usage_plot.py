"""Small plots of how a running cluster is used: workers ready vs target, CPU (and GPU)
utilisation, and dollars accrued, from the scheduler-side watchdog's samples.

Why it is built this way:
- The figure is made here, in Python with bokeh, and served by the Jupyter server as one
  standalone HTML page (``GET /coiled-lab/api/clusters/{id}/usage/plot``). The sidebar and
  the notebook widget both show that page in an iframe, so there is one plot to maintain
  and the lab extension bundles no plotting library (BokehJS would triple its size).
- BokehJS is INLINED into the page: there is no internet (no CDN), and the Jupyter server
  serves no bokeh static files. Only bokeh's core bundle is inlined (no widgets, tables
  or WebGL), and the page is built only when a user opens a cluster's usage view.
- BokehJS's core alone is 1.3 MB; the route sends the page gzipped (about a quarter of
  that) and an empty page (no samples yet) without BokehJS at all.
- The page is a snapshot: the views load it again to refresh it (every cost event, at
  most every ``coiled-lab.manager.cost-interval``); nothing polls in the background.
- Dollars accrued over time are drawn from the cluster record's cost (what it has cost so
  far, and its current $/hour): before the latest cost, back at the current rate, so a
  cluster that was rescaled shows an approximate slope, clearly labelled as such.
"""

from __future__ import annotations

import html
import time
from typing import Any, Optional

from .utc import stamp

HEIGHT = 120


def series(record: dict[str, Any], usage: dict[str, Any]) -> dict[str, list[Any]]:
    """The plotted columns, from the watchdog's samples (oldest first) and the record."""
    samples = usage.get("samples") or []
    target = (record.get("workers") or {}).get("target", 0)
    cost = record.get("cost") or None
    if cost and cost.get("accrued") is None:  # unknown: no dollars drawn
        cost = None
    out: dict[str, list[Any]] = {"time": [], "workers": [], "target": [], "cpu": [], "gpu": [], "dollars": []}
    for s in samples:
        workers = list((s.get("per_worker") or {}).values())
        cpus = [w["cpu"] for w in workers if w.get("cpu") is not None]
        gpus = [w["gpu"] for w in workers if w.get("gpu") is not None]
        out["time"].append(s["time"] * 1000.0)  # bokeh's datetime axis counts milliseconds
        out["workers"].append(s.get("workers", 0))
        out["target"].append(target)
        out["cpu"].append(sum(cpus) / len(cpus) if cpus else float("nan"))
        out["gpu"].append(sum(gpus) / len(gpus) if gpus else float("nan"))
        if cost:
            dollars = cost["accrued"] - cost["per_hour"] * (cost["as_of"] - s["time"]) / 3600.0
            out["dollars"].append(max(0.0, dollars))
        else:
            out["dollars"].append(float("nan"))
    return out


def figures(record: dict[str, Any], usage: dict[str, Any]):
    """The bokeh layout: three small stacked plots sharing one time axis."""
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource, DatetimeTickFormatter, FixedTicker, NumeralTickFormatter, Range1d
    from bokeh.plotting import figure

    data = series(record, usage)
    source = ColumnDataSource(data)
    first, last = data["time"][0], data["time"][-1]
    # At least a minute wide, so a young cluster's few samples do not stretch over the axis.
    x_range = Range1d(min(first, last - 60_000), last + 5_000)
    common = dict(height=HEIGHT, sizing_mode="stretch_width", x_axis_type="datetime", x_range=x_range,
                  toolbar_location=None, min_border_left=40)

    workers = figure(title="Workers: ready vs target", **common)
    workers.step("time", "target", source=source, mode="after", line_dash="dashed", color="gray", legend_label="target")
    workers.step("time", "workers", source=source, mode="after", line_width=2, legend_label="ready")
    workers.scatter("time", "workers", source=source, size=3)
    top = max(data["workers"] + data["target"] + [1])
    workers.y_range = Range1d(0, top * 1.25)
    step = max(1, -(-top // 3))
    workers.yaxis.ticker = FixedTicker(ticks=list(range(0, top + step, step)))

    util = figure(title="Utilisation, mean per worker (%)", **common)
    util.line("time", "cpu", source=source, line_width=2, legend_label="CPU")
    util.scatter("time", "cpu", source=source, size=3)
    if any(v == v for v in data["gpu"]):  # NaN != NaN: GPU only when a worker has one
        util.line("time", "gpu", source=source, line_width=2, color="green", legend_label="GPU")
        util.scatter("time", "gpu", source=source, size=3, color="green")
    util.y_range = Range1d(0, max([v for v in data["cpu"] + data["gpu"] if v == v] + [100]) * 1.1)

    cost = record.get("cost") or {}
    title = "$ accrued"
    if cost and cost.get("accrued") is None:
        title += " (unknown: a price is not known)"
    elif cost:
        title += f" (≈ back from ${cost['accrued']:.2f} at ${cost['per_hour']:.2f}/hour)"
    dollars = figure(title=title, **common)
    dollars.line("time", "dollars", source=source, line_width=2, color="darkorange")
    dollars.y_range = Range1d(0, max([v for v in data["dollars"] if v == v] + [0.01]) * 1.25)
    dollars.yaxis.formatter = NumeralTickFormatter(format="$0.00[0]")
    dollars.yaxis.ticker.desired_num_ticks = 3

    clock = DatetimeTickFormatter(seconds="%H:%M:%S", minsec="%H:%M:%S", minutes="%H:%M", hourmin="%H:%M",
                                  hours="%H:%M", context=None)
    for fig in (workers, util, dollars):
        fig.title.text_font_size = "9pt"
        fig.axis.major_label_text_font_size = "8pt"
        fig.xaxis.formatter = clock
        fig.xaxis.ticker.desired_num_ticks = 4
        fig.yaxis.minor_tick_line_color = None
    for fig in (workers, util):  # dollars has one line and no legend
        fig.legend.location = "top_left"
        fig.legend.orientation = "horizontal"
        fig.legend.label_text_font_size = "8pt"
        fig.legend.background_fill_alpha = 0.5
        fig.legend.padding = 2
        fig.legend.margin = 2
    return column(workers, util, dollars, sizing_mode="stretch_width")


def html_page(record: dict[str, Any], usage: dict[str, Any], now: Optional[float] = None) -> str:
    """A standalone HTML page with BokehJS inlined (no CDN, no other request)."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    title = f"{record.get('name', 'cluster')}: usage at {stamp(time.time() if now is None else now)}"
    if not usage.get("samples"):  # nothing to plot: no need for 1.3 MB of BokehJS either
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
                "<body style='font: 12px sans-serif; color: #777'>No usage samples yet: the scheduler's "
                "watchdog takes one every few seconds.</body></html>")
    return file_html(figures(record, usage), INLINE, title=title)
