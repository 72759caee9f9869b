"""Who asks the team service (``coiled-lab serve``): JupyterHub users, and nothing else.

The service is a Jupyter server that loads coiled-lab alone (:mod:`.serve`). Its identity
provider is JupyterHub's own for single-user servers (a token in ``Authorization``, or the
OAuth cookie the hub hands a browser), and each user it accepts becomes a
:class:`~coiled_lab.control.callers.Caller`: the hub's name, the hub's admin flag (or
membership of the configured admin group) and groups. Its authorizer grants coiled-lab's
resource to those users and refuses every other resource of the server: the service
account's kernels, contents, files and terminals are never reachable, whoever asks.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth import Authorizer
from jupyterhub.singleuser.extension import JupyterHubIdentityProvider, JupyterHubUser
from tornado import web

from coiled_lab import config
from coiled_lab.control.callers import Caller

from .handlers import AUTH_RESOURCE


class HubCaller(JupyterHubUser):
    """A JupyterHub user, with the Caller every manager verb acts for."""

    caller: Caller

    def __init__(self, hub_user: dict[str, Any]):
        super().__init__(hub_user)
        self.caller = caller_of(hub_user)


def caller_of(hub_user: dict[str, Any]) -> Caller:
    """The Caller for a hub user model (``GET /hub/api/user``: name, admin, groups)."""
    groups = frozenset(str(g) for g in hub_user.get("groups") or ())
    admin_group = config.get("admin-group")
    admin = bool(hub_user.get("admin")) or bool(admin_group and admin_group in groups)
    return Caller(name=str(hub_user["name"]), admin=admin, groups=groups)


class HubIdentityProvider(JupyterHubIdentityProvider):
    """JupyterHub's token and OAuth-cookie authentication (as jupyterhub-singleuser does it),
    answering :class:`HubCaller`. A service has no user of its own: only the hub's users
    whose token or cookie carries this service's access scope get in. Services (a token
    of another hub service) are refused: they are nobody's owner."""

    async def get_user(self, handler: Any) -> Any:
        try:
            user = await super().get_user(handler)
        except web.HTTPError as exc:  # the hub did not answer, or refused the service's own token
            if exc.status_code < 500:
                raise
            raise web.HTTPError(503, f"JupyterHub could not say who asks ({exc.log_message}); coiled-lab answers "
                                     "again once the hub does") from None
        if user is None or isinstance(user, HubCaller):
            return user
        if user.hub_user.get("kind", "user") != "user":
            handler._jupyterhub_user = None
            return None
        handler._jupyterhub_user = hub_caller = HubCaller(user.hub_user)
        return hub_caller


class ServiceAuthorizer(Authorizer):
    """coiled-lab's resource, to hub users; every other resource (kernels, contents,
    files, terminals, sessions, config...), to nobody."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource == AUTH_RESOURCE and isinstance(user, HubCaller)
