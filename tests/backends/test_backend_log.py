"""EventLog contract: appending and reading events, optimistic concurrency, a stream's range by
version, its version now and at a time, global positions, paging, the stored rows and their hash
chain, recorded_at that never goes backwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from backend_support import (
    append,
    assert_chain,
    assert_stored_matches,
    at,
    cancelled,
    claimed,
    created,
    deleted,
    env,
    populate,
    positions,
    stored,
    succeeded,
    update_requested,
)

from ledger.errors import ConcurrencyConflict
from ledger.log import SYSTEM, Actor, Envelope, stream_id_for

# -- append and read_stream -----------------------------------------------------------------------


def test_an_empty_log_has_nothing(backend):
    assert backend.log.last_position() == 0
    assert backend.log.read_stream(stream_id_for("a")) == []
    assert backend.log.read_all() == []
    assert list(backend.log.iter_all()) == []
    assert stored(backend) == []


def test_append_gives_versions_from_one_and_read_stream_gives_the_same_events(backend):
    events = [created("a", 0), claimed("a", 1), succeeded("a", 2)]
    recorded = append(backend, "a", events, envelope=env(5))

    assert [r.version for r in recorded] == [1, 2, 3]
    assert [r.event for r in recorded] == events
    assert all(r.stream_id == stream_id_for("a") for r in recorded)
    assert positions(recorded) == sorted(set(positions(recorded)))
    assert all(len(r.hash) == 64 for r in recorded)
    assert len({r.hash for r in recorded}) == 3
    assert backend.log.read_stream(stream_id_for("a")) == recorded
    assert backend.log.last_position() == recorded[-1].position


def test_a_later_append_continues_the_stream(backend):
    first = append(backend, "a", [created("a", 0)])
    second = append(backend, "a", [claimed("a", 1), succeeded("a", 2)], expected=1)
    assert [r.version for r in second] == [2, 3]
    assert second[0].position > first[0].position
    assert backend.log.read_stream(stream_id_for("a")) == first + second


@pytest.mark.parametrize(
    "envelope",
    [
        Envelope(
            recorded_at=datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
            actor=Actor(key_id="key-42", role="user"),
            request_id="req-abc",
            idempotency_key="idem-1",
        ),
        Envelope(recorded_at=datetime(2026, 3, 4, 9, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))),
        Envelope(
            recorded_at=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
            actor=Actor(key_id="w-key", role="worker"),
            request_id="req-é✓",
        ),
    ],
    ids=["user-with-everything", "system-in-another-zone", "worker-without-idempotency-key"],
)
def test_the_envelope_is_kept(backend, envelope):
    (recorded,) = append(backend, "a", [created("a", 0)], envelope=envelope)
    (read,) = backend.log.read_stream(stream_id_for("a"))
    for event in (recorded, read):
        assert event.recorded_at == envelope.recorded_at
        assert event.recorded_at.utcoffset() is not None
        assert event.actor == envelope.actor
        assert event.request_id == envelope.request_id
        assert event.idempotency_key == envelope.idempotency_key
    assert read == recorded


def test_the_system_actor_round_trips(backend):
    (recorded,) = append(backend, "a", [created("a", 0)], envelope=Envelope(recorded_at=at(0)))
    assert backend.log.read_stream(stream_id_for("a"))[0].actor == SYSTEM == recorded.actor


@pytest.mark.parametrize("expected", [0, 1, 3, 7])
def test_a_stale_expected_version_is_a_conflict_and_writes_nothing(backend, expected):
    recorded = append(backend, "a", [created("a", 0), claimed("a", 1)])
    rows = stored(backend)

    with pytest.raises(ConcurrencyConflict):
        append(backend, "a", [succeeded("a", 2), cancelled("a", 3)], expected=expected)

    assert backend.log.read_stream(stream_id_for("a")) == recorded
    assert stored(backend) == rows
    assert backend.log.last_position() == recorded[-1].position


def test_a_new_stream_must_be_expected_at_version_zero(backend):
    with pytest.raises(ConcurrencyConflict):
        append(backend, "a", [created("a", 0)], expected=1)
    assert backend.log.read_stream(stream_id_for("a")) == []
    assert backend.log.last_position() == 0


@pytest.mark.parametrize(("until", "count"), [(0, 0), (1, 1), (3, 3), (4, 4), (99, 4), (None, 4)])
def test_read_stream_until_version(backend, until, count):
    recorded = append(backend, "a", [created("a", 0), claimed("a", 1), succeeded("a", 2)])
    recorded += append(backend, "a", [cancelled("a", 3)], expected=3)
    append(backend, "b", [created("b", 4)])
    assert backend.log.read_stream(stream_id_for("a"), until_version=until) == recorded[:count]


@pytest.mark.parametrize(
    ("after", "until", "limit", "versions"),
    [
        (0, None, None, [1, 2, 3, 4, 5, 6]),
        (2, None, None, [3, 4, 5, 6]),
        (0, None, 2, [1, 2]),
        (2, None, 3, [3, 4, 5]),
        (4, None, 10, [5, 6]),
        (6, None, None, []),
        (99, None, None, []),
        (1, 4, None, [2, 3, 4]),
        (1, 4, 2, [2, 3]),
        (3, 3, None, []),
        (0, 1, 1, [1]),
    ],
)
def test_read_stream_gives_a_range_by_version(backend, after, until, limit, versions):
    recorded = append(backend, "a", [created("a", 0), claimed("a", 1), succeeded("a", 2)])
    append(backend, "b", [created("b", 3)])
    recorded += append(backend, "a", [update_requested("a", 4), cancelled("a", 5)], expected=3)
    recorded += append(backend, "a", [deleted("a", 6)], expected=5)
    read = backend.log.read_stream(
        stream_id_for("a"), after=after, until_version=until, limit=limit
    )
    assert [r.version for r in read] == versions
    assert read == [r for r in recorded if r.version in versions]


def test_stream_version_counts_the_streams_events(backend, other):
    assert backend.log.stream_version(stream_id_for("a")) == 0
    append(backend, "a", [created("a", 0), claimed("a", 1)])
    append(backend, "b", [created("b", 2)])
    append(backend, "a", [succeeded("a", 3)], expected=2)
    assert backend.log.stream_version(stream_id_for("a")) == 3
    assert other.log.stream_version(stream_id_for("b")) == 1
    with backend.log.transaction() as tx:
        append(backend, "b", [cancelled("b", 4)], expected=1, tx=tx)
        assert backend.log.stream_version(stream_id_for("b"), tx=tx) == 2
        assert other.log.stream_version(stream_id_for("b")) == 1


def test_version_at_is_the_last_version_recorded_by_then(backend):
    # One event per append, recorded at 10, 20, ... 70 s; two more at 80 s in one append; and
    # another stream's events in between, which do not count.
    for version in range(1, 8):
        event = created("a", 0) if version == 1 else claimed("a", version)
        append(backend, "a", [event], expected=version - 1, envelope=env(10 * version))
        append(
            backend,
            f"other-{version}",
            [created(f"other-{version}", 0)],
            envelope=env(10 * version + 5),
        )
    append(backend, "a", [cancelled("a", 8), deleted("a", 9)], expected=7, envelope=env(80))
    stream = stream_id_for("a")
    cases = {0: 0, 9.999: 0, 10: 1, 15: 1, 20: 2, 69.9: 6, 70: 7, 79: 7, 80: 9, 1e6: 9}
    for seconds, version in cases.items():
        assert backend.log.version_at(stream, at(seconds)) == version, seconds
    # A time in another zone is the same moment.
    assert backend.log.version_at(stream, at(30).astimezone(timezone(timedelta(hours=-5)))) == 3
    assert backend.log.version_at(stream_id_for("nobody"), at(1e6)) == 0


# -- global positions ---------------------------------------------------------------------------


def test_positions_are_global_and_strictly_increasing_across_streams(backend):
    recorded = []
    for n in range(3):
        for task_id in ("a", "b", "c"):
            event = [created, claimed, succeeded][n](task_id, n)
            recorded += append(backend, task_id, [event], expected=n)
    assert positions(recorded) == sorted(set(positions(recorded)))
    assert positions(backend.log.read_all()) == positions(recorded)
    assert backend.log.last_position() == recorded[-1].position


def test_a_rolled_back_append_leaves_no_trace_and_positions_keep_increasing(backend):
    (first,) = append(backend, "a", [created("a", 0)])
    with pytest.raises(RuntimeError, match="undo"):
        with backend.log.transaction() as tx:
            append(backend, "b", [created("b", 1)], tx=tx)
            raise RuntimeError("undo")
    assert backend.log.last_position() == first.position
    assert backend.log.read_stream(stream_id_for("b")) == []

    (later,) = append(backend, "c", [created("c", 2)])
    assert later.position > first.position
    assert positions(backend.log.read_all()) == [first.position, later.position]
    assert_chain(stored(backend))


def test_positions_survive_reopening(backends, backend):
    first = append(backend, "a", [created("a", 0), claimed("a", 1)])
    reopened = backends.attach(backend)
    (later,) = append(reopened, "b", [created("b", 2)])
    assert later.position > first[-1].position
    assert reopened.log.read_all() == first + [later]


# -- paging ---------------------------------------------------------------------------------------


@pytest.fixture
def seven(backend):
    """Seven events over three streams, in append order."""
    return populate(backend)


@pytest.mark.parametrize(
    ("after_index", "limit", "expected"),
    [
        (None, 1000, slice(0, 7)),
        (None, 3, slice(0, 3)),
        (2, 2, slice(3, 5)),
        (5, 10, slice(6, 7)),
        (6, 10, slice(7, 7)),
        (None, 0, slice(0, 0)),
    ],
)
def test_read_all_after_a_cursor_with_a_limit(backend, seven, after_index, limit, expected):
    after = 0 if after_index is None else seven[after_index].position
    assert backend.log.read_all(after, limit) == seven[expected]


@pytest.mark.parametrize("batch", [1, 2, 3, 6, 7, 100])
@pytest.mark.parametrize("after_index", [None, 0, 4, 6])
def test_iter_all_walks_every_event_after_the_cursor_whatever_the_batch(
    backend, seven, batch, after_index
):
    after = 0 if after_index is None else seven[after_index].position
    start = 0 if after_index is None else after_index + 1
    assert list(backend.log.iter_all(after, batch)) == seven[start:]


# -- the stored rows and their chain -------------------------------------------------------------


def test_iter_stored_gives_the_rows_as_written_and_their_chain_links(backend, seven):
    rows = stored(backend)
    assert len(rows) == len(seven)
    for row, event in zip(rows, seven, strict=True):
        assert_stored_matches(row, event)
    assert_chain(rows)


def test_iter_stored_after_a_cursor(backend, seven):
    assert stored(backend, after=seven[3].position) == stored(backend)[4:]
    assert stored(backend, after=seven[-1].position) == []


def test_a_later_append_links_to_the_chain_left_by_an_earlier_one(backends, backend):
    append(backend, "a", [created("a", 0)])
    reopened = backends.attach(backend)
    append(reopened, "a", [claimed("a", 1)], expected=1)
    append(backend, "b", [created("b", 2)])
    assert_chain(stored(backend))


def test_iter_by_stream_groups_each_stream_in_version_order(backend, seven):
    walked = list(backend.log.iter_by_stream())
    assert sorted(walked) == sorted(
        (e.stream_id, e.position, s.data) for e, s in zip(seven, stored(backend), strict=True)
    )
    streams = [stream_id for stream_id, _, _ in walked]
    groups = [s for n, s in enumerate(streams) if n == 0 or streams[n - 1] != s]
    assert len(groups) == len(set(groups)), f"a stream comes in more than one run: {streams}"
    for stream_id in set(streams):
        in_walk = [position for s, position, _ in walked if s == stream_id]
        assert in_walk == positions(backend.log.read_stream(stream_id))


def test_iter_data_gives_every_event_in_position_order(backend, seven):
    assert list(backend.log.iter_data()) == [(row.stream_id, row.data) for row in stored(backend)]
    assert [e.stream_id for e in seven] == [s for s, _ in backend.log.iter_data()]


# -- recorded_at ----------------------------------------------------------------------------------


def test_recorded_at_never_goes_backwards_along_the_log(backend, other):
    (first,) = append(backend, "a", [created("a", 0)], envelope=env(10))
    (behind,) = append(backend, "b", [created("b", 0)], envelope=env(0))
    (from_other,) = append(other, "c", [created("c", 0)], envelope=env(5))
    (later,) = append(backend, "d", [created("d", 0)], envelope=env(20))

    assert first.recorded_at == at(10)
    assert behind.recorded_at >= first.recorded_at
    assert from_other.recorded_at >= behind.recorded_at
    assert later.recorded_at == at(20)
    read = backend.log.read_all()
    assert read == [first, behind, from_other, later]
    times = [e.recorded_at for e in read]
    assert times == sorted(times)
    stamps = [row.recorded_at for row in stored(backend)]
    assert stamps == sorted(stamps)
    assert_chain(stored(backend))
