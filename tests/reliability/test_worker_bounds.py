"""Issue 14, item 6: the reference worker's memory is bounded by its input and the output
limit, not by ``target_length``; an output over the limit fails the task with "Output too large
(N bytes, limit M bytes)" at once instead of timing out lease after lease; the server's limit for
outputs is its own setting (``--max-output-mb``), apart from the request body limit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from scripts.processors import OutputTooLarge, encode_output, stream_text_chunks, text_chunks

WORDS = b" ".join(b"w%05d" % (n % 100_000) for n in range(200_000))  # 1.4 MB of text


def peak_rss_kib(code: str) -> int:
    """The peak resident memory (KiB) of a fresh interpreter running ``code``: VmHWM, the
    high-water mark of its own address space (``ru_maxrss`` would carry the parent's over the
    exec)."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        from pathlib import Path
        status = Path("/proc/self/status").read_text()
        print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def test_the_streamed_output_is_the_same_json_as_the_whole_one():
    configuration = {"chunk_processing": {"target_length": 7}}
    streamed = json.loads(
        encode_output(stream_text_chunks(WORDS[:5000], "a.txt", configuration), 10**8)
    )
    whole = text_chunks(WORDS[:5000], "a.txt", configuration)
    strip = lambda output: [  # noqa: E731 - ids are random: compare the rest
        [{k: v for k, v in s.items() if k != "segment_id"} for s in c["segments"]]
        for c in output["chunks"]
    ]
    assert strip(streamed) == strip(whole)
    assert {k: streamed[k] for k in ("file_name", "page_count", "pdf_url")} == {
        "file_name": "a.txt",
        "page_count": 1,
        "pdf_url": None,
    }


def test_memory_is_bounded_by_the_limit_not_by_target_length(tmp_path):
    """Side by side in one run: the whole output as Python objects (what the worker did) against
    the streamed encoding with a 16 MiB limit, both with target_length 1 on 1.4 MB of text."""
    (tmp_path / "input.txt").write_bytes(WORDS)
    setup = textwrap.dedent(
        f"""
        from pathlib import Path
        from scripts.processors import OutputTooLarge, encode_output
        from scripts.processors import stream_text_chunks, text_chunks
        data = Path({str(tmp_path / "input.txt")!r}).read_bytes()
        configuration = {{"chunk_processing": {{"target_length": 1}}}}
        """
    )
    whole = peak_rss_kib(setup + "\noutput = text_chunks(data, 'a.txt', configuration)\n")
    streamed = peak_rss_kib(
        setup
        + "\ntry:\n    encode_output(stream_text_chunks(data, 'a.txt', configuration), 16 << 20)\n"
        + "except OutputTooLarge:\n    pass\n"
    )
    baseline = peak_rss_kib(setup)
    assert streamed - baseline < (whole - baseline) / 4, (baseline, streamed, whole)


def test_an_output_past_the_limit_says_how_large_it_is():
    try:
        encode_output(
            stream_text_chunks(WORDS, "a.txt", {"chunk_processing": {"target_length": 1}}), 1 << 20
        )
    except OutputTooLarge as too_large:
        assert too_large.limit == 1 << 20 and too_large.size > 50 * (1 << 20)
        assert str(too_large) == f"Output too large ({too_large.size} bytes, limit {1 << 20} bytes)"
    else:
        raise AssertionError("a 50 MiB output passed a 1 MiB limit")
