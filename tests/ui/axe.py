"""Accessibility checks with axe-core (the lab extension's test-only devDependency), run
inside the page Playwright drives: every ``serious`` or ``critical`` violation under a
selector, one line each (rule, what it asks, where)."""

from __future__ import annotations

from pathlib import Path

AXE = Path(__file__).resolve().parents[2] / "labextension" / "node_modules" / "axe-core" / "axe.min.js"

_RUN = """async (selector) => {
  const result = await axe.run({ include: [selector] }, { resultTypes: ['violations'] });
  return result.violations
    .filter(v => v.impact === 'serious' || v.impact === 'critical')
    .flatMap(v => v.nodes.map(n => `${v.impact} ${v.id}: ${v.help} at ${n.target.join(' ')}`));
}"""


def serious_violations(page, selector: str) -> list[str]:
    """The serious and critical axe violations in what ``selector`` matches."""
    if not AXE.exists():
        raise FileNotFoundError(f"{AXE} is missing: run `jlpm install` in labextension/ (axe-core is a devDependency)")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    return page.evaluate(_RUN, selector)
