"""The cluster state machine, in one place.

``pending -> provisioning -> running <-> scaling -> stopping -> stopped``, and ``error``
(with a human message) from anywhere. Only the manager's reconciler moves a cluster
between states; users and watchdogs only set its *target* (``running`` or ``stopped``).
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    pending = "pending"
    provisioning = "provisioning"
    running = "running"
    scaling = "scaling"
    stopping = "stopping"
    stopped = "stopped"
    error = "error"

    def __str__(self) -> str:  # so f-strings and JSON show "running", not "State.running"
        return self.value


class Target(str, Enum):
    """What a cluster should be: the one thing a verb writes (``stop`` writes ``stopped``;
    ``scale`` changes the spec's size, not this)."""

    running = "running"
    stopped = "stopped"

    def __str__(self) -> str:
        return self.value


FINAL = frozenset({State.stopped, State.error})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.pending: frozenset({State.provisioning, State.stopping, State.error}),
    State.provisioning: frozenset({State.running, State.stopping, State.error}),
    State.running: frozenset({State.scaling, State.stopping, State.stopped, State.error}),
    State.scaling: frozenset({State.running, State.stopping, State.stopped, State.error}),
    State.stopping: frozenset({State.stopped, State.error}),
    # A stop that ends in error can be retried; a stopped cluster stays stopped.
    State.error: frozenset({State.stopping, State.stopped}),
    State.stopped: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


def check_transition(old: State, new: State) -> None:
    if new != old and new not in TRANSITIONS[old]:
        raise InvalidTransition(f"cannot go from {old} to {new}")
