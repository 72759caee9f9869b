"""The one command-line parser, generated from ClusterSpec, shared by the CLI and ``%coiled``.

Every ClusterSpec field becomes an option (``worker_vm_types`` -> ``--worker-vm-types``,
with short aliases users expect such as ``--vm-type``, ``--gpu``, ``--spot``); values are
passed through as given and validated by ClusterSpec, so the CLI, the magic, the REST
API and the Python API accept and reject exactly the same things. Only options a user
typed are sent: defaults are the server's (dask config), and ``--help`` shows them.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any, Optional

from .errors import UsageError, quoted
from .coiled_names import MAPPED, SPOT_POLICIES
from .spec import ClusterSpec, ClusterSpecError, describe_fields

# Extra spellings users of Coiled and dask-cloudprovider reach for.
ALIASES: dict[str, list[str]] = {
    "worker_vm_types": ["--vm-type", "--vm-types"],
    "worker_cpu": ["--cpu"],
    "worker_memory": ["--memory"],
    "worker_gpu": ["--gpu"],
    "spot_policy": ["--spot"],
    "tags": ["--tag"],
    "environ": ["--env"],
    "python_version": ["--python"],
}
# Fields given positionally by the commands that take them.
POSITIONAL = {"n_workers"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: Optional[str] = None) -> typing.NoReturn:
        if message:
            raise UsageError(message.strip())
        raise _HelpShown()


class _HelpShown(Exception):
    """--help was printed; nothing else to do."""


HelpShown = _HelpShown


def option_name(field: Optional[str]) -> str:
    if field is None:
        return "spec"
    if field in POSITIONAL:
        return field.upper()
    return "--" + field.replace("_", "-")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def key_values(text: str, field: str) -> dict[str, str]:
    """``team=geo, project=x`` as a dict: the one-line spelling of a map field (tags) in
    the forms, read by the same rule as ``--tag KEY=VALUE``; ClusterSpecError naming the
    field otherwise."""
    out: dict[str, str] = {}
    for pair in _comma_list(text):
        try:
            key, value = _key_value(pair)
        except argparse.ArgumentTypeError:
            raise ClusterSpecError(f"{field}: {quoted(pair)} is not allowed: expected KEY=VALUE pairs separated by "
                                   "commas", field) from None
        out[key.strip()] = value.strip()
    return out


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_spec_options(parser: argparse.ArgumentParser, positional_workers: bool = True) -> None:
    """Add one option per ClusterSpec field (and ``n_workers`` as an optional positional)."""
    group = parser.add_argument_group("cluster options (defaults from dask config 'coiled-lab.cluster')")
    for info in describe_fields():
        field, default, help_text = info["name"], info["default"], info["help"]
        annotation = ClusterSpec.model_fields[field].annotation
        shown = "none" if default in (None, {}, []) else default
        help_text = f"{help_text} (default: {shown})"
        if field in POSITIONAL and positional_workers:
            parser.add_argument(field, nargs="?", default=argparse.SUPPRESS, metavar=option_name(field), help=help_text)
            continue
        names = [option_name(field), *ALIASES.get(field, [])]
        kwargs: dict[str, Any] = {"dest": field, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if annotation is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
        elif origin is dict:
            group.add_argument(*names, action="append", type=_key_value, metavar="KEY=VALUE", **kwargs)
        elif list in (origin, *map(typing.get_origin, args)):
            metavar = "MIN,MAX" if field == "adaptive" else "TYPE[,TYPE]"
            group.add_argument(*names, action="extend", type=_comma_list, metavar=metavar, **kwargs)
        else:
            choices = None
            literal = next((a for a in (annotation, *args) if typing.get_origin(a) is typing.Literal), None)
            if literal is not None:
                choices = typing.get_args(literal)
                kwargs["metavar"] = "{" + ",".join(choices) + "}"
            group.add_argument(*names, **kwargs)
    # Coiled's names that are not fields (coiled_lab.coiled_names): read into fields by ClusterSpec.
    for name, (kind, help_text) in MAPPED.items():
        kwargs = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if kind == "map":
            group.add_argument(option_name(name), action="append", type=_key_value, metavar="KEY=VALUE", **kwargs)
        elif kind == "list":
            group.add_argument(option_name(name), action="extend", type=_comma_list, metavar="TYPE[,TYPE]", **kwargs)
        else:
            group.add_argument(option_name(name), choices=SPOT_POLICIES, metavar="{" + ",".join(SPOT_POLICIES) + "}",
                               **kwargs)


def spec_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """The ClusterSpec fields a user typed, in the shapes ClusterSpec accepts."""
    out: dict[str, Any] = {}
    for field in (*ClusterSpec.model_fields, *MAPPED):
        if hasattr(ns, field):
            value = getattr(ns, field)
            if isinstance(value, list) and value and isinstance(value[0], tuple):
                value = dict(value)
            out[field] = value
    return out


def describe_error(exc: ClusterSpecError) -> str:
    """A ClusterSpecError re-worded to name the option a user typed, not the field."""
    message = exc.message
    if exc.field and message.startswith(f"{exc.field}:"):
        message = option_name(exc.field) + message[len(exc.field):]
    return message


def build_parser(prog: str, cli: bool) -> argparse.ArgumentParser:
    """The commands of ``coiled-lab`` (``cli=True``) or ``%coiled``: one grammar for both."""
    parser = _Parser(prog=prog, description="Dask clusters in your own cloud, or on this machine.")
    parser.add_argument("--debug", action="store_true", help="show a failure's traceback, not just its one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    start = sub.add_parser("start", help="start a cluster and wait until it runs")
    add_spec_options(start)
    start.add_argument("--no-wait", action="store_true", help="return as soon as the cluster is requested")
    if not cli:
        start.add_argument("--no-client", action="store_true", help="do not connect a distributed.Client")

    estimate = sub.add_parser("estimate", help="what a cluster would cost per hour, before starting it")
    add_spec_options(estimate)

    env = sub.add_parser("env", help="what package sync would send from here, and whether it is built")
    env.add_argument("--backend", choices=["aws", "gcp", "local"], help="whose bucket to look in "
                                                                       "(default: config coiled-lab.cluster.backend)")
    env.add_argument("--region", help="the region of that bucket (default: the backend's)")
    env.add_argument("--include", action="append", metavar="PATTERN",
                     help="files of the working directory to ship (default: config coiled-lab.sync.include)")
    env.add_argument("--exclude", action="append", metavar="PATTERN",
                     help="files not to ship (default: config coiled-lab.sync.exclude)")

    notes = sub.add_parser("notifications", help="what coiled-lab told about a cluster")
    notes.add_argument("name", help="cluster name or id")

    dashboard = sub.add_parser("dashboard", help="the address of a cluster's Dask dashboard")
    dashboard.add_argument("name", help="cluster name or id")

    lst = sub.add_parser("list", help="list clusters")
    lst.add_argument("--all", action="store_true", help="include stopped clusters")

    status = sub.add_parser("status", help="show one cluster")
    status.add_argument("name", help="cluster name or id")

    scale = sub.add_parser("scale", help="change the number of workers")
    scale.add_argument("name", help="cluster name or id")
    scale.add_argument("n_workers", help="number of workers wanted")
    scale.add_argument("--wait", action="store_true", help="wait until the workers are ready")

    stop = sub.add_parser("stop", help="stop a cluster (all its machines terminate)")
    stop.add_argument("name", help="cluster name or id")
    stop.add_argument("--no-wait", action="store_true", help="return as soon as the stop is requested")

    logs = sub.add_parser("logs", help="show (or follow) a cluster's logs")
    logs.add_argument("name", help="cluster name or id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    logs.add_argument("--instance", help="only this instance (id, or 'scheduler' / 'worker')")
    logs.add_argument("--grep", help="only lines containing this text (case-insensitive)")
    logs.add_argument("--level", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], type=str.upper,
                      help="minimum level")
    logs.add_argument("--since", help="epoch seconds, an ISO time (UTC unless it names an offset, as the times "
                                      "shown are), or a duration ago such as 10m")
    logs.add_argument("--limit", type=int, default=200, help="at most this many lines (default: 200)")

    if cli:
        for command in (start, estimate, env, lst, status, scale, stop):
            command.add_argument("--json", action="store_true", help="print JSON instead of a table")
        cleanup = sub.add_parser("cleanup", help="stop what runs for clusters the store no longer considers live")
        cleanup.add_argument("--dry-run", action="store_true", help="only show what would be removed")
        cleanup.add_argument("--aws-region", action="append", metavar="REGION",
                             help="also search this AWS region for what this store's clusters left "
                                  "(regions of AWS clusters the store knows are always searched)")
        cleanup.add_argument("--gcp-region", action="append", metavar="REGION",
                             help="also search this GCP region for VMs this store's clusters left "
                                  "(regions of GCP clusters the store knows are always searched)")

        store = sub.add_parser("store", help="the store of clusters (coiled-lab.sqlite in the state dir)")
        verbs = store.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
        verbs.required = True
        restore = verbs.add_parser("restore", help="put the backup in place of a damaged store (the damaged "
                                                   "file is kept); only when the store is damaged")
        restore.add_argument("--empty", action="store_true",
                             help="start with an empty store instead (when there is no usable backup)")

        setup = sub.add_parser("setup", help="prepare a cloud account for coiled-lab (once per region)")
        clouds = setup.add_subparsers(dest="cloud", metavar="CLOUD", parser_class=_Parser)
        clouds.required = True
        aws = clouds.add_parser("aws", help="VPC, subnets, security groups, instance role and log group on AWS")
        aws.add_argument("--region", help="AWS region (default: config coiled-lab.aws.region)")
        aws.add_argument("--vpc-id", help="prepare this existing VPC instead of creating one")
        aws.add_argument("--vpc-cidr", help="address range of a VPC to create (default: coiled-lab.aws.vpc-cidr)")
        aws.add_argument("--dry-run", action="store_true", help="only show what would change")
        aws.add_argument("--policy", choices=["setup", "everyday"],
                         help="only print this IAM policy as JSON, for the admin to attach, and change nothing: "
                              "'setup' runs this command, 'everyday' starts, watches and stops clusters")
        gcp = clouds.add_parser("gcp", help="network, subnetwork, firewall rules and the VMs' service account on GCP")
        gcp.add_argument("--project", help="project (default: config coiled-lab.gcp.project, else the one "
                                           "Application Default Credentials name)")
        gcp.add_argument("--region", help="region (default: config coiled-lab.gcp.region)")
        gcp.add_argument("--subnet-cidr", help="address range of a subnetwork to create "
                                               "(default: coiled-lab.gcp.subnet-cidr)")
        gcp.add_argument("--dry-run", action="store_true", help="only show what would change")
        # Listed for --help only: main() hands `serve` and its own flags to coiled_lab_server.serve.
        sub.add_parser("serve", add_help=False, help="run the control plane as a shared JupyterHub service "
                                                     "(team mode; `coiled-lab serve --help`)")
    return parser
