"""coiled-lab's Jupyter server extension: the control plane behind JupyterLab (see :mod:`.app`)."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    # The first thing Jupyter asks of the package, before importing the rest of it: the
    # server's cloud secrets leave the environment kernels inherit now, so that they do
    # even when the extension then fails to import, link or load.
    from .secret_env import take_from_process

    take_from_process()
    from .app import CoiledLabServer

    return [{"module": "coiled_lab_server", "app": CoiledLabServer}]
