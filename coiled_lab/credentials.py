"""The user's own data credentials, sent from the kernel to a cluster's workers: AWS here,
Google Cloud in :mod:`coiled_lab.gcp_credentials`, both through :func:`send` and
:func:`keep_fresh`.

``Cluster.send_credentials()`` (or ``Cluster(send_credentials=True)``) takes the KERNEL's
credentials (boto3's default chain in this process; the Jupyter server removed its own
provisioning secrets from the environment kernels inherit, and the machine's own
instance or container role, which the server may provision with, is refused), turns long-lived keys into
short-lived session credentials with STS ``GetSessionToken`` (session credentials, key id
``ASIA...``, are used as they are), and registers :class:`AWSCredentialsPlugin` on the
scheduler over the cluster's TLS comms. The scheduler runs a registered worker plugin on
every worker, including workers that join later; it puts the credentials in the worker
process's environment, where boto3 and s3fs find them. The kernel re-sends fresh ones at
``coiled-lab.credentials.refresh-at`` of their lifetime.

Nothing here is written to user-data, tags, files or logs: the values travel only inside
the pickled plugin, and neither the plugin's repr nor any log line shows them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Any, Callable, Optional

from distributed.diagnostics.plugin import WorkerPlugin

from . import config
from .errors import ClusterError
from .spec import ClusterSpecError

logger = logging.getLogger("coiled_lab.credentials")

PROVIDERS = ("aws", "gcp")
PLUGIN_NAME = "coiled-lab-aws-credentials"
ENV_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# botocore's environment provider reads this too: a long-lived boto3 session on a worker
# then re-reads the environment (our refreshed values) when its copy expires.
EXPIRY_ENV = "AWS_CREDENTIAL_EXPIRATION"
# botocore's names for the machine's own credentials (instance metadata, container
# endpoint): what a Jupyter server on that machine may provision with, hence never sent.
MACHINE_METHODS = ("iam-role", "container-role")


class AWSCredentialsPlugin(WorkerPlugin):
    """Puts session credentials in a worker's environment. Registering it again under the
    same name replaces it on every worker (that is how a refresh arrives)."""

    name = PLUGIN_NAME

    def __init__(self, access_key_id: str, secret_access_key: str, session_token: str, expiration: Optional[float]):
        self._values = {
            "AWS_ACCESS_KEY_ID": access_key_id,
            "AWS_SECRET_ACCESS_KEY": secret_access_key,
            "AWS_SESSION_TOKEN": session_token,
        }
        self.expiration = expiration

    def setup(self, worker: Any = None) -> None:
        os.environ.update(self._values)
        os.environ.pop("AWS_SECURITY_TOKEN", None)  # an old alias botocore would prefer
        if self.expiration is not None:
            os.environ[EXPIRY_ENV] = datetime.datetime.fromtimestamp(self.expiration, datetime.timezone.utc).isoformat()
        else:
            os.environ.pop(EXPIRY_ENV, None)

    # No teardown: a refresh removes the old plugin and sets up the new one, and clearing
    # the variables in between would leave running tasks without credentials for a moment.

    def __repr__(self) -> str:  # distributed may log a plugin; never its values
        return f"<AWSCredentialsPlugin key id ...{self._values['AWS_ACCESS_KEY_ID'][-4:]}>"


def _seconds(key: str) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(config.get(f"credentials.{key}")))


def session_credentials() -> AWSCredentialsPlugin:
    """This process's AWS credentials as short-lived session credentials (blocking: it may
    call STS). Raises ClusterError when the kernel has none."""
    import boto3

    session = boto3.Session()
    found = session.get_credentials()
    if found is None:
        raise ClusterError(
            "no AWS credentials in this kernel (environment, profile, SSO or instance role); "
            "the Jupyter server's own credentials are never sent to workers"
        )
    if getattr(found, "method", None) in MACHINE_METHODS:
        raise ClusterError(
            "the only AWS credentials in this kernel are this machine's own (its instance or container "
            "role), which the Jupyter server may be using to provision clusters; they are not sent to "
            "workers. Give the kernel your own: a profile (AWS_PROFILE), environment variables or SSO"
        )
    frozen = found.get_frozen_credentials()
    if frozen.access_key.startswith("ASIA") and frozen.token:
        expiry = getattr(found, "_expiry_time", None)  # set for refreshable (SSO, role) credentials
        return AWSCredentialsPlugin(frozen.access_key, frozen.secret_key, frozen.token,
                                    expiry.timestamp() if expiry is not None else None)
    sts = session.client("sts", region_name=session.region_name or config.get("aws.region"))
    duration = min(max(int(_seconds("duration")), 900), 129_600)  # what STS accepts: 15 min to 36 h
    reply = sts.get_session_token(DurationSeconds=duration)["Credentials"]
    return AWSCredentialsPlugin(reply["AccessKeyId"], reply["SecretAccessKey"], reply["SessionToken"],
                                reply["Expiration"].timestamp())


def _token_source(provider: str) -> Callable[[], Any]:
    """What makes a fresh credentials plugin for ``provider`` (blocking)."""
    if provider == "aws":
        return session_credentials
    if provider == "gcp":
        from .gcp_credentials import access_token

        return access_token
    raise ClusterSpecError(f"provider: {provider!r} is not one of {', '.join(PROVIDERS)}", "provider")


def next_refresh(plugin: Any, now: Optional[float] = None) -> float:
    """Seconds until the credentials are sent again: ``refresh-at`` of their lifetime left
    (of ``duration`` when their expiry is unknown), at least a second."""
    now = time.time() if now is None else now
    lifetime = plugin.expiration - now if plugin.expiration is not None else _seconds("duration")
    return max(1.0, float(config.get("credentials.refresh-at")) * lifetime)


async def send(scheduler_comm: Any, provider: str = "aws") -> Any:
    """Fetch fresh credentials of ``provider`` (``aws`` or ``gcp``) and register them on
    the scheduler (all workers, now and later)."""
    from distributed.protocol.pickle import dumps

    plugin = await asyncio.get_running_loop().run_in_executor(None, _token_source(provider))
    responses = await scheduler_comm.register_worker_plugin(plugin=dumps(plugin), name=plugin.name, idempotent=False)
    failed = [addr for addr, r in responses.items() if r.get("status") == "error"]
    if failed:
        raise ClusterError(f"could not set {provider.upper()} credentials on {len(failed)} worker(s): "
                           f"{', '.join(failed[:3])}")
    return plugin


async def keep_fresh(scheduler_comm: Any, plugin: Any, provider: str = "aws") -> None:
    """Re-send fresh credentials before the current ones expire, until cancelled."""
    delay = next_refresh(plugin)
    while True:
        await asyncio.sleep(delay)
        try:
            plugin = await send(scheduler_comm, provider)
            delay = next_refresh(plugin)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the message names the failure, never a value
            logger.warning("coiled-lab: could not refresh the workers' %s credentials (%s); retrying",
                           provider.upper(), type(exc).__name__)
            delay = 5.0
