"""Prometheus metrics (``GET /metrics``): counters and histograms kept by this process, and
gauges read from the database at scrape time.

The counters and histograms are ``prometheus_client`` metrics made when this module is imported.
``taskledger serve --workers N`` (N > 1) sets ``PROMETHEUS_MULTIPROC_DIR`` to a private
directory before it starts the worker processes, so each of them keeps its values in files there
and a scrape, whichever process answers it, adds up every process's (``MultiProcessCollector``).
One server process keeps them in memory (the default registry).

The gauges (tasks by status, the claimable queue's depth and the age of its head) are not kept
anywhere: ``exposition`` reads them through the storage port (``TaskViews.status_counts``,
``TaskViews.queue_summary``) each time it is asked, so every process answers the same.

Per-route request counts and latencies come from Litestar's Prometheus middleware
(``api.app``); nothing here knows Litestar.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger.events import STATUSES, tag_of
from ledger.handler import Outcome

if TYPE_CHECKING:
    from api.groupcommit import Writer
    from ledger.log import TaskViews

#: The environment variable prometheus_client's multi-process mode reads.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The classic text format's media type (Litestar adds the charset): what every Prometheus
#: version reads, and what generate_latest writes for these names.
CONTENT_TYPE = "text/plain; version=0.0.4"
#: The prefix of Litestar's request metrics: taskledger_http_requests_total and so on.
HTTP_PREFIX = "taskledger_http"

EVENTS_APPENDED = Counter(
    "taskledger_events_appended",
    "Events appended to the log, by type (the stored tag: task_created, claimed, ...).",
    ["type"],
)
COMMIT_BATCH_SIZE = Histogram(
    "taskledger_commit_batch_size",
    "Commands in one committed group-commit transaction (the webhook dispatcher's chores "
    "that ride along not counted; a transaction of chores alone not observed).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
COMMIT_SECONDS = Histogram(
    "taskledger_commit_duration_seconds",
    "One group-commit transaction, from BEGIN to the end of COMMIT (its fsync included; the "
    "wait for the write turn not).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LEASES_EXPIRED = Counter(
    "taskledger_leases_expired", "Leases the sweeper found expired (the task re-queued)."
)
TIMED_OUT = Counter(
    "taskledger_tasks_timed_out",
    "Tasks the sweeper failed because their last allowed lease expired.",
)
TASKS_EXPIRED = Counter(
    "taskledger_tasks_expired", "Tasks the sweeper expired (past their expires_at)."
)
IDEMPOTENT_REPLAYS = Counter(
    "taskledger_idempotent_replays",
    "Requests answered with the stored outcome of an earlier one with the same Idempotency-Key.",
)
RATE_LIMITED = Counter(
    "taskledger_rate_limited_requests",
    "Requests refused with 429: over the key's rate limit (requests), or too many open event "
    "streams (streams).",
    ["reason"],
)
WEBHOOK_DELIVERIES = Counter(
    "taskledger_webhook_delivery_attempts",
    "Webhook delivery attempts recorded, by the delivery's status after it: succeeded, "
    "pending (to be retried) or failed (it gave up).",
    ["outcome"],
)


class BatchMetrics:
    """A group-commit writer's listener (``Writer.listen``): each batch's size, its
    transaction's duration and the events it appended, by type."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def __call__(self, results: Sequence[Any]) -> None:
        seconds = self.writer.last_batch_seconds
        if seconds is not None:  # None: the transaction failed
            COMMIT_SECONDS.observe(seconds)
            if self.writer.last_batch_size:
                COMMIT_BATCH_SIZE.observe(self.writer.last_batch_size)
        counts: dict[str, int] = {}
        for result in results:
            if isinstance(result, Outcome):
                for recorded in result.recorded:
                    tag = tag_of(type(recorded.event))
                    counts[tag] = counts.get(tag, 0) + 1
        for tag, count in counts.items():
            EVENTS_APPENDED.labels(tag).inc(count)


def count_sweep(counts: dict[str, int]) -> None:
    """A sweep pass's counts (``api.sweeper.sweep_once``)."""
    if counts["leases_expired"]:
        LEASES_EXPIRED.inc(counts["leases_expired"])
    if counts["timed_out"]:
        TIMED_OUT.inc(counts["timed_out"])
    if counts["tasks_expired"]:
        TASKS_EXPIRED.inc(counts["tasks_expired"])


class LedgerGauges(Collector):
    """The gauges read from the database when scraped."""

    def __init__(self, views: TaskViews) -> None:
        self.views = views

    def collect(self) -> Iterator[Metric]:
        counts = self.views.status_counts()
        depth, head_created = self.views.queue_summary()
        tasks = GaugeMetricFamily(
            "taskledger_tasks",
            "Tasks by status (deleted and expired tasks not counted).",
            labels=["status"],
        )
        for status in (*STATUSES, *sorted(set(counts) - set(STATUSES))):
            tasks.add_metric([status], counts.get(status, 0))
        yield tasks
        yield GaugeMetricFamily(
            "taskledger_queue_depth", "Claimable tasks (waiting in the queue).", value=depth
        )
        age = 0.0
        if head_created is not None:
            age = max(0.0, (datetime.now(UTC) - head_created).total_seconds())
        yield GaugeMetricFamily(
            "taskledger_queue_oldest_age_seconds",
            "Seconds since the task at the head of the queue (the next claim's) was created; 0 "
            "when the queue is empty.",
            value=age,
        )


def process_registry() -> CollectorRegistry:
    """Every process's counters and histograms: this process's registry, or in multi-process
    mode a fresh one over the files of every worker process."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition(views: TaskViews) -> bytes:
    """The Prometheus text format of every metric: the processes' and the database's."""
    gauges = CollectorRegistry(auto_describe=False)
    gauges.register(LedgerGauges(views))
    return generate_latest(process_registry()) + generate_latest(gauges)
