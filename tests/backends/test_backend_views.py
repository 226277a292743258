"""TaskViews contract: task rows (folded states), the task list and its visibility, due leases
and expiries, the claim queue, the owners' feed entries and the event feed, checkpoints, and
clear."""

from __future__ import annotations

import pytest
from backend_support import (
    OWNER,
    append,
    at,
    cancelled,
    claimed,
    created,
    deleted,
    expired,
    extended,
    failed,
    feed_entries,
    succeeded,
    update_requested,
    write_task,
)

from ledger.decider import fold, is_visible
from ledger.events import tag_of
from ledger.log import FeedEntry, FeedQuery, TaskQuery, stream_id_for

# -- task rows ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "events",
    [
        [created("a", 0)],
        [created("a", 0, expires_in=None), claimed("a", 1)],
        [created("a", 0), claimed("a", 1), succeeded("a", 2), update_requested("a", 3)],
        [created("a", 0), claimed("a", 1), failed("a", 2), deleted("a", 4)],
    ],
    ids=["starting", "processing", "pending-update", "deleted"],
)
def test_save_task_then_load_task_gives_the_state_back(backend, events):
    state = fold(events)
    with backend.log.transaction() as tx:
        backend.views.save_task(tx, state)
    assert backend.views.load_task("a") == state
    assert list(backend.views.stored_states()) == [("a", state)]


def test_save_task_replaces_the_row_and_load_task_of_an_unknown_task_is_none(backend):
    write_task(backend, [created("a", 0)])
    later = write_task(backend, [created("b", 0), claimed("b", 1)])
    with backend.log.transaction() as tx:
        backend.views.save_task(tx, fold([created("a", 0), cancelled("a", 1)]))
    assert backend.views.load_task("a") == fold([created("a", 0), cancelled("a", 1)])
    assert backend.views.load_task("b") == later
    assert backend.views.load_task("nobody") is None
    assert sorted(t for t, _ in backend.views.stored_states()) == ["a", "b"]


# -- list_tasks -----------------------------------------------------------------------------------


@pytest.fixture
def tasks(backend):
    """Six tasks, created at t = 0, 10, ... 60 (E at 50 is deleted)."""
    stories = [
        [created("A", 0)],
        [created("B", 10, owner="bob")],
        [created("C", 20, expires_in=100), claimed("C", 21), succeeded("C", 22)],  # until 122
        # succeeded (until 132), then an update is pending: not finished, so never expires
        [
            created("D", 30, expires_in=100),
            claimed("D", 31),
            succeeded("D", 32),
            update_requested("D", 40),
        ],
        [created("E", 50), cancelled("E", 51), deleted("E", 52)],
        [created("F", 60, owner="bob", expires_in=10), claimed("F", 61), failed("F", 62)],
    ]
    return {events[0].task_id: write_task(backend, events) for events in stories}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (dict(at=at(71)), "FDCBA"),
        (dict(at=at(72)), "DCBA"),  # F stops at its expires_at
        (dict(at=at(121)), "DCBA"),
        (dict(at=at(122)), "DBA"),
        (dict(at=at(10_000)), "DBA"),  # a pending update is listed, however late
        (dict(at=at(71), owner="alice"), "DCA"),
        (dict(at=at(71), owner="bob"), "FB"),
        (dict(at=at(71), owner="carol"), ""),
        (dict(at=at(71), limit=2), "FD"),
        (dict(at=at(71), limit=2, offset=2), "CB"),
        (dict(at=at(71), limit=10, offset=4), "A"),
        (dict(at=at(71), offset=3), "BA"),
        (dict(at=at(71), offset=5), ""),
        (dict(at=at(71), start=at(10), end=at(30)), "DCB"),  # both ends included
        (dict(at=at(71), start=at(11)), "FDC"),
        (dict(at=at(71), end=at(9)), "A"),
        (dict(at=at(71), owner="alice", start=at(10), limit=1, offset=1), "C"),
    ],
)
def test_list_tasks(backend, tasks, query, expected):
    query = TaskQuery(**query)
    listed = backend.views.list_tasks(query)
    assert "".join(state.task_id for state in listed) == expected
    assert all(state == tasks[state.task_id] for state in listed)


@pytest.mark.parametrize("seconds", [0, 21, 71, 72, 121, 122, 200])
def test_list_tasks_shows_exactly_the_tasks_the_decider_calls_visible(backend, tasks, seconds):
    visible = {t for t, state in tasks.items() if is_visible(state, at(seconds))}
    listed = backend.views.list_tasks(TaskQuery(at=at(seconds)))
    assert {state.task_id for state in listed} == visible


# -- due leases and expiries ----------------------------------------------------------------------


@pytest.fixture
def leases(backend):
    """Task ids that sort otherwise than their leases end: q (10), p (30), r (50 once
    extended); a finished task and a queued one hold no lease."""
    write_task(backend, [created("p", 0), claimed("p", 0, lease=30)])
    write_task(backend, [created("q", 0), claimed("q", 0, lease=10)])
    write_task(backend, [created("r", 0), claimed("r", 0, lease=5), extended("r", 1, until=50)])
    write_task(backend, [created("done", 0), claimed("done", 0, lease=1), succeeded("done", 1)])
    write_task(backend, [created("queued", 0)])


@pytest.mark.parametrize(
    ("seconds", "limit", "expected"),
    [
        (9, 500, ""),
        (10, 500, "q"),
        (29, 500, "q"),
        (30, 500, "qp"),
        (100, 500, "qpr"),
        (100, 2, "qp"),
        (100, 1, "q"),
    ],
)
def test_due_leases_in_order_of_their_end(backend, leases, seconds, limit, expected):
    assert backend.views.due_leases(at(seconds), limit) == list(expected)


@pytest.fixture
def expiries(backend):
    """Finished tasks whose ids sort otherwise than they expire: m (7), k (12), n (101); the
    others never come due."""
    write_task(backend, [created("k", 0, expires_in=10), claimed("k", 1), succeeded("k", 2)])
    write_task(backend, [created("m", 0, expires_in=5), claimed("m", 1), failed("m", 2)])
    write_task(backend, [created("n", 0, expires_in=100), cancelled("n", 1)])
    write_task(
        backend,
        [
            created("pending", 0, expires_in=1),
            claimed("pending", 1),
            succeeded("pending", 2),
            update_requested("pending", 2.5),
        ],
    )
    write_task(backend, [created("forever", 0, expires_in=None), cancelled("forever", 1)])
    write_task(
        backend, [created("gone", 0, expires_in=1), cancelled("gone", 1), expired("gone", 3)]
    )
    write_task(backend, [created("queued", 0, expires_in=1)])


@pytest.mark.parametrize(
    ("seconds", "limit", "expected"),
    [
        (6, 500, ""),
        (7, 500, "m"),
        (11, 500, "m"),
        (12, 500, "mk"),
        (10_000, 500, "mkn"),
        (10_000, 2, "mk"),
    ],
)
def test_due_expiries_in_order_of_their_end(backend, expiries, seconds, limit, expected):
    assert backend.views.due_expiries(at(seconds), limit) == list(expected)


# -- the queue ------------------------------------------------------------------------------------


def test_the_queue_is_fifo_by_position(backend):
    assert backend.views.queue_head() is None
    assert backend.views.queue_entries() == []
    with backend.log.transaction() as tx:
        for task_id, position in (("a", 5), ("b", 3), ("c", 9)):
            backend.views.enqueue(tx, task_id, position)
    assert backend.views.queue_entries() == [("b", 3), ("a", 5), ("c", 9)]
    assert backend.views.queue_head() == "b"
    with backend.log.transaction() as tx:
        backend.views.dequeue(tx, "b")
        backend.views.dequeue(tx, "not-queued")
    assert backend.views.queue_head() == "a"
    with backend.log.transaction() as tx:
        backend.views.enqueue(tx, "d", 1)
        backend.views.dequeue(tx, "a")
    assert backend.views.queue_entries() == [("d", 1), ("c", 9)]
    assert backend.views.queue_head() == "d"
    with backend.log.transaction() as tx:
        backend.views.dequeue(tx, "d")
        backend.views.dequeue(tx, "c")
    assert backend.views.queue_head() is None
    assert backend.views.queue_entries() == []


def test_status_counts_and_queue_summary_count_the_rows_that_are_not_gone(backend):
    assert backend.views.status_counts() == {}
    assert backend.views.queue_summary() == (0, None)
    write_task(backend, [created("a", 5)], queued=True)
    write_task(backend, [created("b", 1)], queued=True)
    write_task(backend, [created("c", 2), claimed("c", 3)])
    write_task(backend, [created("d", 0), claimed("d", 1), succeeded("d", 2)])
    write_task(backend, [created("e", 0), cancelled("e", 1), deleted("e", 2)])
    assert backend.views.status_counts() == {"Starting": 2, "Processing": 1, "Succeeded": 1}
    # The head of the queue is the lowest position ("a" was queued first), not the oldest task.
    assert backend.views.queue_summary() == (2, at(5))
    with backend.log.transaction() as tx:
        backend.views.dequeue(tx, "a")
        assert backend.views.queue_summary(tx=tx) == (1, at(1))
    assert backend.views.queue_summary() == (1, at(1))


# -- the feed -------------------------------------------------------------------------------------


@pytest.fixture
def feed_log(backend):
    """A (alice): created, claimed, succeeded; B (bob): created, cancelled; C (alice): created;
    interleaved A1 B1 A2 C1 B2 A3, each with its row and its owner's feed entries. Returns each
    event by its label."""
    story = [
        ("A1", created("A", 0)),
        ("B1", created("B", 1, owner="bob")),
        ("A2", claimed("A", 2)),
        ("C1", created("C", 3)),
        ("B2", cancelled("B", 4)),
        ("A3", succeeded("A", 5)),
    ]
    recorded, versions = {}, {}
    for label, event in story:
        task_id = event.task_id
        (recorded[label],) = append(backend, task_id, [event], expected=versions.get(task_id, 0))
        versions[task_id] = versions.get(task_id, 0) + 1
    with backend.log.transaction() as tx:
        for task_id in versions:
            events = [e for e in recorded.values() if e.stream_id == stream_id_for(task_id)]
            state = fold(e.event for e in events)
            backend.views.save_task(tx, state)
            backend.views.add_to_feed(tx, feed_entries(state.owner, events))
    return recorded


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (dict(), "A1 B1 A2 C1 B2 A3"),
        (dict(limit=2), "A1 B1"),
        (dict(after="B1", limit=2), "A2 C1"),
        (dict(after="A3"), ""),
        (dict(owner="alice"), "A1 A2 C1 A3"),
        (dict(owner="bob"), "B1 B2"),
        (dict(owner="carol"), ""),
        (dict(types=("task_created",)), "A1 B1 C1"),
        (dict(types=("claimed", "succeeded")), "A2 A3"),
        (dict(types=("expired",)), ""),
        (dict(task_id="A"), "A1 A2 A3"),
        (dict(task_id="A", after="A2"), "A3"),
        (dict(owner="alice", types=("task_created",), after="A1"), "C1"),
        (dict(owner="alice", task_id="B"), ""),
        (dict(owner="alice", task_id="A", after="A1"), "A2 A3"),
        (dict(owner="alice", limit=2, after="A1"), "A2 C1"),
        (dict(owner="bob", types=("cancelled",)), "B2"),
    ],
)
def test_feed(backend, feed_log, query, expected):
    query = dict(query)  # the parameter's dict is every backend's: a label stays a label
    if "after" in query:
        query["after"] = feed_log[query["after"]].position
    page = backend.views.feed(FeedQuery(**query))
    by_position = {e.position: label for label, e in feed_log.items()}
    assert " ".join(by_position[e.position] for e in page) == expected
    assert page == [feed_log[label] for label in expected.split()]


def test_an_owners_feed_is_their_entries_and_the_whole_feed_is_the_log(backend, feed_log):
    def labels(**query):
        by_position = {e.position: label for label, e in feed_log.items()}
        return " ".join(by_position[e.position] for e in backend.views.feed(FeedQuery(**query)))

    with backend.log.transaction() as tx:
        backend.views.drop_from_feed(tx, "B")
        backend.views.drop_from_feed(tx, "never-fed")
    assert labels(owner="bob") == ""
    assert labels(owner="alice") == "A1 A2 C1 A3"
    # The whole feed, and any one task's, are the log's: an admin audits everything.
    assert labels() == "A1 B1 A2 C1 B2 A3"
    assert labels(task_id="B") == "B1 B2"
    # Entries are what an owner's feed reads: the tombstone put back alone is all bob sees.
    with backend.log.transaction() as tx:
        backend.views.add_to_feed(tx, feed_entries("bob", [feed_log["B2"]]))
    assert labels(owner="bob") == "B2"


def test_feed_entries_come_in_task_order_then_position_and_clear_empties_them(backend, feed_log):
    entries = list(backend.views.feed_entries())
    assert [(e.task_id, e.position) for e in entries] == [
        (task_id, feed_log[label].position)
        for task_id, label in [("A", "A1"), ("A", "A2"), ("A", "A3"), ("B", "B1"), ("B", "B2")]
        + [("C", "C1")]
    ]
    assert entries[0] == FeedEntry(
        position=feed_log["A1"].position, owner="alice", task_id="A", type="task_created"
    )
    assert {e.owner for e in entries if e.task_id == "B"} == {"bob"}
    with backend.log.transaction() as tx:
        backend.views.clear(tx)
    assert list(backend.views.feed_entries()) == []
    assert backend.views.feed(FeedQuery(owner="alice")) == []
    assert len(backend.views.feed(FeedQuery())) == 6, "the log itself is kept"


def test_visible_at_leaves_out_the_tasks_past_visible_until_and_keeps_tombstones(backend):
    """V finished at 1 and stops being visible at 11; G expired (its tombstone alone is in the
    feed); W is Starting, visible however late."""
    write_task(backend, [created("V", 0, expires_in=10), cancelled("V", 1)])
    write_task(backend, [created("W", 2)])
    write_task(backend, [created("G", 3, expires_in=1), cancelled("G", 4), expired("G", 6)])

    def types(seconds=None, **query):
        when = at(seconds) if seconds is not None else None
        found = backend.views.feed(FeedQuery(owner=OWNER, visible_at=when, **query))
        return [(e.event.task_id, tag_of(type(e.event))) for e in found]

    everything = [
        ("V", "task_created"),
        ("V", "cancelled"),
        ("W", "task_created"),
        ("G", "expired"),
    ]
    assert types() == everything
    assert types(10) == everything
    assert types(11) == everything[2:]
    assert types(11, task_id="V") == []
    assert types(10_000, types=("expired",)) == [("G", "expired")]
    # Without an owner, visible_at changes nothing: the log is read as it is.
    assert len(backend.views.feed(FeedQuery(visible_at=at(11)))) == 6


# -- checkpoints ----------------------------------------------------------------------------------


def states(events):
    """The state after each event: states[0] after the first."""
    return [fold(events[: n + 1]) for n in range(len(events))]


STORY = [
    created("a", 0),
    claimed("a", 1),
    succeeded("a", 2),
    update_requested("a", 3),
    cancelled("a", 4),
    update_requested("a", 5),
    cancelled("a", 6),
    deleted("a", 7),
]


def test_load_checkpoint_gives_the_latest_at_or_before_a_version(backend, other):
    after = states(STORY)
    with backend.log.transaction() as tx:
        for version in (2, 4, 6):
            backend.views.save_checkpoint(tx, after[version - 1])
        backend.views.save_checkpoint(tx, fold([created("b", 0)]))
    expected = {1: None, 2: 2, 3: 2, 4: 4, 5: 4, 6: 6, 8: 6, 10**9: 6}
    for version, found in expected.items():
        loaded = other.views.load_checkpoint("a", version)
        assert loaded == (after[found - 1] if found else None), version
    assert other.views.load_checkpoint("b", 1) == fold([created("b", 0)])
    assert other.views.load_checkpoint("nobody", 10) is None


def test_stored_checkpoints_in_task_then_version_order(backend):
    a, b = states(STORY), states([created("b", 0), claimed("b", 1), failed("b", 2)])
    with backend.log.transaction() as tx:
        for state in (b[2], a[5], b[0], a[1]):
            backend.views.save_checkpoint(tx, state)
        expected = [("a", 2, a[1]), ("a", 6, a[5]), ("b", 1, b[0]), ("b", 3, b[2])]
        assert list(backend.views.stored_checkpoints(tx=tx)) == expected
    assert list(backend.views.stored_checkpoints()) == expected


def test_a_checkpoint_saved_again_replaces_the_first(backend):
    first, second = fold(STORY[:2]), fold([created("a", 9), claimed("a", 10)])
    with backend.log.transaction() as tx:
        backend.views.save_checkpoint(tx, first)
        backend.views.save_checkpoint(tx, second)
    assert list(backend.views.stored_checkpoints()) == [("a", 2, second)]


def test_a_checkpoint_written_in_a_rolled_back_transaction_is_not_there(backend):
    with pytest.raises(RuntimeError), backend.log.transaction() as tx:
        backend.views.save_checkpoint(tx, fold(STORY[:2]))
        raise RuntimeError("undo")
    assert backend.views.load_checkpoint("a", 2) is None


# -- clear, and reads inside a transaction --------------------------------------------------------


def test_clear_empties_the_task_rows_the_queue_and_the_feed_and_keeps_the_log(backend):
    write_task(backend, [created("a", 0)], queued=True)
    write_task(backend, [created("b", 1), claimed("b", 2)])
    with backend.log.transaction() as tx:
        backend.views.save_checkpoint(tx, fold([created("b", 1), claimed("b", 2)]))
    last = backend.log.last_position()
    with backend.log.transaction() as tx:
        backend.views.clear(tx)
    assert list(backend.views.stored_checkpoints()) == []
    assert backend.views.load_checkpoint("b", 2) is None
    assert backend.views.load_task("a") is None
    assert list(backend.views.stored_states()) == []
    assert backend.views.list_tasks(TaskQuery(at=at(5))) == []
    assert backend.views.queue_head() is None
    assert backend.views.queue_entries() == []
    assert backend.views.due_leases(at(1000)) == []
    assert list(backend.views.feed_entries()) == []
    assert backend.log.last_position() == last
    assert len(backend.log.read_all()) == 3


def test_reads_with_tx_see_the_transactions_own_view_writes(backend, other):
    write_task(backend, [created("old", 0)], queued=True)
    query = TaskQuery(at=at(10))
    with backend.log.transaction() as tx:
        (event,) = append(backend, "new", [created("new", 5)], tx=tx)
        state = fold([event.event])
        backend.views.save_task(tx, state)
        backend.views.enqueue(tx, "new", event.position)
        backend.views.dequeue(tx, "old")
        assert backend.views.load_task("new", tx=tx) == state
        assert [s.task_id for s in backend.views.list_tasks(query, tx=tx)] == ["new", "old"]
        assert sorted(t for t, _ in backend.views.stored_states(tx=tx)) == ["new", "old"]
        assert backend.views.queue_head(tx=tx) == "new"
        assert backend.views.queue_entries(tx=tx) == [("new", event.position)]
        backend.views.add_to_feed(tx, feed_entries("alice", [event]))
        assert backend.views.feed(FeedQuery(task_id="new"), tx=tx) == [event]
        mine = FeedQuery(owner="alice", after=event.position - 1)
        assert backend.views.feed(mine, tx=tx) == [event]
        assert [e.task_id for e in backend.views.feed_entries(tx=tx)] == ["new", "old"]
        # another instance sees none of it before the commit
        assert other.views.load_task("new") is None
        assert other.views.queue_head() == "old"
        assert [s.task_id for s in other.views.list_tasks(query)] == ["old"]
        assert other.views.feed(FeedQuery(task_id="new")) == []
        assert other.views.feed(mine) == []
    assert other.views.queue_head() == "new"
    assert other.views.feed(mine) == [event]
    assert other.views.load_task("new") == state
