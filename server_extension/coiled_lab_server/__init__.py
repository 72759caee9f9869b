"""coiled-lab's Jupyter server extension: the control plane behind JupyterLab (see :mod:`.app`)."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import CoiledLabServer

    return [{"module": "coiled_lab_server", "app": CoiledLabServer}]
