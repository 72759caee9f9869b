"""coiled-lab's configuration: dask.config under the key ``coiled-lab``.

Registered the way dask projects do it (``dask_cloudprovider``, ``dask_jobqueue``): the
bundled YAML supplies defaults, user files in ``~/.config/dask/`` and ``DASK_COILED_LAB__*``
environment variables override them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.config
import yaml

_HERE = Path(__file__).parent
with open(_HERE / "coiled-lab.yaml") as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


def get(key: str, default: Any = None) -> Any:
    """Read ``coiled-lab.<key>``; ``-`` and ``_`` are interchangeable as in all dask config."""
    return dask.config.get(f"coiled-lab.{key}", default=default)


def state_dir() -> Path:
    """The directory that holds the store, TLS material and local logs (created 0700)."""
    configured = get("state-dir")
    if configured:
        path = Path(os.path.expanduser(str(configured)))
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir("coiled-lab", appauthor=False))
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        from .errors import StoreUnavailable

        why = "it is a file, not a directory" if path.exists() and not path.is_dir() else exc.strerror or str(exc)
        raise StoreUnavailable(f"the state dir {path} cannot be used ({why}); point "
                               "coiled-lab.state-dir (DASK_COILED_LAB__STATE_DIR) at a directory this user can "
                               "write") from None
    return path
