"""``ClusterForm()``: the sidebar's new-cluster form, inside a notebook.

Built from :func:`coiled_lab.schema.form_schema`, as the sidebar's form is: the same fields,
labels, bounds, choices and defaults, and on each backend the same fields shown (the local
backend hides the cloud's). Choices of region and instance types come from the backend's
catalog; the estimate follows the fields (debounced); an error appears under the field it
names, and on the local backend a worker bigger than this machine gets a warning there.
Only the fields a user filled are sent, so the server's defaults apply to the rest.
"""

from __future__ import annotations

import html
import re
import threading
from concurrent.futures import Future
from typing import Any, Callable, Optional

import ipywidgets as w

from ..environment import Environment, describe_here, for_request
from ..options import key_values
from ..schema import FORM, bounds_error
from ..spec import ClusterSpecError, parse_spec
from .cluster import ClusterWidget

DEBOUNCE = 0.4  # seconds of quiet before the estimate is asked for again
SCHEMA_WAIT = 15.0  # seconds the control plane has to give the schema a form is built from
ALWAYS_SENT = ("backend", "n_workers")
_WHOLE = re.compile(r"^-?[0-9]+$")


def _error(text: str) -> str:
    return f'<span style="color:#c62828;font-size:90%">{html.escape(text)}</span>' if text else ""


def _warning(text: str) -> str:
    return f'<span style="color:#e65100;font-size:90%">{html.escape(text)}</span>' if text else ""


def _nullable(prop: dict[str, Any]) -> bool:
    return any(branch.get("type") == "null" for branch in prop.get("anyOf", []))


def _display(value: Any) -> str:
    """A default as a text field shows it (a tags map as ``k=v, k=v``)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _input(name: str, prop: dict[str, Any], style: dict, layout: w.Layout) -> w.Widget:
    """The widget for one field, from its schema and its :class:`~coiled_lab.schema.FieldUI`.
    Integers are not bounded widgets: those clamp -1 to 0 behind the user's back, where the
    form says at the field what is allowed."""
    ui = FORM[name]
    common = {"description": ui.label, "style": style, "layout": layout}
    default = prop.get("default")
    if ui.widget == "choice":
        return w.Dropdown(options=prop["enum"], value=default, **common)
    if ui.widget in ("region", "zone"):
        return w.Dropdown(options=[(ui.placeholder, "")], value="", **common)
    if ui.widget == "types":
        return w.SelectMultiple(options=[], rows=5, **common)
    if ui.widget == "check":
        return w.Checkbox(value=bool(default), indent=False, **common)
    if ui.widget == "integer" and not _nullable(prop):
        return w.IntText(value=default, **common)
    return w.Text(value=_display(default), placeholder=ui.placeholder, **common)


class ClusterForm(w.VBox):
    def __init__(self, control: Any = None, **defaults: Any):
        from ..connect import get_control

        self.control = control if control is not None else get_control()
        spec = parse_spec(defaults)  # the arguments, checked, over the server's defaults
        self._schemas: dict[str, dict[str, Any]] = {}
        schema = self._schema(spec.backend)
        style = {"description_width": "140px"}
        layout = w.Layout(width="420px")
        self.fields: dict[str, w.Widget] = {
            name: _input(name, schema["properties"][name], style, layout)
            for name in FORM if name in schema["properties"]
        }
        for name, value in defaults.items():  # shown as given (a duration as typed, tags as k=v)
            if name in self.fields:
                field = self.fields[name]
                field.value = _display(value) if isinstance(field, w.Text) else value
        self.errors = {name: w.HTML() for name in self.fields}
        self.warnings = {name: w.HTML() for name in self.fields}
        self.estimate = w.HTML()
        self.software = w.HTML()  # where a cloud cluster's packages come from: this kernel
        self.create = w.Button(description="Create cluster", button_style="primary", icon="play")
        self.message = w.HTML()
        self.output = w.VBox()
        self.widget: Optional[ClusterWidget] = None
        self._timer: Optional[threading.Timer] = None
        self._touched: set[str] = set(defaults) & set(self.fields)
        self._regions: list[dict[str, Any]] = []

        for name, field in self.fields.items():
            field.observe(self._changed(name), names="value")
        self.create.on_click(lambda _: self.submit())
        self.rows = {name: w.VBox([field, self.errors[name], self.warnings[name]])
                     for name, field in self.fields.items()}
        super().__init__([*self.rows.values(), self.estimate, self.software, w.HBox([self.create, self.message]),
                          self.output])
        self._show_fields()
        # The first catalog and estimate are fetched before the form is shown, so it
        # appears complete; later ones follow the fields in the background.
        self._load_catalog(wait=True)
        self._refresh_estimate(wait=True)
        self._show_software()

    @property
    def schema(self) -> dict[str, Any]:
        """The schema of the backend chosen now."""
        return self._schema(self.fields["backend"].value)

    def _schema(self, backend: str) -> dict[str, Any]:
        if backend not in self._schemas:
            # The control plane's: its defaults and limits, not this kernel's dask config.
            self._schemas[backend] = self.control.run(self.control.schema(backend), SCHEMA_WAIT)
        return self._schemas[backend]

    def _show_software(self) -> None:
        """Before Create: that a cloud cluster syncs this kernel's packages (taken on Create)."""
        cloud = self.fields["backend"].value != "local"
        self.software.value = html.escape(f"software: synced from {describe_here()} when you create") if cloud else ""

    def _show_fields(self) -> None:
        """The fields the schema shows on this backend (the local one hides the cloud's), as
        the sidebar's form does."""
        shown = set(self.schema["x-form"])
        for name, row in self.rows.items():
            row.layout.display = None if name in shown else "none"
        self._warn()

    def _warn(self) -> None:
        """On the local backend: a worker asking for more vCPUs or memory than this machine
        has is told at its field. A warning, not an error: the request still goes."""
        for label in self.warnings.values():
            label.value = ""
        here = self.schema.get("x-machine")
        if here is None:
            return
        cpu = self.fields["worker_cpu"].value.strip()
        if _WHOLE.match(cpu) and int(cpu) > here["cpu"]:
            self.warnings["worker_cpu"].value = _warning(
                f"this machine has {here['cpu']} vCPUs: workers asking for {cpu} will share them")
        memory = self.fields["worker_memory"].value.strip()
        try:
            from dask.utils import format_bytes, parse_bytes

            asked = parse_bytes(memory) if memory else 0
        except (ValueError, TypeError, OverflowError):
            asked = 0  # not a size: the field's error says so
        if asked > here["memory"]:
            self.warnings["worker_memory"].value = _warning(
                f"this machine has {format_bytes(here['memory'])} of memory: workers given {memory} each "
                "will swap or be killed")

    # -- what the user asked for -----------------------------------------------------
    def spec_fields(self) -> dict[str, Any]:
        """The shown fields a user set (and the backend and workers), as ClusterSpec takes
        them; ClusterSpecError naming the field when one cannot be read or is out of the
        schema's bounds."""
        schema = self.schema
        out: dict[str, Any] = {}
        for name in schema["x-form"]:
            if not (name in self._touched or name in ALWAYS_SENT):
                continue
            widget = FORM[name].widget
            value = self.fields[name].value
            if widget == "types":
                value = list(value) or None
            elif widget == "pairs":
                value = key_values(value, name) or None
            elif isinstance(value, str):
                value = value.strip() or None
            if widget == "integer" and isinstance(value, str):
                if not _WHOLE.match(value):
                    raise ClusterSpecError(f"{name}: {value!r} is not allowed: expected a whole number", name)
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                problem = bounds_error(schema, name, value)
                if problem:
                    raise ClusterSpecError(problem, name)
            if value is not None:
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
            elif name == "region":
                self._show_zones()
            elif name in ("worker_cpu", "worker_memory"):
                self._warn()
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
        allowed = self.schema["properties"]["region"].get("enum")

        def fill(catalog: dict[str, Any]) -> None:
            self._regions = [r for r in catalog.get("regions", []) if not allowed or r["name"] in allowed]
            self.fields["region"].options = [(FORM["region"].placeholder, ""), *((r["name"], r["name"]) for r in self._regions)]
            self.fields["worker_vm_types"].options = [
                (f"{t['name']} — {t['vcpu']} vCPU, {t['memory'] / 2**30:.0f} GiB"
                 + (f", {t['gpu']} GPU" if t.get("gpu") else "")
                 + (f", ${t['price_per_hour']:.3f}/h" if t.get("price_per_hour") is not None else ""), t["name"])
                for t in catalog.get("instance_types", [])
                if backend != "local"
            ]
            self._show_zones()

        self._call(self.control.catalog(backend), fill, wait)

    def _show_zones(self) -> None:
        region = self.fields["region"].value
        zones = next((r.get("zones", []) for r in self._regions if r["name"] == region), [])
        self.fields["zone"].options = [(FORM["zone"].placeholder, ""), *((z, z) for z in zones)]

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
            self.estimate.value = ""  # no figure for a request that cannot be made
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
        if isinstance(exc, ClusterSpecError) and field in self.schema["x-form"]:
            self.errors[field].value = _error(exc.message)
        else:
            self.message.value = _error(str(exc))
