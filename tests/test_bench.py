"""The benchmark runs end to end and reports every figure the performance issue asks for.

This is a smoke test of the measuring code on tiny sizes; it asserts that each scenario ran and
produced numbers, never how fast anything was (the machine is shared and noisy)."""

from __future__ import annotations

import json
import os

from scripts import bench, bench_postgres
from tests.pg import needs_postgres


def test_a_small_benchmark_run_reports_every_figure(tmp_path):
    report = bench.run(
        events=1500,
        seconds=0.3,
        concurrency=[1, 4],
        out=tmp_path,
        small_events=600,
        get_requests=50,
        echo=lambda line: None,
    )
    routes = {
        (row["target"], row["route"], row["concurrency"], row["processes"])
        for row in report["http"]
    }
    # One process at every concurrency; two worker processes at the highest only.
    for concurrency, processes in ((1, 1), (4, 1), (4, 2)):
        for target, route in [
            ("taskledger", "create"),
            ("taskledger", "get"),
            ("taskledger", "cancel"),
            ("taskledger", "claim+complete"),
            ("taskledger", "list"),
            ("floor", "insert (NORMAL)"),
            ("floor", "read one row"),
            ("eventsourcing", "create"),
            ("eventsourcing", "get"),
            ("eventsourcing", "cancel"),
            ("eventsourcing", "claim"),
        ]:
            assert (target, route, concurrency, processes) in routes
    for row in report["http"]:
        assert row["requests"] > 0, row
        assert row["errors"] == 0, row
    ip = report["in_process"]
    assert ip["log"]["events"] >= 1500
    assert ip["log"]["verify"]["differences"] == 0
    for figure in ("append_batched", "append_unbatched", "peer_read"):
        assert ip[figure]["events_per_s"] > 0
    assert ip["get_small"]["requests"] == 50 and ip["get_large"]["requests"] == 50
    assert report["server"]["peak_rss_mb"] > 0
    assert report["server"]["peak_rss_mb_2"] > 0  # the two-process run is measured too
    assert len(report["targets"]) == 9
    # A ratio compares taskledger and the peer at the same number of processes, for each
    # number run; the value is the better ratio and the basis lists both.
    create_vs_peer = report["targets"][0]
    rps = {
        (r["target"], r["processes"]): r["rps"]
        for r in report["http"]
        if (r["route"], r["concurrency"]) == ("create", 4)
    }
    ratios = [round(rps[("taskledger", n)] / rps[("eventsourcing", n)], 2) for n in (1, 2)]
    assert create_vs_peer["value"] == max(ratios)
    for n, value in zip((1, 2), ratios, strict=False):
        assert (
            f"{rps[('taskledger', n)]:,} vs {rps[('eventsourcing', n)]:,} req/s = {value}"
            in (create_vs_peer["basis"])
        )
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["targets"] == report["targets"]
    table = (tmp_path / "bench.md").read_text()
    assert "| target | value | goal | met | from |" in table
    assert "| taskledger | create | 2 | 4 |" in table


def test_the_profile_script_reports_cpu_per_thread_and_the_writer_alone(capsys):
    from scripts import bench_profile

    bench_profile.main(["writer", "--batches", "5"])
    bench_profile.main(["threads", "--seconds", "0.5"])
    out = capsys.readouterr().out
    assert "us of CPU per create" in out
    assert "COMMIT" in out and "INSERT INTO events" in out
    assert "WAL pages written per commit of 32 creates" in out
    assert "main thread: the event loop" in out
    assert "floor insert (NORMAL), 1 process, 32 clients" in out


@needs_postgres
def test_a_small_postgres_benchmark_run_reports_every_figure(tmp_path):
    """``taskledger bench --db postgresql://...``: every app on a database of its own on that
    server (made and dropped by the run), taskledger as one node and as two on one database, and
    every figure the issue asks for in the report (never their values)."""
    import psycopg

    from tests.pg import server_url

    url = server_url()
    assert url is not None
    report = bench.run(
        events=1500,
        seconds=0.3,
        concurrency=[1, 4],
        out=tmp_path,
        small_events=600,
        get_requests=50,
        echo=lambda line: None,
        db=url,
    )
    assert report["conditions"]["backend"] == "postgresql"
    assert report["conditions"]["postgres"]["synchronous_commit"]
    routes = {
        (row["target"], row["route"], row["concurrency"], row["processes"])
        for row in report["http"]
    }
    taskledger_routes = [
        "create",
        "get",
        "cancel",
        "claim+complete",
        "claim+complete (claim_next)",
        "list",
    ]
    # One node at every concurrency, two nodes on one database at the highest.
    for concurrency, nodes in ((1, 1), (4, 1), (4, 2)):
        for route in taskledger_routes:
            assert ("taskledger", route, concurrency, nodes) in routes
    for concurrency in (1, 4):
        for target, route in [
            ("floor", bench.FLOOR_INSERT_PG),
            ("floor", "read one row"),
            ("eventsourcing", "create"),
            ("eventsourcing", "get"),
            ("eventsourcing", "cancel"),
            ("eventsourcing", "claim"),
        ]:
            assert (target, route, concurrency, 1) in routes
    for row in report["http"]:
        assert row["requests"] > 0, row
        assert row["errors"] == 0, row
        if row["target"] == "taskledger" and row["route"] in ("create", "cancel"):
            # Each write scenario's transactions were counted, and they appended its events.
            assert row["batches"] > 0 and row["events"] >= row["requests"], row
    ip = report["in_process"]
    assert ip["log"]["events"] >= 1500
    assert ip["log"]["verify"]["differences"] == 0
    for figure in ("append_batched", "append_unbatched", "peer_read"):
        assert ip[figure]["events_per_s"] > 0
    assert ip["log"]["replay"]["events_per_s"] > 0
    assert ip["get_small"]["requests"] == 50 and ip["get_large"]["requests"] == 50
    assert ip["probe"]["round_trip_us"] > 0 and ip["probe"]["commit_us"] > 0
    assert [cost["batch"] for cost in ip["write_transaction"]] == list(bench_postgres.BATCH_SIZES)
    assert report["server"]["peak_rss_mb_1"] > 0 and report["server"]["peak_rss_mb_2"] > 0
    names = [t["target"] for t in report["targets"]]
    assert names == [
        "create vs eventsourcing create",
        "claim+complete vs eventsourcing claim",
        "replay events/s",
        "create: 2 nodes vs 1 node",
        "claim+complete: 2 nodes vs 1 node",
        "claim+complete (claim_next): 2 nodes vs 1 node",
    ]
    for target in report["targets"]:
        assert target["value"] is not None, target
        assert target["basis"] or target["target"] == "replay events/s", target
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["targets"] == report["targets"]
    table = (tmp_path / "bench.md").read_text()
    assert "| target | value | goal | met | from |" in table
    assert "| taskledger | create | 2 | 4 |" in table
    # The run dropped every database it made.
    with psycopg.connect(url, autocommit=True) as conn:
        names = [row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()]
    assert not [name for name in names if name.startswith(f"tlbench_{os.getpid()}_")]


@needs_postgres
def test_the_profile_script_reports_where_a_create_goes_on_postgres(capsys):
    from scripts import bench_profile
    from tests.pg import server_url

    bench_profile.main(
        ["postgres", "--db", server_url() or "", "--seconds", "0.5", "--batches", "3"]
    )
    out = capsys.readouterr().out
    assert "write transactions of" in out
    assert "main thread: the event loop" in out
    assert "PostgreSQL backends of its database" in out
    assert "eventsourcing create on PostgreSQL" in out
    assert "handler alone on PostgreSQL" in out
    assert "statements:" in out and "answers waited for:" in out


def test_the_webhook_benchmark_delivers_every_webhook_and_reports_both_rates(tmp_path):
    from scripts import bench_webhooks

    throughput = bench_webhooks.throughput(tmp_path, 30)
    assert throughput["completed"] == 30
    assert throughput["delivered"] == 30  # one task.succeeded per task, each received
    assert throughput["last_delivery_after_last_completion_s"] is not None
    rates = bench_webhooks.create_rate(tmp_path, 0.5, 1)
    assert rates["creates_per_s_with"][0] > 0 and rates["creates_per_s_without"][0] > 0
    # Every create with the subscription was delivered before the round without it began.
    assert rates["deliveries_received"] == rates["deliveries_expected"] > 0
    assert rates["ratio_with_to_without"] is not None


def test_the_posting_benchmark_runs_both_clients(capsys):
    from click.testing import CliRunner

    from scripts import bench_posting

    result = CliRunner().invoke(bench_posting.main, ["--posts", "40", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[2] for line in lines] == ["httpx", "api.poster"]
    assert all("us CPU per post" in line for line in lines)


def test_bench_webhooks_writes_its_report(tmp_path):
    from click.testing import CliRunner

    from scripts.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--webhooks", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "webhooks.json").read_text())
    assert report["throughput"]["delivered"] == report["throughput"]["tasks"] == 100
    assert (
        report["create_rate"]["deliveries_received"] == report["create_rate"]["deliveries_expected"]
    )
