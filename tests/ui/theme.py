"""JupyterLab's theme, switched from its menu; screenshots in the light and the dark one."""

from __future__ import annotations

from .conftest import docs_screenshot


def use_theme(page, theme: str) -> None:
    page.locator(".lm-MenuBar-itemLabel").get_by_text("Settings", exact=True).click()
    page.locator(".lm-Menu-itemLabel").get_by_text("Theme", exact=True).hover()
    page.locator(".lm-Menu-itemLabel").get_by_text(theme, exact=True).click()
    light = "false" if "Dark" in theme else "true"
    page.locator(f'body[data-jp-theme-light="{light}"]').wait_for(state="attached")
    page.locator("#jupyterlab-splash").wait_for(state="detached")


def themed_screenshots(page, locator, name: str) -> None:
    """``name.png`` in the light theme and ``name-dark.png`` in the dark one (see
    :func:`docs_screenshot`); the page is left in the light theme."""
    docs_screenshot(locator, f"{name}.png")
    use_theme(page, "JupyterLab Dark")
    docs_screenshot(locator, f"{name}-dark.png")
    use_theme(page, "JupyterLab Light")
