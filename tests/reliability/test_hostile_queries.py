"""Issue 14, item 8: every hostile query value is a 4xx with a message, never a 500. Numbers
written in every Unicode digit class (Arabic-Indic, fullwidth, superscripts like ``²``, Roman
numerals...), and times at the edges of the representable range with non-UTC offsets, for every
query parameter of every read route."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.inprocess import InProcessServer, add_key

#: One sample character of every numeric Unicode category: decimal digits (Nd) of each script,
#: other numbers (No: superscripts, fractions, circled digits), letter numbers (Nl: Roman).
DIGITS = sorted(
    {
        chr(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in ("Nd", "No", "Nl")
    }
)

EDGE_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+00:01",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999-14:00",
    "9999-12-31T23:59:59-00:01",
    "9999-12-31T23:59:59.999999Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00",
]

#: The times above that fall outside years 1-9999 once turned to UTC.
OVERFLOWING = {
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+00:01",
    "9999-12-31T23:59:59.999999-14:00",
    "9999-12-31T23:59:59-00:01",
}

numbers = st.one_of(
    st.text(st.sampled_from(DIGITS), min_size=1, max_size=4),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["1e3", "1.0", "-0", "+1", " 1", "0x10", "1_000", "NaN", "inf", ""]),
)
times = st.one_of(
    st.sampled_from(EDGE_TIMES),
    st.datetimes().map(lambda d: d.isoformat() + "+05:30"),
    st.text(max_size=30),
)

NUMERIC = {
    "/tasks": ["page", "limit"],
    "/task/{task}": ["as_of_version"],
    "/events": ["after", "limit"],
    "/task/{task}/events": ["after", "limit"],
}
TIMED = {"/tasks": ["start", "end"], "/task/{task}": ["as_of"]}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    server = InProcessServer(tmp_path_factory.mktemp("hostile") / "ledger.db", sweep_interval=0)
    server.start()
    user = server.client(add_key(server.db, "alice"))
    task = user.post("/task/parse", json={"file": "aGk="}).json()["task_id"]
    yield user, task
    user.close()
    server.stop()


def check(response) -> None:
    assert response.status_code < 500, (response.request.url, response.text)
    if response.status_code >= 400:
        assert response.text.strip(), "an error needs a message"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=st.sampled_from([r for r, names in NUMERIC.items() if names]), data=st.data())
def test_numbers_in_every_digit_class_are_4xx_or_answered(api, route, data):
    user, task = api
    name = data.draw(st.sampled_from(NUMERIC[route]))
    value = data.draw(numbers)
    params = {name: value}
    if name == "page":
        params["limit"] = "1"
    check(user.get(route.format(task=task), params=params))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=st.sampled_from(list(TIMED)), data=st.data())
def test_times_at_the_edges_of_the_range_are_4xx_or_answered(api, route, data):
    user, task = api
    name = data.draw(st.sampled_from(TIMED[route]))
    check(user.get(route.format(task=task), params={name: data.draw(times)}))


@pytest.mark.parametrize("when", EDGE_TIMES)
@pytest.mark.parametrize(
    ("route", "name"), [("/tasks", "start"), ("/tasks", "end"), ("/task/{task}", "as_of")]
)
def test_every_edge_time_on_the_list_is_a_clear_answer(api, route, name, when):
    user, task = api
    response = user.get(route.format(task=task), params={name: when})
    check(response)
    if when in OVERFLOWING:
        assert response.status_code == 400
        assert "outside the range of times" in response.text


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [490, 700, 975, 1500, 5000])
def test_json_nested_hundreds_deep_is_never_a_500(api, depth):
    """Depths around the interpreter's recursion limit (a RecursionError was a 500 there)."""
    user, task = api
    bodies = [
        ("POST", "/task/parse", f'{{"file": "aGk=", "json_schema": {nested(depth)}}}'),
        ("POST", "/task/parse", f'{{"file": "aGk=", "model": [{nested(depth)}]}}'),
        ("POST", "/task/parse", f'{{"file": "aGk=", "segment_processing": {nested(depth)}}}'),
        ("PATCH", f"/task/{task}/parse", f'{{"chunk_processing": {nested(depth)}}}'),
        ("PATCH", f"/task/{task}/parse", f'{{"unknown": {nested(depth)}}}'),
    ]
    for method, path, body in bodies:
        check(user.request(method, path, content=body.encode()))
