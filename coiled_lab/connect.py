"""How a front door (``Cluster``, ``%coiled``, the CLI, the widgets) finds the control plane.

Kept out of :mod:`coiled_lab.control` so that the control plane never imports a front
door's client: the REST client (:mod:`coiled_lab.api`) and the in-process manager are
both reached from here, and only from here.
"""

from __future__ import annotations

import os
from typing import Any


def get_control() -> Any:
    """The control plane for this process, in order of preference:

    1. the server named by ``COILED_LAB_API_URL`` and ``COILED_LAB_API_TOKEN`` (a kernel
       inherits them from the Jupyter server that started it);
    2. the live server whose runtime file is in the state dir (a terminal, a cron job);
    3. a manager in this process. Only one process may manage a state dir, so a script
       must not start its own manager while a server holds the state dir.
    """
    from .api import ENV_TOKEN, ENV_URL, APIClient, read_runtime_file

    url, token = os.environ.get(ENV_URL), os.environ.get(ENV_TOKEN)
    if url and token:
        return APIClient.shared(url, token)
    from . import config

    server = read_runtime_file(config.state_dir())
    if server is not None:
        return APIClient.shared(server["url"], server["token"])
    from .control.inprocess import InProcessControl

    return InProcessControl.shared()


def send_environment() -> dict[str, Any]:
    """Take this kernel's environment and keep it on the server: its summary (with the
    hash a create request then names). The sidebar runs this in the notebook's kernel."""
    from .environment import describe_here, snapshot

    control = get_control()
    return control.run(control.stage_environment(snapshot(describe_here()).to_json()))
