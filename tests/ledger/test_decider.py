"""The decider as stories: given a task's events, when a command, then these events (folded
afterwards to check the command's effect, and that the command is not applied twice) or this
exact error. First a table of every command against a task in every status, then stories about
owners, leases, expiry and configuration. The story helpers are in stories.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from stories import (
    CONFIG,
    EXPIRES_IN,
    FILE,
    ID,
    OWNER,
    WORKER,
    Refused,
    assert_outcome,
    at,
    blob,
    cancelled,
    claimed,
    created,
    deleted,
    expired,
    failed,
    given,
    lease_expired,
    outcome,
    succeeded,
    update_requested,
)

from ledger.commands import (
    AnyCommand,
    CancelTask,
    ClaimTask,
    CompleteTask,
    CreateTask,
    DeleteTask,
    ExpireLease,
    ExpireTask,
    ExtendLease,
    FailTask,
    ReleaseTask,
    UpdateTask,
)
from ledger.decider import decide, fold, initial_state, updated_configuration
from ledger.errors import (
    EventLimitReached,
    InvalidTransition,
    LeaseLost,
    TaskAlreadyExists,
    TaskNotFound,
)
from ledger.events import (
    Cancelled,
    Claimed,
    Deleted,
    Expired,
    Failed,
    LeaseExpired,
    LeaseExtended,
    Succeeded,
    TaskCreated,
    TimedOut,
    UpdateRequested,
)

NOW = at(100)  # every "when" happens here: after the given leases and expiries have run out
OUTPUT2 = blob(b"second output")
PATCH = {"chunk_processing": {"target_length": 7}}
#: The update's configuration: chunk_processing replaced whole, ocr_strategy kept.
MERGED = {"chunk_processing": {"target_length": 7}, "ocr_strategy": "All"}

# -- given: one history per status --------------------------------------------------------------

GIVEN = {
    "never-created": [],
    "Starting (new)": [created()],
    "Starting (pending update)": [created(), claimed(), succeeded(), update_requested()],
    "Processing": [created(), claimed()],
    "Succeeded": [created(), claimed(), succeeded()],
    "Failed": [created(), claimed(), failed()],
    "Cancelled": [created(), cancelled()],
    "deleted": [created(), cancelled(), deleted()],
    "expired": [created(), claimed(), succeeded(), expired()],
}
STATUSES = list(GIVEN)


def state_of(given):
    return fold(given, initial_state(ID))


# -- when: one command of each kind -------------------------------------------------------------

SWEPT = at(100 + EXPIRES_IN)
WHEN = {
    "CreateTask": CreateTask(
        task_id=ID,
        at=NOW,
        owner=OWNER,
        configuration=CONFIG,
        file=FILE,
        file_name="doc.pdf",
        expires_in=EXPIRES_IN,
    ),
    "UpdateTask": UpdateTask(task_id=ID, at=NOW, configuration=PATCH),
    "CancelTask": CancelTask(task_id=ID, at=NOW, reason="no longer needed"),
    "DeleteTask": DeleteTask(task_id=ID, at=NOW),
    "ClaimTask": ClaimTask(task_id=ID, at=NOW, worker_id="w2", lease_until=at(130)),
    "ExtendLease": ExtendLease(task_id=ID, at=NOW, worker_id=WORKER, lease_until=at(130)),
    "ReleaseTask": ReleaseTask(task_id=ID, at=NOW, worker_id=WORKER),
    "CompleteTask": CompleteTask(task_id=ID, at=NOW, worker_id=WORKER, output=OUTPUT2),
    "FailTask": FailTask(task_id=ID, at=NOW, worker_id=WORKER, error="kaput"),
    "ExpireLease": ExpireLease(task_id=ID, at=NOW),
    # Past every finished story's expires_at (the other commands come before it).
    "ExpireTask": ExpireTask(task_id=ID, at=SWEPT),
}


NOT_FOUND = Refused(TaskNotFound, "Task not found")
EXISTS = Refused(TaskAlreadyExists, "Task already exists")


def cannot(verb: str, status: str) -> Refused:
    return Refused(InvalidTransition, f"Task cannot be {verb}: status is {status}")


def lease_lost(status: str, worker: str = WORKER) -> Refused:
    return Refused(
        LeaseLost, f"Worker {worker} does not hold the lease on this task: status is {status}"
    )


# -- then: the table. Columns in the order of STATUSES. ----------------------------------------

E_CREATED = [
    TaskCreated(
        task_id=ID,
        at=NOW,
        owner=OWNER,
        configuration=CONFIG,
        file=FILE,
        file_name="doc.pdf",
        expires_in=EXPIRES_IN,
    )
]
E_UPDATE = [UpdateRequested(task_id=ID, at=NOW, configuration=MERGED, expires_in=EXPIRES_IN)]
E_CANCEL = [Cancelled(task_id=ID, at=NOW, reason="no longer needed")]
E_DELETE = [Deleted(task_id=ID, at=NOW)]
E_CLAIM_1 = [Claimed(task_id=ID, at=NOW, worker_id="w2", lease_until=at(130), attempt=1)]
E_EXTEND = [LeaseExtended(task_id=ID, at=NOW, worker_id=WORKER, lease_until=at(130))]
E_RELEASE = [LeaseExpired(task_id=ID, at=NOW, worker_id=WORKER, attempt=1, reason="released")]
E_COMPLETE = [Succeeded(task_id=ID, at=NOW, worker_id=WORKER, output=OUTPUT2)]
E_FAIL = [Failed(task_id=ID, at=NOW, worker_id=WORKER, error="kaput")]
E_LEASE_EXPIRED = [LeaseExpired(task_id=ID, at=NOW, worker_id=WORKER, attempt=1)]
E_EXPIRED = [Expired(task_id=ID, at=SWEPT)]

# Each row: what the command gives in each of STATUSES, in order: never created, new, pending
# update, Processing, Succeeded, Failed, Cancelled, deleted, expired.
THEN = {
    "CreateTask": [E_CREATED, EXISTS, EXISTS, EXISTS, EXISTS, EXISTS, EXISTS, EXISTS, EXISTS],
    "UpdateTask": [
        NOT_FOUND,
        cannot("updated", "Starting"),
        cannot("updated", "Starting"),
        cannot("updated", "Processing"),
        E_UPDATE,
        E_UPDATE,
        cannot("updated", "Cancelled"),
        NOT_FOUND,
        NOT_FOUND,
    ],
    "CancelTask": [
        NOT_FOUND,
        E_CANCEL,
        E_CANCEL,
        cannot("cancelled", "Processing"),
        cannot("cancelled", "Succeeded"),
        cannot("cancelled", "Failed"),
        cannot("cancelled", "Cancelled"),
        NOT_FOUND,
        NOT_FOUND,
    ],
    "DeleteTask": [
        NOT_FOUND,
        cannot("deleted", "Starting"),
        cannot("deleted", "Starting"),
        cannot("deleted", "Processing"),
        E_DELETE,
        E_DELETE,
        E_DELETE,
        NOT_FOUND,
        NOT_FOUND,
    ],
    # A pending update is a new run: its first claim is attempt 1 again.
    "ClaimTask": [
        NOT_FOUND,
        E_CLAIM_1,
        E_CLAIM_1,
        cannot("claimed", "Processing"),
        cannot("claimed", "Succeeded"),
        cannot("claimed", "Failed"),
        cannot("claimed", "Cancelled"),
        NOT_FOUND,
        NOT_FOUND,
    ],
    "ExtendLease": [
        NOT_FOUND,
        lease_lost("Starting"),
        lease_lost("Starting"),
        E_EXTEND,
        lease_lost("Succeeded"),
        lease_lost("Failed"),
        lease_lost("Cancelled"),
        NOT_FOUND,
        NOT_FOUND,
    ],
    "ReleaseTask": [
        NOT_FOUND,
        lease_lost("Starting"),
        lease_lost("Starting"),
        E_RELEASE,
        lease_lost("Succeeded"),
        lease_lost("Failed"),
        lease_lost("Cancelled"),
        NOT_FOUND,
        NOT_FOUND,
    ],
    "CompleteTask": [
        NOT_FOUND,
        lease_lost("Starting"),
        lease_lost("Starting"),
        E_COMPLETE,
        lease_lost("Succeeded"),
        lease_lost("Failed"),
        lease_lost("Cancelled"),
        NOT_FOUND,
        NOT_FOUND,
    ],
    "FailTask": [
        NOT_FOUND,
        lease_lost("Starting"),
        lease_lost("Starting"),
        E_FAIL,
        lease_lost("Succeeded"),
        lease_lost("Failed"),
        lease_lost("Cancelled"),
        NOT_FOUND,
        NOT_FOUND,
    ],
    # The sweepers never raise: nothing to do is [].
    "ExpireLease": [[], [], [], E_LEASE_EXPIRED, [], [], [], [], []],
    "ExpireTask": [[], [], [], [], E_EXPIRED, E_EXPIRED, E_EXPIRED, [], []],
}

# For every cell that appends events: the folded status, message and tombstone, and what the
# very same command does when repeated against the folded state (never applied twice).
PRIOR_SUCCEEDED_MESSAGE = "Task succeeded"
AFTER = {
    ("never-created", "CreateTask"): ("Starting", "Task queued", None, EXISTS),
    ("Succeeded", "UpdateTask"): (
        "Starting",
        "Task queued for update",
        None,
        cannot("updated", "Starting"),
    ),
    ("Failed", "UpdateTask"): (
        "Starting",
        "Task queued for update",
        None,
        cannot("updated", "Starting"),
    ),
    ("Starting (new)", "CancelTask"): (
        "Cancelled",
        "Task cancelled",
        None,
        cannot("cancelled", "Cancelled"),
    ),
    # Cancelling a pending update puts the task back as it was: Succeeded.
    ("Starting (pending update)", "CancelTask"): (
        "Succeeded",
        PRIOR_SUCCEEDED_MESSAGE,
        None,
        cannot("cancelled", "Succeeded"),
    ),
    ("Succeeded", "DeleteTask"): ("Succeeded", "Task succeeded", "deleted", NOT_FOUND),
    ("Failed", "DeleteTask"): ("Failed", "boom", "deleted", NOT_FOUND),
    ("Cancelled", "DeleteTask"): ("Cancelled", "Task cancelled", "deleted", NOT_FOUND),
    ("Starting (new)", "ClaimTask"): (
        "Processing",
        "Task started",
        None,
        cannot("claimed", "Processing"),
    ),
    ("Starting (pending update)", "ClaimTask"): (
        "Processing",
        "Task started",
        None,
        cannot("claimed", "Processing"),
    ),
    # A heartbeat may repeat: the lease is simply extended again.
    ("Processing", "ExtendLease"): ("Processing", "Task started", None, E_EXTEND),
    ("Processing", "ReleaseTask"): (
        "Starting",
        "Task re-queued: the worker released it",
        None,
        lease_lost("Starting"),
    ),
    ("Processing", "CompleteTask"): ("Succeeded", "Task succeeded", None, lease_lost("Succeeded")),
    ("Processing", "FailTask"): ("Failed", "kaput", None, lease_lost("Failed")),
    ("Processing", "ExpireLease"): (
        "Starting",
        "Task re-queued: the worker's lease expired",
        None,
        [],
    ),
    ("Succeeded", "ExpireTask"): ("Succeeded", "Task succeeded", "expired", []),
    ("Failed", "ExpireTask"): ("Failed", "boom", "expired", []),
    ("Cancelled", "ExpireTask"): ("Cancelled", "Task cancelled", "expired", []),
}

CASES = [
    pytest.param(status, name, THEN[name][column], id=f"{name}-when-{status}")
    for name in WHEN
    for column, status in enumerate(STATUSES)
]


def tell(story, then) -> None:
    """Finish ``story`` (a ``given(...).when(...)``) with a cell of a table: the events it
    decides, or the Refused it raises."""
    if isinstance(then, Refused):
        story.then_raises(then.error, then.message)
    else:
        story.then(*then)


def test_the_table_covers_every_status_and_command():
    assert set(THEN) == set(WHEN)
    assert all(len(row) == len(STATUSES) for row in THEN.values())
    appending = {
        (s, c)
        for c in THEN
        for s, t in zip(STATUSES, THEN[c], strict=True)
        if isinstance(t, list) and t
    }
    assert appending == set(AFTER)


@pytest.mark.parametrize(("history", "command", "then"), CASES)
def test_decide(history, command, then):
    story = given(*GIVEN[history]).when(WHEN[command])
    if isinstance(then, Refused) or not then:
        tell(story, then)
        return
    status, message, gone, again = AFTER[(history, command)]
    after = story.then(*then, again=again)
    assert (after.status, after.message, after.gone) == (status, message, gone)


def test_decide_is_pure_and_leaves_the_state_alone():
    before = state_of(GIVEN["Starting (new)"])
    copy = state_of(GIVEN["Starting (new)"])
    first = decide(WHEN["CancelTask"], before)
    assert decide(WHEN["CancelTask"], before) == first
    assert before == copy


# -- owner scoping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "command"),
    [
        ("Succeeded", UpdateTask(task_id=ID, at=NOW, configuration=PATCH, owner="mallory")),
        ("Starting (new)", CancelTask(task_id=ID, at=NOW, owner="mallory")),
        ("Starting (pending update)", CancelTask(task_id=ID, at=NOW, owner="mallory")),
        ("Cancelled", DeleteTask(task_id=ID, at=NOW, owner="mallory")),
        # Another owner learns nothing about the status either: not found, not "cannot".
        ("Processing", CancelTask(task_id=ID, at=NOW, owner="mallory")),
        ("Processing", DeleteTask(task_id=ID, at=NOW, owner="mallory")),
    ],
)
def test_another_owners_task_is_not_found(history, command):
    given(*GIVEN[history]).when(command).then_raises(TaskNotFound, "Task not found")


@pytest.mark.parametrize(
    ("history", "command", "then"),
    [
        ("Succeeded", UpdateTask(task_id=ID, at=NOW, configuration=PATCH, owner=OWNER), E_UPDATE),
        (
            "Starting (new)",
            CancelTask(task_id=ID, at=NOW, owner=OWNER, reason="no longer needed"),
            E_CANCEL,
        ),
        ("Cancelled", DeleteTask(task_id=ID, at=NOW, owner=OWNER), E_DELETE),
        (
            "Processing",
            CancelTask(task_id=ID, at=NOW, owner=OWNER),
            cannot("cancelled", "Processing"),
        ),
    ],
)
def test_the_owner_sees_its_own_task(history, command, then):
    tell(given(*GIVEN[history]).when(command), then)


# -- leases -------------------------------------------------------------------------------------

HELD_BY_ANOTHER = "Worker w2 does not hold the lease on this task: it is held by another worker"


@pytest.mark.parametrize(
    "command",
    [
        ExtendLease(task_id=ID, at=NOW, worker_id="w2", lease_until=at(130)),
        ReleaseTask(task_id=ID, at=NOW, worker_id="w2"),
        CompleteTask(task_id=ID, at=NOW, worker_id="w2", output=OUTPUT2),
        FailTask(task_id=ID, at=NOW, worker_id="w2", error="kaput"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_worker_without_the_lease_is_refused(command):
    given(*GIVEN["Processing"]).when(command).then_raises(LeaseLost, HELD_BY_ANOTHER)


def test_a_worker_whose_lease_expired_cannot_complete_after_another_claimed():
    story = given(
        created(),
        claimed(worker="w2"),
        lease_expired(worker="w2"),
        claimed(t=40, worker="w1", attempt=2),
    )
    late = CompleteTask(task_id=ID, at=at(41), worker_id="w2", output=OUTPUT2)
    story.when(late).then_raises(LeaseLost, HELD_BY_ANOTHER)
    # ... and the current holder still can.
    story.when(CompleteTask(task_id=ID, at=at(42), worker_id="w1", output=OUTPUT2)).then(
        Succeeded(task_id=ID, at=at(42), worker_id="w1", output=OUTPUT2)
    )


def test_expire_lease_before_lease_until_does_nothing():
    story = given(created(), claimed(t=1, lease=30))  # lease_until = at(31)
    story.when(ExpireLease(task_id=ID, at=at(30.999))).then()
    story.when(ExpireLease(task_id=ID, at=at(31))).then(
        LeaseExpired(task_id=ID, at=at(31), worker_id=WORKER, attempt=1)
    )


def test_a_heartbeat_moves_the_lease_end():
    heartbeat = LeaseExtended(task_id=ID, at=at(20), worker_id=WORKER, lease_until=at(80))
    # A heartbeat may repeat: the same command extends the lease again.
    extended = (
        given(created(), claimed(t=1, lease=30))
        .when(ExtendLease(task_id=ID, at=at(20), worker_id=WORKER, lease_until=at(80)))
        .then(heartbeat, again=[heartbeat])
    )
    assert extended.lease_until == at(80)
    story = given(created(), claimed(t=1, lease=30), heartbeat)
    story.when(ExpireLease(task_id=ID, at=at(31))).then()
    story.when(ExpireLease(task_id=ID, at=at(80))).then(
        LeaseExpired(task_id=ID, at=at(80), worker_id=WORKER, attempt=1)
    )


def test_lease_expiry_requeues_until_attempts_are_exhausted():
    history = [created()]
    for attempt in (1, 2):
        t = attempt * 100
        history.append(claimed(t=t, attempt=attempt))
        events = decide(ExpireLease(task_id=ID, at=at(t + 30)), fold(history))
        assert events == [
            LeaseExpired(task_id=ID, at=at(t + 30), worker_id=WORKER, attempt=attempt)
        ]
        history += events
        assert fold(history).status == "Starting"
    history.append(claimed(t=300, attempt=3))
    assert decide(
        ClaimTask(task_id=ID, at=at(1), worker_id="x", lease_until=at(2)), fold(history[:-1])
    ) == [Claimed(task_id=ID, at=at(1), worker_id="x", lease_until=at(2), attempt=3)]
    events = decide(ExpireLease(task_id=ID, at=at(330)), fold(history))
    assert events == [
        LeaseExpired(task_id=ID, at=at(330), worker_id=WORKER, attempt=3),
        TimedOut(task_id=ID, at=at(330), attempt=3),
    ]
    after = fold(events, fold(history))
    assert (after.status, after.message) == ("Failed", "Task timed out")
    assert (after.worker_id, after.lease_until) == (None, None)
    assert after.finished_at == at(330)
    assert after.expires_at == at(330 + EXPIRES_IN)
    assert decide(ExpireLease(task_id=ID, at=at(400)), after) == []
    assert_outcome(
        outcome(ClaimTask(task_id=ID, at=at(400), worker_id="x", lease_until=at(401)), after),
        cannot("claimed", "Failed"),
    )


def test_max_attempts_comes_from_the_command():
    given(created(), claimed(attempt=1)).when(
        ExpireLease(task_id=ID, at=at(31), max_attempts=1)
    ).then(
        LeaseExpired(task_id=ID, at=at(31), worker_id=WORKER, attempt=1),
        TimedOut(task_id=ID, at=at(31), attempt=1),
    )


def test_an_update_gets_all_its_attempts_again():
    """Attempts count claims of one run; earlier runs must not eat into an update's retries."""
    history = [
        created(),
        claimed(t=1),
        lease_expired(t=31),
        claimed(t=40, attempt=2),
        succeeded(t=41),
        update_requested(t=50),
    ]
    for n in (1, 2):
        t = 100 * n
        claim = decide(
            ClaimTask(task_id=ID, at=at(t), worker_id=WORKER, lease_until=at(t + 30)), fold(history)
        )
        assert claim == [
            Claimed(task_id=ID, at=at(t), worker_id=WORKER, lease_until=at(t + 30), attempt=n)
        ]
        history += claim
        requeue = decide(ExpireLease(task_id=ID, at=at(t + 30)), fold(history))
        assert requeue == [LeaseExpired(task_id=ID, at=at(t + 30), worker_id=WORKER, attempt=n)]
        history += requeue
    assert fold(history).status == "Starting"


def test_release_requeues_without_using_up_an_attempt():
    released = lease_expired(t=5, attempt=1, reason="released")
    after = (
        given(created(), claimed(attempt=1))
        .when(ReleaseTask(task_id=ID, at=at(5), worker_id=WORKER))
        .then(released)
    )
    assert (after.status, after.message, after.worker_id) == (
        "Starting",
        "Task re-queued: the worker released it",
        None,
    )
    # A worker that hands a task back on shutdown did not try it: the next claim is attempt 1
    # again, so restarting workers never runs a task out of attempts.
    given(created(), claimed(attempt=1), released).when(
        ClaimTask(task_id=ID, at=at(6), worker_id="w2", lease_until=at(36))
    ).then(Claimed(task_id=ID, at=at(6), worker_id="w2", lease_until=at(36), attempt=1))


# -- expiry -------------------------------------------------------------------------------------


def test_expire_task_waits_for_expires_at():
    history = [created(), claimed(), succeeded(t=2)]
    due = at(2 + EXPIRES_IN)
    assert state_of(history).expires_at == due
    given(*history).when(ExpireTask(task_id=ID, at=due - timedelta(seconds=0.5))).then()
    given(*history).when(ExpireTask(task_id=ID, at=due)).then(Expired(task_id=ID, at=due))


def test_a_task_without_expires_in_never_expires():
    history = [created(expires_in=None), claimed(), succeeded()]
    assert state_of(history).expires_at is None
    given(*history).when(ExpireTask(task_id=ID, at=at(10**8))).then()


def test_a_pending_update_does_not_expire_on_the_old_expiry():
    history = GIVEN["Starting (pending update)"]
    # still the finished run's expiry, but the task is Starting again
    assert state_of(history).expires_at == at(2 + EXPIRES_IN)
    given(*history).when(ExpireTask(task_id=ID, at=at(10 * EXPIRES_IN))).then()


# -- configuration update ----------------------------------------------------------------------


def test_update_replaces_each_sent_field_whole_and_keeps_the_others():
    current = {
        "chunk_processing": {
            "target_length": 512,
            "ignore_headers_and_footers": False,
            "tokenizer": {"String": "bert-base-uncased"},
        },
        "ocr_strategy": "All",
        "segmentation_strategy": "Page",
    }
    state = state_of([created(configuration=current), claimed(), succeeded()])
    sent = {
        "chunk_processing": {
            "target_length": 7,
            "ignore_headers_and_footers": True,
            "tokenizer": {"Enum": "Word"},
        },
        "ocr_strategy": "Auto",
    }
    (event,) = decide(UpdateTask(task_id=ID, at=NOW, configuration=sent), state)
    # chunk_processing is the one sent, not a merge of old and new (no tokenizer with both
    # Enum and String); segmentation_strategy, not sent, is kept.
    assert event.configuration == {**sent, "segmentation_strategy": "Page"}
    # The task's configuration before the update is untouched.
    assert state.configuration == current
    assert fold([event], state).configuration == event.configuration


def test_updated_configuration_is_a_top_level_replace():
    assert updated_configuration({"a": {"b": 1}}, {"a": None}) == {"a": None}
    assert updated_configuration({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3}}
    assert updated_configuration({"a": {"b": 1, "c": 2}}, {}) == {"a": {"b": 1, "c": 2}}


def test_update_can_change_expires_in_through_the_configuration():
    updated = (
        given(created(), claimed(), succeeded())
        .when(UpdateTask(task_id=ID, at=NOW, configuration={"expires_in": 5}))
        .then(
            UpdateRequested(
                task_id=ID, at=NOW, configuration={**CONFIG, "expires_in": 5}, expires_in=5
            )
        )
    )
    assert updated.expires_in == 5
    after = fold([claimed(t=101, attempt=1), succeeded(t=102)], updated)
    assert after.expires_at == at(102 + 5)


def test_cancelling_a_pending_update_restores_the_prior_state():
    before = [created(), claimed(), succeeded()]
    after = (
        given(*before, update_requested(configuration=MERGED))
        .when(CancelTask(task_id=ID, at=NOW))
        .then(Cancelled(task_id=ID, at=NOW), again=cannot("cancelled", "Succeeded"))
    )
    prior = fold(before)
    assert (after.status, after.message, after.configuration, after.output) == (
        prior.status,
        prior.message,
        prior.configuration,
        prior.output,
    )
    assert after.prior is None


def test_folding_nothing_needs_an_initial_state():
    with pytest.raises(ValueError):
        fold([])
    assert fold([], initial_state(ID)) == initial_state(ID)


# -- the cap on a task's events -------------------------------------------------------------------


def at_the_limit(limit: int) -> Refused:
    return Refused(
        EventLimitReached, f"This task has reached its limit of {limit} events; create a new task"
    )


@pytest.mark.parametrize(
    ("limit", "then"),
    [
        (None, "updated"),
        (4, "updated"),  # the update is the 4th event: allowed
        (3, at_the_limit(3)),  # the stream holds 3: no more updates
        (1, at_the_limit(1)),
    ],
)
def test_an_update_is_refused_once_the_stream_holds_max_events(limit, then):
    story = given(created(), claimed(), succeeded()).when(
        UpdateTask(task_id=ID, at=NOW, configuration=PATCH, max_events=limit)
    )
    if then == "updated":
        story.then(E_UPDATE[0])
    else:
        story.then_raises(then.error, then.message)


def test_the_limit_is_told_before_the_status_but_not_before_not_found():
    # The limit never lifts; the status might: a client is told the lasting reason first.
    given(created(), claimed()).when(
        UpdateTask(task_id=ID, at=NOW, configuration=PATCH, max_events=2)
    ).then_raises(EventLimitReached, at_the_limit(2).message)
    given(created(), cancelled(), deleted()).when(
        UpdateTask(task_id=ID, at=NOW, configuration=PATCH, max_events=1)
    ).then_raises(TaskNotFound, "Task not found")


def test_only_an_update_carries_the_limit():
    # The one command that starts a task over. The others end something (cancel, delete) or
    # finish the run under way (the workers' and the sweepers'), and must never be stranded.
    carrying = [c for c in AnyCommand.__args__ if "max_events" in c.__struct_fields__]
    assert carrying == [UpdateTask]


def test_at_the_limit_the_run_under_way_finishes_and_a_pending_update_can_be_cancelled():
    pending = [created(), claimed(), succeeded(), update_requested()]  # 4 events: at the limit
    update = UpdateTask(task_id=ID, at=NOW, configuration=PATCH, max_events=4)
    given(*pending).when(update).then_raises(EventLimitReached, at_the_limit(4).message)
    given(*pending).when(CancelTask(task_id=ID, at=NOW)).then(Cancelled(task_id=ID, at=NOW))
    claim = ClaimTask(task_id=ID, at=NOW, worker_id=WORKER, lease_until=at(130))
    running = (
        given(*pending)
        .when(claim)
        .then(
            Claimed(task_id=ID, at=NOW, worker_id=WORKER, lease_until=at(130), attempt=1),
            again=cannot("claimed", "Processing"),
        )
    )
    events = [
        *pending,
        Claimed(task_id=ID, at=NOW, worker_id=WORKER, lease_until=at(130), attempt=1),
    ]
    assert running.version == 5
    given(*events).when(WHEN["ExtendLease"]).then(*E_EXTEND, again=E_EXTEND)
    given(*events).when(WHEN["CompleteTask"]).then(*E_COMPLETE)
    finished = fold(E_COMPLETE, running)
    assert outcome(update, finished).message == at_the_limit(4).message
    assert decide(DeleteTask(task_id=ID, at=NOW), finished) == E_DELETE
