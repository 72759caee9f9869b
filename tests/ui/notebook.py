"""Notebooks in the browser: open a new one from the launcher, run a cell in it."""

from __future__ import annotations

import re


def open_new_notebook(page, lab):
    """A new notebook (Python 3 kernel) from the launcher of a fresh lab; its panel, once
    the kernel is idle."""
    page.goto(lab.lab_url)
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    notebook = page.locator(".jp-NotebookPanel").last
    notebook.wait_for()
    wait_idle(page, timeout=60_000)
    return notebook


def wait_idle(page, timeout: float = 30_000) -> None:
    """The current notebook's kernel is started, connected and idle, as the status bar says
    ("Python 3 (ipykernel) | Idle"). The toolbar's execution indicator is no guide: it
    reads idle before the kernel exists, and a cell run then is lost."""
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).wait_for(timeout=timeout)


def run_cell(page, notebook, code: str, timeout: float = 60_000):
    """Type ``code`` into the notebook's last cell and run it (Shift+Enter); the cell, once
    its execution count shows it has run."""
    cells = notebook.locator(".jp-CodeCell")
    cell = cells.nth(cells.count() - 1)  # pinned: running it appends a new last cell
    cell.locator(".cm-content").click()
    page.keyboard.insert_text(code)  # as pasted: no auto-closed brackets or completion
    page.keyboard.press("Shift+Enter")
    # "[*]:" while running, "[1]:" once done.
    cell.locator(".jp-InputArea-prompt").filter(has_text=re.compile(r"\[\d+\]")).wait_for(timeout=timeout)
    return cell
