"""``ClusterForm()``: the sidebar's new-cluster form, inside a notebook.

Fields are ClusterSpec's; choices come from the backend's catalog; the estimate follows
the fields (debounced); a validation error appears under the field it names. Only the
fields a user filled are sent, so the server's defaults apply to the rest.
"""

from __future__ import annotations

import html
import threading
from concurrent.futures import Future
from typing import Any, Callable, Optional

import ipywidgets as w

from ..environment import Environment, describe_here, for_request
from ..spec import BACKENDS, SPOT_POLICIES, ClusterSpecError, parse_spec
from .cluster import ClusterWidget

DEBOUNCE = 0.4  # seconds of quiet before the estimate is asked for again
# Fields that mean nothing on the local backend (as in the sidebar's form.ts).
CLOUD_ONLY = ("worker_vm_types", "worker_gpu", "spot_policy", "region", "allow_ingress_from")


def _error(text: str) -> str:
    return f'<span style="color:#c62828;font-size:90%">{html.escape(text)}</span>' if text else ""


class ClusterForm(w.VBox):
    def __init__(self, control: Any = None, **defaults: Any):
        from ..control import get_control

        self.control = control if control is not None else get_control()
        spec = parse_spec(defaults)  # the defaults (config + arguments) shown in the fields
        style = {"description_width": "140px"}
        layout = w.Layout(width="420px")
        self.fields: dict[str, w.Widget] = {
            "name": w.Text(placeholder="generated", description="name", style=style, layout=layout),
            "backend": w.Dropdown(options=BACKENDS, value=spec.backend, description="backend", style=style,
                                  layout=layout),
            # Plain IntText: a value out of range goes to the server, which names the field
            # and the bounds (a bounded widget would silently clamp -1 to 0).
            "n_workers": w.IntText(value=spec.n_workers, description="workers", style=style, layout=layout),
            "worker_vm_types": w.SelectMultiple(options=[], description="instance types", rows=5, style=style,
                                                layout=layout),
            "worker_cpu": w.Text(placeholder="any", description="vCPUs per worker", style=style, layout=layout),
            "worker_memory": w.Text(placeholder="any, e.g. 16 GiB", description="memory per worker", style=style,
                                    layout=layout),
            "worker_gpu": w.IntText(value=spec.worker_gpu or 0, description="GPUs per worker", style=style,
                                    layout=layout),
            "spot_policy": w.Dropdown(options=SPOT_POLICIES, value=spec.spot_policy, description="purchase",
                                      style=style, layout=layout),
            "region": w.Dropdown(options=[], description="region", style=style, layout=layout),
            "allow_ingress_from": w.Text(placeholder="me, or a CIDR", description="open to", style=style,
                                         layout=layout),
            "idle_timeout": w.Text(value=_as_text(defaults.get("idle_timeout"), spec.idle_timeout),
                                   description="idle timeout", style=style, layout=layout),
            "tags": w.Text(placeholder="team=geo, project=x", description="tags", style=style, layout=layout),
        }
        self.errors = {name: w.HTML() for name in self.fields}
        self.estimate = w.HTML()
        self.software = w.HTML()  # where a cloud cluster's packages come from: this kernel
        self.create = w.Button(description="Create cluster", button_style="primary", icon="play")
        self.message = w.HTML()
        self.output = w.VBox()
        self.widget: Optional[ClusterWidget] = None
        self._timer: Optional[threading.Timer] = None
        self._touched: set[str] = set()

        for name, field in self.fields.items():
            field.observe(self._changed(name), names="value")
        self.create.on_click(lambda _: self.submit())
        self.rows = {name: w.VBox([field, self.errors[name]]) for name, field in self.fields.items()}
        super().__init__([*self.rows.values(), self.estimate, self.software, w.HBox([self.create, self.message]),
                          self.output])
        self._show_fields()
        # The first catalog and estimate are fetched before the form is shown, so it
        # appears complete; later ones follow the fields in the background.
        self._load_catalog(wait=True)
        self._refresh_estimate(wait=True)
        self._show_software()

    def _show_software(self) -> None:
        """Before Create: that a cloud cluster syncs this kernel's packages (taken on Create)."""
        cloud = self.fields["backend"].value != "local"
        self.software.value = html.escape(f"software: synced from {describe_here()} when you create") if cloud else ""

    def _show_fields(self) -> None:
        """The local backend hides the cloud's fields, as the sidebar's form does."""
        local = self.fields["backend"].value == "local"
        for name in CLOUD_ONLY:
            self.rows[name].layout.display = "none" if local else None

    # -- what the user asked for -----------------------------------------------------
    def spec_fields(self) -> dict[str, Any]:
        """The fields a user set (or that differ from the defaults shown), as ClusterSpec takes them."""
        out: dict[str, Any] = {}
        for name, field in self.fields.items():
            value = field.value
            if name == "worker_vm_types":
                value = list(value) or None
            elif name == "tags":
                value = _tags(value)
            elif name in ("worker_cpu", "worker_memory", "name", "allow_ingress_from"):
                value = value.strip() or None
            elif name == "worker_gpu":
                value = value or None
            if value is not None and (name in self._touched or name in ("backend", "n_workers")):
                out[name] = value
        return out

    def _changed(self, name: str) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            self._touched.add(name)
            self.errors[name].value = ""
            if name == "backend":
                self._load_catalog()
                self._show_software()
                self._show_fields()
            self._debounce()

        return handler

    # -- server round trips ----------------------------------------------------------
    def _call(self, coro, on_result: Callable[[Any], None], wait: bool = False) -> Future:
        future = self.control.thread.submit(coro)
        if wait:
            try:
                future.result(timeout=30)
            except Exception:  # noqa: BLE001 - shown by the callback below, like any failure
                pass

        def done(f: Future) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                on_result(f.result())
            else:
                self.show_error(exc)

        future.add_done_callback(done)
        return future

    def _load_catalog(self, wait: bool = False) -> None:
        backend = self.fields["backend"].value

        def fill(catalog: dict[str, Any]) -> None:
            self.fields["region"].options = [r["name"] for r in catalog.get("regions", [])]
            self.fields["worker_vm_types"].options = [
                (f"{t['name']} — {t['vcpu']} vCPU, {t['memory'] / 2**30:.0f} GiB"
                 + (f", {t['gpu']} GPU" if t.get("gpu") else "")
                 + (f", ${t['price_per_hour']:.3f}/h" if t.get("price_per_hour") is not None else ""), t["name"])
                for t in catalog.get("instance_types", [])
                if backend != "local"
            ]

        self._call(self.control.catalog(backend), fill, wait)

    def _debounce(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(DEBOUNCE, self._refresh_estimate)
        self._timer.daemon = True
        self._timer.start()

    def _refresh_estimate(self, wait: bool = False) -> None:
        def show(est: dict[str, Any]) -> None:
            notes = "".join(f"<li>{html.escape(n)}</li>" for n in est.get("notes", []))
            self.estimate.value = (
                f"<b>${est['per_hour']:.2f}/hour</b> for {est['n_workers']} workers "
                f"<span style='color:#757575'>({html.escape(est['source'])})</span>"
                + (f"<ul>{notes}</ul>" if notes else "")
            )

        try:
            fields = self.spec_fields()
        except ClusterSpecError as exc:
            self.show_error(exc)
            return
        self._call(self.control.estimate(fields), show, wait)

    def submit(self) -> Optional[Future]:
        """Create the cluster; its live widget appears under the form."""
        self.message.value = ""
        for label in self.errors.values():
            label.value = ""
        try:
            fields = self.spec_fields()
        except ClusterSpecError as exc:
            self.show_error(exc)
            return None

        try:  # the kernel's environment, taken here (the form runs in the notebook's kernel)
            environment = for_request(parse_spec(fields))
        except ClusterSpecError as exc:
            self.show_error(exc)
            return None
        if environment is not None:
            env = Environment.from_json(environment)
            self.software.value = html.escape(env.line())

        def created(record: dict[str, Any]) -> None:
            self.widget = ClusterWidget(record["id"], self.control)
            self.output.children = [self.widget]

        return self._call(self.control.create(fields, environment), created)

    def show_error(self, exc: BaseException) -> None:
        field = getattr(exc, "field", None)
        if isinstance(exc, ClusterSpecError) and field in self.errors:
            self.errors[field].value = _error(exc.message)
        else:
            self.message.value = _error(str(exc))


def _tags(text: str) -> Optional[dict[str, str]]:
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            raise ClusterSpecError(f"tags: {pair!r} is not allowed: expected KEY=VALUE pairs separated by commas",
                                   "tags")
    return dict(p.split("=", 1) for p in pairs) or None


def _as_text(given: Any, seconds: Optional[float]) -> str:
    if given is not None:
        return str(given)
    if not seconds:
        return "off"
    return f"{seconds / 60:g}m" if seconds % 60 == 0 else f"{seconds:g}s"
