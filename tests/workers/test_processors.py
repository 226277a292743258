"""The reference processor, text_chunks: text-like inputs become chunks of target_length words,
in the shape the chunkr-ai SDK parses; anything else is refused."""

from __future__ import annotations

import html
import json

import pytest
from chunkr_ai.api.configuration import OutputResponse

from api.output import check_output
from scripts.processors import ProcessingError, text_chunks

WORDS = [f"word{n}" for n in range(23)]


def config(target_length: int | None) -> dict:
    return {} if target_length is None else {"chunk_processing": {"target_length": target_length}}


def chunk_words(output: dict) -> list[list[str]]:
    return [c["content"].split() for c in output["chunks"]]


def as_html(words: list[str]) -> bytes:
    return (
        "<!DOCTYPE html><html><head><style>p { color: red }</style>"
        "<script>var hidden = 1;</script></head><body>"
        + "".join(f"<p>{w}</p> " for w in words)
        + "</body></html>"
    ).encode()


# (file name, bytes, the words the processor should see)
TEXT_LIKE = {
    "plain": ("notes.txt", " ".join(WORDS).encode(), WORDS),
    "markdown": (
        "notes.md",
        ("# " + " ".join(WORDS[:3]) + "\n\n" + " ".join(WORDS[3:])).encode(),
        ["#", *WORDS],
    ),
    "html": ("page.html", as_html(WORDS), WORDS),
    "html without a name": (None, as_html(WORDS), WORDS),
    "json": (
        "data.json",
        json.dumps({"words": WORDS}, indent=1).encode(),
        json.dumps({"words": WORDS}, indent=1).split(),
    ),
    "utf-8 with BOM": ("bom.txt", b"\xef\xbb\xbf" + " ".join(WORDS).encode(), WORDS),
}


@pytest.mark.parametrize("name", list(TEXT_LIKE))
@pytest.mark.parametrize("target_length", [1, 5, 10, 1000])
def test_text_like_inputs_chunk_by_target_length_words(name, target_length):
    file_name, data, words = TEXT_LIKE[name]

    output = text_chunks(data, file_name, config(target_length))

    pieces = chunk_words(output)
    assert [w for piece in pieces for w in piece] == words  # every word, in order, once
    assert all(len(piece) == target_length for piece in pieces[:-1])
    assert 1 <= len(pieces[-1]) <= target_length
    assert [c["chunk_length"] for c in output["chunks"]] == [len(p) for p in pieces]
    assert output["file_name"] == file_name


def test_default_target_length_is_512_words():
    data = " ".join(f"w{n}" for n in range(1100)).encode()
    output = text_chunks(data, "long.txt", {})
    assert [c["chunk_length"] for c in output["chunks"]] == [512, 512, 76]


def test_html_scripts_and_styles_are_not_text():
    output = text_chunks(as_html(["visible"]), "page.html", config(50))
    text = " ".join(w for piece in chunk_words(output) for w in piece)
    assert "visible" in text
    assert "hidden" not in text and "color" not in text


def test_json_input_must_be_json():
    with pytest.raises(ProcessingError) as raised:
        text_chunks(b'{"words": ["unterminated', "data.json", config(10))
    assert str(raised.value) == "Invalid JSON file"


@pytest.mark.parametrize(
    "file_name, data",
    [
        ("report.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"),
        ("report.pdf", b"plain words that only pretend to be a pdf"),
        ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        ("blob.bin", bytes(range(256))),
        (None, b"\x00\x01\x02binary\xff\xfe"),
        ("notes.txt", b"text with a \x00 NUL byte"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1")),
    ],
)
def test_binary_or_pdf_input_is_unsupported(file_name, data):
    with pytest.raises(ProcessingError) as raised:
        text_chunks(data, file_name, config(10))
    assert str(raised.value) == "Unsupported file type"


@pytest.mark.parametrize("name", list(TEXT_LIKE))
def test_output_parses_with_the_sdk_output_model(name):
    file_name, data, words = TEXT_LIKE[name]

    parsed = OutputResponse.model_validate(text_chunks(data, file_name, config(4)))

    assert parsed.file_name == file_name
    assert parsed.page_count == 1 and parsed.pdf_url is None
    assert len(parsed.chunks) == -(-len(words) // 4)
    for chunk in parsed.chunks:
        assert len(chunk.segments) == 1
        segment = chunk.segments[0]
        assert segment.segment_type == "Text"
        assert segment.content == chunk.content
        assert segment.segment_length == chunk.chunk_length == len(segment.content.split())
    ids = [c.chunk_id for c in parsed.chunks] + [c.segments[0].segment_id for c in parsed.chunks]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("name", list(TEXT_LIKE))
def test_output_passes_the_servers_output_check(name):
    file_name, data, words = TEXT_LIKE[name]
    output = text_chunks(data, file_name, config(4))

    full = check_output(output, "ignored.txt")  # the processor names the file itself

    assert full["file_name"] == file_name
    for chunk, checked in zip(output["chunks"], full["chunks"], strict=True):
        assert checked["segments"][0] == {"image": None, "llm": None, **chunk["segments"][0]}
        assert {k: checked[k] for k in chunk if k != "segments"} == {
            k: v for k, v in chunk.items() if k != "segments"
        }
    parsed = OutputResponse.model_validate(full)
    for chunk in parsed.chunks:
        segment = chunk.segments[0]
        assert segment.text == segment.content == segment.markdown == chunk.content
        assert segment.html == f"<p>{html.escape(segment.content, quote=False)}</p>"


def test_html_of_a_segment_is_escaped():
    output = text_chunks(b'if a < b && c > "d" then', "rule.txt", config(100))
    segment = output["chunks"][0]["segments"][0]
    assert segment["html"] == '<p>if a &lt; b &amp;&amp; c &gt; "d" then</p>'
    assert segment["markdown"] == segment["text"] == 'if a < b && c > "d" then'
    assert check_output(output, "rule.txt")["chunks"][0]["segments"][0] == {
        "image": None,
        "llm": None,
        **segment,
    }
