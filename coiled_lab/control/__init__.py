"""The cloud-agnostic control plane: store of record, events and the reconciling manager.

:func:`get_control` is how every front door (``Cluster``, ``%coiled``, the CLI) reaches
it: through the Jupyter server extension's API when this process was started by (or
pointed at) such a server, else in this process.
"""

from __future__ import annotations

from typing import Any


def get_control() -> Any:
    from .inprocess import InProcessControl

    return InProcessControl.shared()
