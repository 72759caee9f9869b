"""A ClusterManager in a process of its own, driven one JSON line at a time over stdin, so
that a test can SIGKILL it at any moment and start another on the same state dir: what a
crashed Jupyter server leaves behind.

    python -m tests.chaos.manager_process STATE_DIR

prints ``{"ready": pid}`` once it holds the store, then answers each request
``{"verb": "create"|"scale"|"stop"|"get", "args": [...]}`` with ``{"ok": result}`` or
``{"error": "Kind: message"}``. End of input closes the manager gracefully.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from coiled_lab.control.manager import ClusterManager

VERBS = ("create", "scale", "stop", "get")


def _answer(data: dict) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def serve(state_dir: Path) -> None:
    manager = await ClusterManager(state_dir).start()
    _answer({"ready": os.getpid()})
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            request = json.loads(line)
            if request.get("verb") not in VERBS:
                _answer({"error": f"verb: {request.get('verb')!r} is not allowed; allowed: {', '.join(VERBS)}"})
                continue
            try:
                _answer({"ok": await getattr(manager, request["verb"])(*request.get("args", []))})
            except Exception as exc:  # noqa: BLE001 - the driver decides what an error means
                _answer({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        await manager.close()


if __name__ == "__main__":
    if os.environ.get("COILED_LAB_TEST_GOOGLE_OFFLINE"):
        # As tests/gcp/conftest.py does in its process: google-auth's background lookup
        # of a "regional access boundary" would reach for the internet.
        from google.oauth2 import service_account

        service_account.Credentials._is_regional_access_boundary_lookup_required = lambda self: False
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(Path(sys.argv[1])))
