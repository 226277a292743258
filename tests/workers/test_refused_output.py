"""A processor whose output the server refuses: the reference worker fails the task with the
server's reason at once (running it again would give the same output), instead of leaving it
to time out lease after lease."""

from __future__ import annotations


def test_a_refused_output_fails_the_task_with_the_servers_reason(
    make_ledger, spawn_worker, tmp_path
):
    ledger = make_ledger()
    (tmp_path / "null_text.py").write_text(
        "from scripts.processors import text_chunks\n\n\n"
        "def process(data, file_name, configuration):\n"
        "    output = text_chunks(data, file_name, configuration)\n"
        "    output['chunks'][0]['segments'][0]['text'] = None\n"
        "    return output\n"
    )
    task_id = ledger.create(b"some words to chunk")["task_id"]
    spawn_worker(ledger, "--processor", "null_text:process", pythonpath=[tmp_path])
    failed = ledger.wait_status(task_id, "Failed", "Succeeded", timeout=30)
    assert failed["status"] == "Failed"
    assert failed["message"].startswith("Processing error: the output was refused: Invalid output")
    assert "$.chunks[0].segments[0].text" in failed["message"]
    assert ledger.types(task_id) == ["task_created", "claimed", "failed"]
