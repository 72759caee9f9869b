"""The cloud-agnostic control plane: store of record, events and the reconciling manager.

:func:`get_control` is how every front door (``Cluster``, ``%coiled``, the CLI) reaches
it: through the Jupyter server extension's API when this process was started by (or
pointed at) such a server, else in this process.
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
    from ..api import ENV_TOKEN, ENV_URL, APIClient, read_runtime_file

    url, token = os.environ.get(ENV_URL), os.environ.get(ENV_TOKEN)
    if url and token:
        return APIClient.shared(url, token)
    from .. import config

    server = read_runtime_file(config.state_dir())
    if server is not None:
        return APIClient.shared(server["url"], server["token"])
    from .inprocess import InProcessControl

    return InProcessControl.shared()
