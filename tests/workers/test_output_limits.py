"""A real worker against a real server (issue 14, item 6): an output over the worker's limit, or
over the server's own ``--max-output-mb``, fails the task at once with "Output too large (N
bytes, limit M bytes)" instead of leaving it to time out lease after lease."""

from __future__ import annotations

WORDS = b" ".join(b"w%05d" % (n % 100_000) for n in range(200_000))  # 1.4 MB of text


def test_a_task_whose_output_is_too_large_fails_at_once(make_ledger, spawn_worker):
    ledger = make_ledger()
    task_id = ledger.create(WORDS, chunk_processing={"target_length": 1})["task_id"]
    spawn_worker(ledger, "--max-output-mb", "1")
    failed = ledger.wait_status(task_id, "Failed", "Succeeded", timeout=60)
    assert failed["status"] == "Failed"
    assert failed["message"].startswith("Output too large (")
    assert failed["message"].endswith(f"bytes, limit {1 << 20} bytes)")
    assert ledger.types(task_id) == ["task_created", "claimed", "failed"]


def test_the_servers_own_output_limit_fails_the_task_with_it(make_ledger, spawn_worker):
    ledger = make_ledger("--max-output-mb", "1", "--max-body-mb", "8")
    task_id = ledger.create(WORDS, chunk_processing={"target_length": 5})["task_id"]
    spawn_worker(ledger)  # its own limit (64 MiB) is above the server's
    failed = ledger.wait_status(task_id, "Failed", "Succeeded", timeout=60)
    assert failed["status"] == "Failed"
    assert failed["message"].endswith(f"bytes, limit {1 << 20} bytes)"), failed["message"]
    assert ledger.types(task_id) == ["task_created", "claimed", "failed"]
