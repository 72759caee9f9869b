"""The lab extension: the size of the JS it ships, and the time from page load to a
sidebar populated with 50 clusters.

- Size: every ``.js`` file of the installed extension (``share/jupyter/labextensions/
  coiled-lab/static``), raw and gzipped. Target: <= 300 KB raw in total.
- Time: a real ``jupyter lab`` (local backend) whose store already holds 50 clusters,
  rows inserted through ``Store`` before the server starts (stopped ones, so no process
  runs and nothing changes them). Headless Chromium opens ``/lab?reset``, opens the
  sidebar as soon as its tab exists, and reads ``performance.now()`` (ms since the
  navigation started) once the sidebar lists every cluster. The time at which the
  sidebar's tab appeared (the extension loaded) is printed beside it.

Prints figures; asserts nothing about time.

Usage: python benchmarks/labextension_size.py [--clusters 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ui.lab import JupyterLab, ensure_chromium, installed_labextension  # noqa: E402

TARGET_BYTES = 300_000


def shipped_js(extension: Path) -> list[tuple[str, int, int]]:
    """(name, bytes, gzipped bytes) of every JS file the extension ships."""
    return [
        (path.name, path.stat().st_size, len(gzip.compress(path.read_bytes(), 9)))
        for path in sorted((extension / "static").glob("*.js"))
    ]


def fill_store(state_dir: Path, n: int) -> None:
    from coiled_lab.control.states import State
    from coiled_lab.control.store import ClusterRecord, Store
    from coiled_lab.spec import parse_spec

    spec = parse_spec({"backend": "local", "n_workers": 4}).public()
    store = Store(state_dir / "coiled-lab.sqlite")
    now = time.time()
    for i in range(n):
        store.insert_cluster(ClusterRecord(
            id=f"{i:012x}", name=f"bench-{i}", backend="local", spec={**spec, "name": f"bench-{i}"},
            status=State.stopped, target="stopped", message="stopped on request",
            state={"cost": {"accrued": 0.0, "per_hour": 0.0, "currency": "USD", "as_of": now}},
            created_at=now - 3600 + i, updated_at=now, stopped_at=now,
        ))
    store.close()


def time_to_sidebar(browser, lab: JupyterLab, n: int) -> tuple[float, float]:
    """(ms until the sidebar's tab exists, ms until it lists ``n`` clusters) for one page load."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        page.goto(lab.lab_url, wait_until="commit")
        tab = page.locator('.lm-TabBar-tab[data-id="coiled-lab-sidebar"]')
        tab.wait_for(timeout=120_000)
        loaded = page.evaluate("performance.now()")
        tab.click()
        page.wait_for_function(
            "n => document.querySelectorAll('#coiled-lab-sidebar .jp-CoiledLab-historyRow').length >= n",
            arg=n, timeout=120_000, polling="raf",
        )
        populated = page.evaluate("performance.now()")
        return loaded, populated
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    extension = installed_labextension()
    if extension is None:
        sys.exit("the coiled-lab lab extension is not installed; build it with `pip install -e .`")
    files = shipped_js(extension)
    total, total_gz = sum(f[1] for f in files), sum(f[2] for f in files)
    print(f"shipped JS in {extension / 'static'}:")
    for name, size, gz in files:
        print(f"  {name:<40} {size / 1000:8.1f} KB  ({gz / 1000:.1f} KB gzipped)")
    verdict = "within" if total <= TARGET_BYTES else "OVER"
    print(f"  {'total':<40} {total / 1000:8.1f} KB  ({total_gz / 1000:.1f} KB gzipped); "
          f"target <= {TARGET_BYTES / 1000:.0f} KB: {verdict}")

    chromium = ensure_chromium()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="coiled-lab-bench-") as tmp:
        lab = JupyterLab(Path(tmp))
        fill_store(lab.state_dir, args.clusters)
        lab.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
                time_to_sidebar(browser, lab, args.clusters)  # warm-up: server caches, browser disk cache
                runs = [time_to_sidebar(browser, lab, args.clusters) for _ in range(args.runs)]
                browser.close()
        finally:
            lab.close()
    loaded = [r[0] for r in runs]
    populated = [r[1] for r in runs]
    print(f"page load -> sidebar tab (extension loaded): median {statistics.median(loaded):.0f} ms "
          f"(runs: {', '.join(f'{t:.0f}' for t in loaded)})")
    print(f"page load -> sidebar lists {args.clusters} clusters: median {statistics.median(populated):.0f} ms "
          f"(runs: {', '.join(f'{t:.0f}' for t in populated)})")


if __name__ == "__main__":
    main()
