from __future__ import annotations

import itertools

from knowledge.chunking import chunk_blocks
from knowledge.parsers import Block, detect_format, parse_markdown


def words(text: str) -> int:
    return len(text.split())


def test_paragraphs_are_packed_and_never_cut_mid_sentence() -> None:
    paragraphs = [
        Block(f"Sentence {i} of paragraph {p} has seven words." if i else f"Para {p} starts here.")
        for p in range(6)
        for i in range(3)
    ]

    drafts = chunk_blocks(paragraphs, count_tokens=words, max_tokens=30, overlap_tokens=0)

    assert all(d.token_count <= 26 for d in drafts)
    assert all(d.content.endswith(".") for d in drafts)
    rebuilt = " ".join(d.content.replace("\n\n", " ") for d in drafts)
    assert rebuilt == " ".join(b.text for b in paragraphs)


def test_long_paragraph_is_split_between_sentences_with_overlap() -> None:
    text = " ".join(f"Fact number {i} is stated here." for i in range(20))

    drafts = chunk_blocks([Block(text)], count_tokens=words, max_tokens=26, overlap_tokens=7)

    assert len(drafts) > 2
    for previous, current in itertools.pairwise(drafts):
        last_sentence = previous.content.rsplit(". ", 1)[-1]
        assert current.content.startswith(last_sentence.rstrip(".")), (previous.content, current.content)
    assert all(d.content.startswith("Fact number") for d in drafts)


def test_headings_start_chunks_and_give_their_path_as_section() -> None:
    parsed = parse_markdown(
        b"# Guide\n\nIntro text.\n\n## Setup\n\nInstall it.\n\n## Use\n\nRun it.\n\n# Other\n\nMore."
    )

    drafts = chunk_blocks(parsed.blocks, count_tokens=words, max_tokens=100)

    assert [(d.section, d.content) for d in drafts] == [
        ("Guide", "Guide\n\nIntro text."),
        ("Guide > Setup", "Setup\n\nInstall it."),
        ("Guide > Use", "Use\n\nRun it."),
        ("Other", "Other\n\nMore."),
    ]
    assert drafts[1].embedding_text == "Setup\n\nInstall it."


def test_punctuation_only_and_heading_only_text_makes_no_chunk() -> None:
    blocks = [Block("Empty section", heading_level=1), Block("Next", heading_level=1), Block("... --- !!!")]

    assert chunk_blocks(blocks, count_tokens=words, max_tokens=100) == []


def test_pages_are_kept_and_a_chunk_never_spans_two_pages() -> None:
    blocks = [Block("Alpha text.", page=1), Block("Beta text.", page=2), Block("Gamma text.", page=2)]

    drafts = chunk_blocks(blocks, count_tokens=words, max_tokens=100)

    assert [(d.page, d.content) for d in drafts] == [(1, "Alpha text."), (2, "Beta text.\n\nGamma text.")]


def test_format_detection_trusts_known_extensions_only() -> None:
    assert detect_format(filename="Report.PDF") == "pdf"
    assert detect_format(filename="notes", content_type="text/markdown; charset=utf-8") == "markdown"
    assert detect_format(filename="virus.exe", content_type="text/plain") is None
