"""A setup plan: what ``coiled-lab setup <cloud>`` would change, read before anything changes.

Each cloud's setup reads what exists, adds one :class:`Change` per difference, then prints
the list (``--dry-run``) or applies it in order (a change may use an id an earlier one
made, through :attr:`Plan.ids`). An empty plan is the idempotent second run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable


@dataclass
class Change:
    description: str
    apply: Callable[[], Awaitable[None]]


@dataclass
class Plan:
    region: str
    changes: list[Change] = field(default_factory=list)
    ids: dict[str, Any] = field(default_factory=dict)  # found or created: vpc, subnets, network links...

    def add(self, description: str, apply: Callable[[], Awaitable[None]]) -> None:
        self.changes.append(Change(description, apply))

    async def carry_out(self, emit: Callable[[str], None], dry_run: bool) -> None:
        """Print each change and apply it (unless ``dry_run``), then say what was done."""
        for change in self.changes:
            emit(f"  {'would ' if dry_run else ''}{change.description}")
            if not dry_run:
                await change.apply()
        if not self.changes:
            emit(f"nothing to change: everything coiled-lab needs in {self.region} is in place")
        elif dry_run:
            emit(f"dry run: {len(self.changes)} change(s) listed above; nothing was changed")
        else:
            emit(f"done: {len(self.changes)} change(s) made")
