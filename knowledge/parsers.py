"""Turn an uploaded file into text blocks (paragraphs and headings with their page).

One function per format behind ``parse(data, format)``. A file that cannot be read raises
``ParseError`` with a sentence a tenant can act on; the indexer stores it as the document's error.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from knowledge.models import Document

Format = Document.Format

EXTENSIONS: dict[str, str] = {
    ".pdf": Format.PDF,
    ".docx": Format.DOCX,
    ".md": Format.MARKDOWN,
    ".markdown": Format.MARKDOWN,
    ".txt": Format.TEXT,
    ".text": Format.TEXT,
    ".html": Format.HTML,
    ".htm": Format.HTML,
}
CONTENT_TYPES: dict[str, str] = {
    "application/pdf": Format.PDF,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": Format.DOCX,
    "text/markdown": Format.MARKDOWN,
    "text/x-markdown": Format.MARKDOWN,
    "text/plain": Format.TEXT,
    "text/html": Format.HTML,
}


class ParseError(Exception):
    """The file could not be turned into text; the message is shown to the tenant."""


@dataclass(frozen=True)
class Block:
    text: str
    page: int | None = None
    # Heading level (1..6) when the block is a heading, else 0.
    heading_level: int = 0


@dataclass(frozen=True)
class Parsed:
    blocks: list[Block]
    pages: int | None = None


def detect_format(*, filename: str, content_type: str = "") -> str | None:
    """The format for a file name (extension first, then the declared content type), or None."""
    lowered = filename.lower()
    for ext, fmt in EXTENSIONS.items():
        if lowered.endswith(ext):
            return fmt
    if "." in lowered.strip("."):
        return None  # an extension we do not read: its declared content type is not trusted
    return CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower())


def parse(data: bytes, fmt: str) -> Parsed:
    if not data:
        raise ParseError("The file is empty.")
    # Keyed by the Format values (str enum members hash and compare as their values).
    parsers: dict[str, Callable[[bytes], Parsed]] = {
        Format.PDF: parse_pdf,
        Format.DOCX: parse_docx,
        Format.MARKDOWN: parse_markdown,
        Format.TEXT: parse_text,
        Format.HTML: parse_html,
    }
    parser = parsers.get(fmt)
    if parser is None:
        raise ParseError(f"Unsupported format '{fmt}'.")
    parsed = parser(data)
    if not any(_has_words(b.text) for b in parsed.blocks):
        raise ParseError("No text could be extracted from the file (scanned images or an empty document?).")
    return parsed


def _has_words(text: str) -> bool:
    return bool(re.search(r"\w", text))


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig",):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    if b"\x00" in data[:4096]:
        raise ParseError("The file is binary, not text.")
    return data.decode("cp1252", errors="replace")


def _paragraphs(text: str) -> Iterator[str]:
    for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        cleaned = " ".join(para.split())
        if cleaned:
            yield cleaned


def parse_text(data: bytes) -> Parsed:
    return Parsed(blocks=[Block(p) for p in _paragraphs(_decode(data))])


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def parse_markdown(data: bytes) -> Parsed:
    blocks: list[Block] = []
    buffer: list[str] = []
    in_code = False

    def flush() -> None:
        blocks.extend(Block(p) for p in _paragraphs("\n".join(buffer)))
        buffer.clear()

    for line in _decode(data).splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
            buffer.append("")
            continue
        match = None if in_code else _MD_HEADING.match(line)
        if match:
            flush()
            title = _md_inline(match.group(2))
            if title:
                blocks.append(Block(title, heading_level=len(match.group(1))))
        else:
            buffer.append(line if in_code else _md_inline(re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", line)))
    flush()
    return Parsed(blocks=blocks)


def _md_inline(text: str) -> str:
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images: keep alt text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: keep label
    return re.sub(r"[*_`]{1,3}", "", text).strip()


_HTML_BLOCKS = {"p", "li", "td", "th", "pre", "blockquote", "dd", "dt", "caption", "figcaption"}


def parse_html(data: bytes) -> Parsed:
    import lxml.html
    from lxml import etree

    try:
        root = lxml.html.document_fromstring(data)
    except (etree.ParserError, ValueError) as exc:
        raise ParseError(f"The HTML could not be read: {exc}") from None
    for bad in root.xpath("//script|//style|//noscript|//template|//head"):
        bad.drop_tree()
    blocks: list[Block] = []
    for el in root.iter():
        tag = el.tag if isinstance(el.tag, str) else ""
        if re.fullmatch(r"h[1-6]", tag):
            text = " ".join(el.text_content().split())
            if text:
                blocks.append(Block(text, heading_level=int(tag[1])))
        elif tag in _HTML_BLOCKS and not any(
            isinstance(a.tag, str) and a.tag in _HTML_BLOCKS for a in el.iterancestors()
        ):
            text = " ".join(el.text_content().split())
            if text:
                blocks.append(Block(text))
    if not blocks:  # no block markup at all: take the body's text
        blocks = [Block(p) for p in _paragraphs(root.text_content())]
    return Parsed(blocks=blocks)


def parse_docx(data: bytes) -> Parsed:
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ParseError(f"The Word file is damaged or not a .docx file ({type(exc).__name__}).") from None
    blocks: list[Block] = []
    for para in document.paragraphs:
        text = " ".join(para.text.split())
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        match = re.match(r"Heading (\d)", style)
        level = int(match.group(1)) if match else (1 if style == "Title" else 0)
        blocks.append(Block(text, heading_level=level))
    for table in document.tables:
        for row in table.rows:
            text = " | ".join(" ".join(c.text.split()) for c in row.cells if c.text.strip())
            if text:
                blocks.append(Block(text))
    return Parsed(blocks=blocks)


def parse_pdf(data: bytes) -> Parsed:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ParseError("The PDF is encrypted; upload an unprotected copy.")
        blocks: list[Block] = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            # PDF text has hard line breaks inside paragraphs: join lines, split on blank lines.
            blocks.extend(Block(p, page=number) for p in _paragraphs(text))
        return Parsed(blocks=blocks, pages=len(reader.pages))
    except ParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ParseError(f"The PDF is damaged and could not be read ({type(exc).__name__}: {exc}).") from None
