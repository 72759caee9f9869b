"""``coiled-lab``: start, list, scale, stop, tail logs and clean up clusters from a shell.

It reaches the control plane like every other front door (:func:`get_control`): the
Jupyter server's API when one is running for this state directory, else a manager in
this process (``store restore`` works on the state directory itself). Every failure is one
line from the error table (:func:`coiled_lab.errors.answer`), the traceback only with
``--debug``. Exit codes: 0 done, 1 the cluster failed (or a bug), 2 bad input, 3 not now
(a conflicting state; a store busy, damaged or not writable; a cloud or server that cannot
be used), 4 no such cluster, 5 over an admin's limit, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, Optional, Sequence

from .errors import EXIT_FAILED, EXIT_INTERRUPTED


def main(argv: Optional[Sequence[str]] = None) -> int:
    from rich.console import Console

    from .options import HelpShown, build_parser

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:  # a long-running server with its own flags and logs (coiled_lab_server.serve)
        return _serve(args[1:])
    # The manager logs retries with their tracebacks; a shell user reads the progress lines
    # and the one-line outcome instead (--debug: everything).
    logging.getLogger("coiled_lab").addHandler(logging.StreamHandler() if "--debug" in args else logging.NullHandler())
    if "--debug" in args:
        logging.getLogger("coiled_lab").setLevel(logging.DEBUG)
    console = Console(highlight=False, soft_wrap=True)
    parser = build_parser("coiled-lab", cli=True)
    try:
        ns = parser.parse_args(args)
        return _dispatch(ns, console)
    except HelpShown:
        return 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure is told as one line (--debug: the traceback)
        if "--debug" in args:
            raise
        return _told(exc)


def _serve(args: list[str]) -> int:
    try:
        from coiled_lab_server.serve import main as serve
    except ImportError as exc:
        print(f"error: coiled-lab serve needs JupyterHub ({exc}); pip install 'coiled-lab[serve]'", file=sys.stderr)
        return EXIT_FAILED
    return serve(args)


def _told(exc: BaseException) -> int:
    """Print the one line the error table has for ``exc``; return its exit code."""
    from rich.console import Console

    from .errors import answer
    from .options import describe_error
    from .spec import ClusterSpecError

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    told = answer(exc)
    if told is None:
        err.print(f"error: {type(exc).__name__}: {exc} (a bug in coiled-lab: `coiled-lab --debug ...` shows where)",
                  style="red", markup=False)
        return EXIT_FAILED
    message = describe_error(exc) if isinstance(exc, ClusterSpecError) else told.message
    err.print(f"{'failed' if told.code == 'cluster_failed' else 'error'}: {message}", style="red", markup=False)
    return told.exit


def _dispatch(ns, console) -> int:
    from .connect import get_control

    if ns.command == "setup":
        return _setup_gcp(ns, console) if ns.cloud == "gcp" else _setup_aws(ns, console)
    if ns.command == "store":
        return _store_restore(ns, console)
    control = get_control()
    handler = {
        "start": _start, "estimate": _estimate, "dashboard": _dashboard, "list": _list, "status": _status,
        "notifications": _notifications, "env": _env,
        "scale": _scale, "stop": _stop, "logs": _logs, "cleanup": _cleanup,
    }[ns.command]
    return control.run(handler(control, ns, console))


def _print_json(console, data: Any) -> None:
    console.print_json(json.dumps(data))


async def _follow_until(control, cluster_id: str, states: tuple[str, ...], console, timeout: Optional[float] = None):
    """Print each state/progress event until the cluster reaches ``states``; return it."""
    from .display import progress_line

    started = time.monotonic()

    async def printer():
        async for event in control.events(cluster_id):
            line = progress_line(event)
            if line:
                console.print(f"[dim]{time.monotonic() - started:6.1f}s[/] {line}")

    if console is None:
        return await control.wait(cluster_id, states, timeout)
    task = asyncio.ensure_future(printer())
    try:
        return await control.wait(cluster_id, states, timeout)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _start(control, ns, console) -> int:
    from .display import cluster_detail
    from .environment import for_request
    from .errors import ClusterError
    from .options import spec_fields
    from .spec import parse_spec

    fields = spec_fields(ns)
    spec = parse_spec(fields)  # bad input stops here, before any request
    environment = await asyncio.to_thread(for_request, spec, f"the coiled-lab CLI ({sys.executable})")
    # What was typed, in the spec's own names (2:10 also set adaptive; --compute-purchase-option is spot_policy).
    record = await control.create(spec.model_dump(mode="json", include=spec.model_fields_set), environment)
    if not ns.json:
        console.print(f"cluster [bold]{record['name']}[/] ({record['id']}) requested on {record['backend']}")
    if not ns.no_wait:
        record = await _follow_until(control, record["id"], ("running",), None if ns.json else console)
    if ns.json:
        _print_json(console, record)
    else:
        console.print(cluster_detail(record, control.dashboard_url(record)))
    if record["status"] == "error":
        raise ClusterError(record.get("message") or "cluster failed")
    return 0


async def _env(control, ns, console) -> int:
    """What a cluster started from this interpreter would sync, and whether it is built."""
    from . import config
    from .display import environment_text
    from .environment import snapshot

    backend = ns.backend or config.get("cluster.backend")
    env = await asyncio.to_thread(snapshot, f"the coiled-lab CLI ({sys.executable})", None, ns.include, ns.exclude)
    built = (await control.environment(env.hash, backend, ns.region))["built"]
    if ns.json:
        _print_json(console, {**env.summary(), "backend": backend, "built": built})
    else:
        console.print(environment_text(env.summary(), built, backend))
    return 0


async def _estimate(control, ns, console) -> int:
    from .display import estimate_table
    from .options import spec_fields

    est = await control.estimate(spec_fields(ns))
    if ns.json:
        _print_json(console, est)
    else:
        console.print(estimate_table(est))
    return 0


async def _notifications(control, ns, console) -> int:
    from .display import notifications_lines

    lines = notifications_lines(await control.notifications(ns.name))
    for line in lines:
        console.print(line)
    if not lines:
        console.print("no notifications")
    return 0


async def _dashboard(control, ns, console) -> int:
    record = await control.get(ns.name)
    link = control.dashboard_url(record)
    if not link:
        from .errors import Conflict

        raise Conflict(f"cluster {record['name']!r} is {record['status']}; it has no dashboard now")
    console.print(link)
    return 0


async def _list(control, ns, console) -> int:
    from .display import clusters_table

    clusters = await control.list(live_only=not ns.all)
    if ns.json:
        _print_json(console, clusters)
    elif not clusters:
        console.print("no clusters" + ("" if ns.all else " running (--all shows stopped ones)"))
    else:
        console.print(clusters_table(clusters))
    return 0


async def _status(control, ns, console) -> int:
    from .display import cluster_detail

    record = await control.get(ns.name)
    if ns.json:
        _print_json(console, record)
    else:
        console.print(cluster_detail(record, control.dashboard_url(record)))
    return 0


async def _scale(control, ns, console) -> int:
    record = await control.scale(ns.name, ns.n_workers)
    if ns.wait:
        record = await _follow_until(control, record["id"], ("running",), None if ns.json else console)
    if ns.json:
        _print_json(console, record)
    else:
        console.print(f"{record['name']}: {record['status']}, {record['workers']['target']} workers wanted")
    return 0


async def _stop(control, ns, console) -> int:
    record = await control.stop(ns.name)
    if not ns.no_wait:
        record = await _follow_until(control, record["id"], ("stopped",), None if ns.json else console)
    if ns.json:
        _print_json(console, record)
    else:
        console.print(f"{record['name']}: {record['status']}")
    return 0 if record["status"] in ("stopped", "stopping") else EXIT_FAILED


async def _logs(control, ns, console) -> int:
    from .logs import LogRecord, follow, since_from

    since = since_from(ns.since) if ns.since else None
    filters = {"instance": ns.instance, "q": ns.grep, "level": ns.level}
    if ns.follow:
        await follow(control, ns.name, lambda r: console.print(r.format(), markup=False), since, **filters)
        return 0
    for r in await control.logs(ns.name, since=since, limit=ns.limit, **filters):
        console.print(LogRecord(**r).format(), markup=False)
    return 0


async def _cleanup(control, ns, console) -> int:
    """Each backend on its own: one that cannot be reached is told (exit status
    EXIT_FAILED) and the others are still cleaned."""
    result = await control.cleanup(dry_run=ns.dry_run)
    verb = "would stop" if ns.dry_run else "stopped"
    for item in result["found"]:
        console.print(f"{verb} {len(item['instances'])} instance(s) of {item['name']} ({item['id']})")
    found = list(result["found"])
    failed = [e["error"] for e in result["errors"]]  # each names its backend
    for cloud, sweep in (("aws", _cleanup_aws), ("gcp", _cleanup_gcp)):
        try:
            found += await sweep(control, ns, console)
        except Exception as exc:  # noqa: BLE001 - one cloud's failure must not stop the other's sweep
            failed.append(f"{cloud}'s tagged resources were not swept ({type(exc).__name__}: {exc}); "
                          "run cleanup again once its cloud answers")
    for line in failed:
        console.print(line, markup=False)
    if not found and not failed:
        console.print("nothing to clean up")
    return EXIT_FAILED if failed else 0


async def _cleanup_aws(control, ns, console) -> list:
    """AWS resources tagged with this store's clusters that are not live, found by tag."""
    from . import config

    clusters = await control.list(live_only=False)
    regions = set(ns.aws_region or ()) | {
        c["spec"].get("region") or config.get("aws.region") for c in clusters if c["backend"] == "aws"}
    if not regions:
        return []
    from .backends.aws.session import AWSSession
    from .backends.aws.sweep import sweep
    from .backends.base import owner_id

    live = {c["id"] for c in clusters if c["status"] not in ("stopped", "error")}
    aws, found = AWSSession(), []
    for region in sorted(regions):
        for item in await sweep(aws, region, owner_id(config.state_dir()), live, ns.dry_run):
            what = ", ".join(f"{len(item[key])} {label}(s)" for key, label in
                             (("instances", "instance"), ("templates", "launch template"), ("volumes", "volume"))
                             if item[key])
            console.print(f"{'would remove' if ns.dry_run else 'removed'} {what} of cluster {item['id']} "
                          f"in {region}")
            found.append(item)
    return found


async def _cleanup_gcp(control, ns, console) -> list:
    """GCE VMs labelled with this store's clusters that are not live, found by label."""
    from . import config

    clusters = await control.list(live_only=False)
    regions = set(ns.gcp_region or ()) | {
        c["spec"].get("region") or config.get("gcp.region") for c in clusters if c["backend"] == "gcp"}
    if not regions:
        return []
    from .backends.base import owner_id
    from .backends.gcp.session import GCPSession
    from .backends.gcp.sweep import sweep

    live = {c["id"] for c in clusters if c["status"] not in ("stopped", "error")}
    gcp, found = GCPSession(), []
    for region in sorted(regions):
        for item in await sweep(gcp, region, owner_id(config.state_dir()), live, ns.dry_run):
            console.print(f"{'would remove' if ns.dry_run else 'removed'} {len(item['instances'])} VM(s) of cluster "
                          f"{item['id']} in {region}")
            found.append(item)
    return found


def _store_restore(ns, console) -> int:
    """``coiled-lab store restore``: on this machine's state dir, never through a server (a
    server whose store is damaged does not hold it, and takes the restored one by itself)."""
    from .control.manager import ClusterManager

    console.print(ClusterManager().restore_store(empty=ns.empty), markup=False)
    return 0


def _setup_gcp(ns, console) -> int:
    """``coiled-lab setup gcp``: runs here, with this shell's Google credentials (ADC)."""
    import dask.config
    import google.api_core.exceptions
    import google.auth.exceptions

    from . import config
    from .backends.gcp import setup
    from .backends.gcp.session import GCPError, GCPSession

    region = ns.region or config.get("gcp.region")
    try:
        with dask.config.set({"coiled-lab.gcp.project": ns.project} if ns.project else {}):
            asyncio.run(setup.run(GCPSession(), region, lambda line: console.print(line, markup=False),
                                  subnet_cidr=ns.subnet_cidr, dry_run=ns.dry_run))
    except (GCPError, google.auth.exceptions.GoogleAuthError, google.api_core.exceptions.GoogleAPIError) as exc:
        return _told(exc)
    return 0


def _setup_aws(ns, console) -> int:
    """``coiled-lab setup aws``: runs here, with this shell's AWS credentials."""
    import botocore.exceptions

    from . import config
    from .backends.aws import setup
    from .backends.aws.session import AWSError, AWSSession

    region = ns.region or config.get("aws.region")
    try:
        if ns.policy:
            document = asyncio.run(setup.policy(AWSSession(), region, ns.policy))
            console.print(json.dumps(document, indent=2), markup=False)
            return 0
        asyncio.run(setup.run(AWSSession(), region, lambda line: console.print(line, markup=False),
                              vpc_id=ns.vpc_id, vpc_cidr=ns.vpc_cidr, dry_run=ns.dry_run))
    except (AWSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        return _told(exc)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
