"""Who may do what: one table (use case x role -> the tasks that role may reach), read by one
function, ``authorize``. The service asks it before every use case; the HTTP guards are
generated from it. No role is checked anywhere else."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

from ledger.decider import is_visible
from ledger.events import PROCESSING
from ledger.state import TaskState

ROLES = ("user", "worker", "admin")


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated API key: its public id, whose tasks it acts for, and its role."""

    key_id: str
    owner: str
    role: str


#: Whoever runs the command line on the database file: it may read everything already, so it
#: acts with an admin's grants (and is recorded as ``cli`` if it ever writes).
OPERATOR = Caller(key_id="cli", owner="operator", role="admin")


class Scope(enum.Enum):
    #: The caller's own tasks, while they are visible.
    OWN = "own"
    #: Every owner's tasks, while they are visible.
    ANY = "any"
    #: Every owner's tasks while a worker is processing them (and visible).
    PROCESSING = "processing"
    #: Every task that ever existed, deleted and expired ones included (auditing).
    EVER = "ever"


class UseCase(enum.Enum):
    CREATE = "create tasks"
    GET = "read tasks"
    GET_AS_OF = "read tasks as they were"
    LIST = "list tasks"
    UPDATE = "update tasks"
    CANCEL = "cancel tasks"
    DELETE = "delete tasks"
    CLAIM = "claim tasks"
    HEARTBEAT = "heartbeat tasks"
    COMPLETE = "complete tasks"
    FAIL = "fail tasks"
    RELEASE = "release tasks"
    READ_INPUT = "read input files"
    #: Signed links to a task's input (``input_file_url``, ``pdf_url``) in its answers: whoever
    #: holds one may fetch the input with no key until it expires (``api.links``).
    LINK_INPUT = "hand out links to input files"
    HISTORY = "read task histories"
    FEED = "read the event feed"
    #: Webhook subscriptions, their secrets and their deliveries (an admin's reach every
    #: owner's, and may hear every owner's tasks).
    WEBHOOKS = "manage webhooks"
    #: GET /metrics (unless serve --metrics-public): counts across every owner.
    METRICS = "read the metrics"


OWN, ANY, PROCESSING_ONLY, EVER = Scope.OWN, Scope.ANY, Scope.PROCESSING, Scope.EVER
_WORK = {"worker": ANY, "admin": ANY}

#: use case -> role -> scope; a role missing from a row may not do that at all (403).
POLICY: dict[UseCase, dict[str, Scope]] = {
    UseCase.CREATE: {"user": OWN, "admin": OWN},
    UseCase.GET: {"user": OWN, "worker": ANY, "admin": ANY},
    UseCase.GET_AS_OF: {"user": OWN, "worker": ANY, "admin": EVER},
    UseCase.LIST: {"user": OWN, "admin": ANY},
    UseCase.UPDATE: {"user": OWN, "admin": ANY},
    UseCase.CANCEL: {"user": OWN, "admin": ANY},
    UseCase.DELETE: {"user": OWN, "admin": ANY},
    UseCase.CLAIM: _WORK,
    UseCase.HEARTBEAT: _WORK,
    UseCase.COMPLETE: _WORK,
    UseCase.FAIL: _WORK,
    UseCase.RELEASE: _WORK,
    UseCase.READ_INPUT: {"user": OWN, "worker": PROCESSING_ONLY, "admin": ANY},
    # Not a worker: its key may read an input only while processing it, and a link outlives
    # that (its answers carry the authenticated input route instead).
    UseCase.LINK_INPUT: {"user": OWN, "admin": ANY},
    UseCase.HISTORY: {"user": OWN, "worker": ANY, "admin": EVER},
    UseCase.FEED: {"user": OWN, "admin": EVER},
    UseCase.WEBHOOKS: {"user": OWN, "admin": ANY},
    UseCase.METRICS: {"admin": ANY},
}


class Forbidden(Exception):
    """The key is valid but its role may not do this (403)."""


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """What ``authorize`` allows one caller for one use case."""

    scope: Scope
    caller: Caller

    @property
    def owner(self) -> str | None:
        """The only owner whose tasks this grant reaches; None for every owner."""
        return self.caller.owner if self.scope is OWN else None

    def sees(self, state: TaskState | None, at: datetime) -> bool:
        """Whether this grant reaches ``state`` at time ``at``; anything it does not reach is
        "Task not found" to the caller, never a hint that it exists."""
        if state is None or not state.exists:
            return False
        if self.scope is EVER:
            return True
        if not is_visible(state, at):
            return False
        if self.scope is OWN:
            return state.owner == self.caller.owner
        if self.scope is PROCESSING_ONLY:
            return state.status == PROCESSING
        return True


def authorize(use_case: UseCase, caller: Caller) -> Grant:
    """The caller's grant for ``use_case``; Forbidden if its role may not do it at all."""
    scope = POLICY[use_case].get(caller.role)
    if scope is None:
        raise Forbidden(f"A {caller.role} key cannot {use_case.value}")
    return Grant(scope=scope, caller=caller)
