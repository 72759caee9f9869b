"""``%coiled`` and ``%%coiled``: the CLI's grammar inside a notebook.

    %load_ext coiled_lab
    cluster = %coiled start 4 --name etl     # waits until running, connects a Client
    %coiled list
    %coiled scale etl 8
    %coiled logs etl --grep error
    %coiled stop etl

    %%coiled                                 # a YAML ClusterSpec in the cell
    n_workers: 8
    idle_timeout: 30m

Options come from ClusterSpec through :mod:`coiled_lab.options` (``%coiled start --help``).
Errors are one line (IPython's UsageError), never a traceback.
"""

from __future__ import annotations

import shlex
from typing import Any, Optional

_clusters: dict[str, Any] = {}  # clusters started from this kernel, by id
_clients: dict[str, Any] = {}  # the Client the magic connected to each of them


def register(ipython) -> None:
    ipython.register_magic_function(coiled, magic_kind="line_cell", magic_name="coiled")


def coiled(line: str, cell: Optional[str] = None):
    """Every failure is the error table's one line (an IPython UsageError, no traceback);
    ``%coiled --debug ...`` raises the exception itself."""
    from IPython.core.error import UsageError

    from .errors import answer
    from .options import HelpShown, describe_error
    from .spec import ClusterSpecError

    try:
        if cell is not None:
            return _cell(line, cell)
        return _line(line)
    except HelpShown:
        return None
    except Exception as exc:  # noqa: BLE001 - told as one line
        if "--debug" in shlex.split(line):
            raise
        told = answer(exc)
        if told is None:
            raise UsageError(f"{type(exc).__name__}: {exc} (a bug in coiled-lab: `%coiled --debug ...` shows "
                             "where)") from None
        raise UsageError(describe_error(exc) if isinstance(exc, ClusterSpecError) else told.message) from None


def _line(line: str):
    from .options import build_parser, spec_fields

    ns = build_parser("%coiled", cli=False).parse_args(shlex.split(line))
    if ns.command == "start":
        return _start(spec_fields(ns), wait=not ns.no_wait, client=not ns.no_client)
    return {
        "list": _list, "status": _status, "scale": _scale, "stop": _stop, "logs": _logs,
        "estimate": _estimate, "dashboard": _dashboard, "notifications": _notifications, "env": _env,
    }[ns.command](ns)


def _cell(line: str, cell: str):
    """``%%coiled [--no-client]`` with a YAML mapping of ClusterSpec fields in the cell."""
    import yaml

    from .options import UsageError
    from .spec import ClusterSpecError

    flags = shlex.split(line)
    unknown = [f for f in flags if f not in ("--no-client", "--debug")]
    if unknown:
        raise UsageError(f"%%coiled: unknown option {unknown[0]!r}; allowed: --no-client, --debug")
    try:
        fields = yaml.safe_load(cell) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"%%coiled: the cell is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(fields, dict):
        raise ClusterSpecError("%%coiled: the cell must be a YAML mapping of cluster fields", None)
    return _start(fields, wait=True, client="--no-client" not in flags)


def _start(fields: dict[str, Any], wait: bool, client: bool):
    from .cluster import Cluster
    from .environment import for_request
    from .spec import parse_spec

    environment = for_request(parse_spec(fields))  # one-line error before anything starts
    control = _control()
    record = control.run(control.create(fields, environment))
    if not wait:
        print(f"cluster {record['name']} ({record['id']}) requested; `%coiled status {record['name']}` to follow")
        return None
    _show_widget(record["id"], control)  # live progress while the cluster starts
    cluster = Cluster(name=record["name"], control=control)
    _clusters[cluster.cluster_id] = cluster
    if client:
        # Becomes the default client for dask in this kernel.
        _clients[cluster.cluster_id] = cluster.get_client()
    return cluster


def _show_widget(cluster_id: str, control) -> None:
    """Display the live cluster widget when a front end can show widgets."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return  # a terminal IPython: the returned Cluster's repr says enough
    from .widgets import ClusterWidget

    display(ClusterWidget(cluster_id, control))


def _control():
    from .connect import get_control

    return get_control()


def _show(renderable) -> None:
    from rich.console import Console

    Console(soft_wrap=True).print(renderable)


def _list(ns) -> None:
    from .display import clusters_table

    control = _control()
    clusters = control.run(control.list(live_only=not ns.all))
    if not clusters:
        print("no clusters" + ("" if ns.all else " running (--all shows stopped ones)"))
        return
    _show(clusters_table(clusters))


def _status(ns) -> dict[str, Any]:
    from .display import cluster_detail

    control = _control()
    record = control.run(control.get(ns.name))
    _show(cluster_detail(record, control.dashboard_url(record)))
    return None


def _estimate(ns) -> dict[str, Any]:
    from .display import estimate_table
    from .options import spec_fields

    control = _control()
    est = control.run(control.estimate(spec_fields(ns)))
    _show(estimate_table(est))
    return None


def _env(ns) -> None:
    """What a cluster started from this kernel would sync (``coiled-lab env``'s text)."""
    from .display import environment_text
    from .environment import describe_here, snapshot

    control = _control()
    env = snapshot(describe_here(), include=ns.include, exclude=ns.exclude)
    built = control.run(control.environment(env.hash, ns.backend or _default_backend(), ns.region))["built"]
    _show(environment_text(env.summary(), built, ns.backend or _default_backend()))


def _default_backend() -> str:
    from . import config

    return config.get("cluster.backend")


def _notifications(ns) -> None:
    from .display import notifications_lines

    control = _control()
    lines = notifications_lines(control.run(control.notifications(ns.name)))
    for line in lines:
        _show(line)
    if not lines:
        print("no notifications")


def _dashboard(ns) -> Optional[str]:
    """Show the dashboard link (through the Jupyter server when there is one); return it."""
    from .errors import Conflict

    control = _control()
    record = control.run(control.get(ns.name))
    link = control.dashboard_url(record)
    if not link:
        raise Conflict(f"cluster {record['name']!r} is {record['status']}; it has no dashboard now")
    try:
        from IPython.display import HTML, display

        display(HTML(f'<a href="{link}" target="_blank">Dask dashboard of {record["name"]}</a>'))
    except ImportError:
        print(link)
    return link


def _scale(ns) -> None:
    control = _control()
    record = control.run(control.scale(ns.name, ns.n_workers))
    if ns.wait:
        record = control.run(control.wait(record["id"], ("running",)))
    print(f"{record['name']}: {record['status']}, {record['workers']['target']} workers wanted")


def _stop(ns) -> None:
    control = _control()
    record = control.run(control.get(ns.name))
    client, cluster = _clients.pop(record["id"], None), _clusters.pop(record["id"], None)
    if client is not None:
        client.close()
    record = control.run(control.stop(record["id"]))
    if not ns.no_wait:
        record = control.run(control.wait(record["id"], ("stopped",)))
    if cluster is not None:
        cluster.shutdown_on_close = False
        cluster.close()
    print(f"{record['name']}: {record['status']}")


def _logs(ns) -> None:
    from .logs import LogRecord, follow, since_from

    control = _control()
    since = since_from(ns.since) if ns.since else None
    filters = {"instance": ns.instance, "q": ns.grep, "level": ns.level}
    if ns.follow:
        try:
            control.run(follow(control, ns.name, lambda r: print(r.format(), flush=True), since, **filters))
        except KeyboardInterrupt:
            pass
        return
    for r in control.run(control.logs(ns.name, since=since, limit=ns.limit, **filters)):
        print(LogRecord(**r).format())
