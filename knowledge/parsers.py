"""Turn an uploaded file into text blocks (paragraphs and headings with their page).

One function per format behind ``parse(data, format)``. A file that cannot be read raises
``ParseError`` with a sentence a tenant can act on; the indexer stores it as the document's error.

Every parser works under ``Limits`` (settings KNOWLEDGE_*, see docs/knowledge.md): extracted text
length, paragraph count and a time budget for all formats, page count for PDF, archive entry count,
declared sizes and streamed XML size for DOCX, element count for HTML. A file over a limit fails as
soon as the limit is crossed, so a decompression or paragraph bomb costs bounded time and memory.
The format itself is decided by the content (``content_format``), not only by the extension.
"""

from __future__ import annotations

import io
import posixpath
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

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
# How many leading bytes ``content_format`` needs (PDF allows junk before its header up to 1 KB).
SNIFF_BYTES = 8192


class ParseError(Exception):
    """The file could not be turned into text; the message is shown to the tenant."""


class ContentMismatch(ParseError):
    """The bytes are not a format we read (an image, an archive, an executable, ...)."""


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


@dataclass(frozen=True)
class Limits:
    max_text_chars: int
    max_paragraphs: int
    max_pdf_pages: int
    max_html_elements: int
    docx_max_entries: int
    docx_max_uncompressed_bytes: int
    docx_max_xml_bytes: int
    docx_max_table_cells: int
    time_limit_seconds: float
    # time.monotonic() after which parsing stops with a ParseError.
    deadline: float

    @classmethod
    def from_settings(cls, *, started: float | None = None) -> Limits:
        seconds = float(settings.KNOWLEDGE_PARSE_TIME_LIMIT_SECONDS)
        return cls(
            max_text_chars=settings.KNOWLEDGE_MAX_TEXT_CHARS,
            max_paragraphs=settings.KNOWLEDGE_MAX_PARAGRAPHS,
            max_pdf_pages=settings.KNOWLEDGE_PDF_MAX_PAGES,
            max_html_elements=settings.KNOWLEDGE_HTML_MAX_ELEMENTS,
            docx_max_entries=settings.KNOWLEDGE_DOCX_MAX_ENTRIES,
            docx_max_uncompressed_bytes=settings.KNOWLEDGE_DOCX_MAX_UNCOMPRESSED_MB * 1024 * 1024,
            docx_max_xml_bytes=settings.KNOWLEDGE_DOCX_MAX_XML_MB * 1024 * 1024,
            docx_max_table_cells=settings.KNOWLEDGE_DOCX_MAX_TABLE_CELLS,
            time_limit_seconds=seconds,
            deadline=(time.monotonic() if started is None else started) + seconds,
        )

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise ParseError(
                f"Reading the file took longer than {self.time_limit_seconds:g} s (the limit); "
                "split it into smaller files."
            )


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class _Collector:
    """The blocks of one file, with the paragraph and text-length caps enforced as they are added."""

    def __init__(self, limits: Limits | None):
        self.limits = limits or Limits.from_settings()
        self.blocks: list[Block] = []
        self.chars = 0

    def parsed(self, pages: int | None = None) -> Parsed:
        return Parsed(blocks=self.blocks, pages=pages)

    def add(self, text: str, *, page: int | None = None, heading_level: int = 0) -> None:
        # PostgreSQL text cannot hold NUL; the other control characters are noise to search.
        text = " ".join(_CONTROL.sub(" ", text).split())
        if not text:
            return
        self.check_text_length(len(text))
        self.chars += len(text)
        if len(self.blocks) >= self.limits.max_paragraphs:
            raise ParseError(
                f"The document has more than {self.limits.max_paragraphs:,} paragraphs (the limit); "
                "split it into smaller files."
            )
        self.blocks.append(Block(text, page=page, heading_level=heading_level))
        if len(self.blocks) % 256 == 0:
            self.limits.check_time()

    def check_text_length(self, length: int) -> None:
        """Refuse text about to be split when it would take the document over the cap."""
        if self.chars + length > self.limits.max_text_chars:
            raise ParseError(
                f"The document has more than {self.limits.max_text_chars:,} characters of text (the limit); "
                "split it into smaller files."
            )


def detect_format(*, filename: str, content_type: str = "") -> str | None:
    """The format for a file name (extension first, then the declared content type), or None."""
    lowered = filename.lower()
    for ext, fmt in EXTENSIONS.items():
        if lowered.endswith(ext):
            return fmt
    if "." in lowered.strip("."):
        return None  # an extension we do not read: its declared content type is not trusted
    return CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower())


# Signatures of binary files a tenant may upload by mistake under a text name.
_BINARY_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office file (.doc/.xls/.ppt)"),
    (b"{\\rtf", "an RTF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "an executable"),
    (b"%!PS", "a PostScript file"),
]


def content_format(head: bytes, declared: str) -> str:
    """The format the content really has, given its first ``SNIFF_BYTES`` and the declared format.

    PDF and DOCX (ZIP) are recognised by their signatures and win over the extension: PDF bytes named
    ``.txt`` are read as a PDF. A file named .pdf/.docx whose bytes are not one, or binary bytes named
    as text, raise ``ContentMismatch`` with what the content is.
    """
    if not head:
        return declared
    # A PDF reader accepts junk before the header (up to 1 KB) in a file named .pdf; in a file named
    # as text only a leading header counts, so a note that mentions "%PDF-" stays text.
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"%PDF-") or (declared == Format.PDF and b"%PDF-" in head[:1024]):
        return Format.PDF
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return Format.DOCX
    kind = next((name for magic, name in _BINARY_SIGNATURES if head.startswith(magic)), None)
    if kind is None and _looks_binary(head):
        kind = "binary data"
    if kind is not None:
        raise ContentMismatch(f"The file's content is {kind}, not a PDF, Word (.docx), Markdown, text or HTML file.")
    if declared == Format.PDF:
        raise ContentMismatch("The file is named as a PDF but its content is not a PDF (no %PDF header).")
    if declared == Format.DOCX:
        raise ContentMismatch("The file is named as a Word (.docx) document but its content is not one (not a ZIP).")
    return declared


def _looks_binary(head: bytes) -> bool:
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return False  # UTF-16 text has NUL bytes
    return b"\x00" in head


def parse(data: bytes, fmt: str, *, limits: Limits | None = None) -> Parsed:
    if not data:
        raise ParseError("The file is empty.")
    limits = limits or Limits.from_settings()
    real = content_format(data[:SNIFF_BYTES], fmt)
    if real != fmt:
        raise ContentMismatch(
            f"The file was stored as {Format(fmt).label} but its content is {Format(real).label}; upload it again."
        )
    # Keyed by the Format values (str enum members hash and compare as their values).
    parsers: dict[str, Callable[..., Parsed]] = {
        Format.PDF: parse_pdf,
        Format.DOCX: parse_docx,
        Format.MARKDOWN: parse_markdown,
        Format.TEXT: parse_text,
        Format.HTML: parse_html,
    }
    parser = parsers.get(fmt)
    if parser is None:
        raise ParseError(f"Unsupported format '{fmt}'.")
    parsed = parser(data, limits=limits)
    limits.check_time()
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


def parse_text(data: bytes, *, limits: Limits | None = None) -> Parsed:
    out = _Collector(limits)
    text = _decode(data)
    out.check_text_length(len(text))
    for paragraph in _paragraphs(text):
        out.add(paragraph)
    return out.parsed()


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def parse_markdown(data: bytes, *, limits: Limits | None = None) -> Parsed:
    out = _Collector(limits)
    text = _decode(data)
    out.check_text_length(len(text))
    buffer: list[str] = []
    in_code = False

    def flush() -> None:
        for paragraph in _paragraphs("\n".join(buffer)):
            out.add(paragraph)
        buffer.clear()

    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
            buffer.append("")
            continue
        match = None if in_code else _MD_HEADING.match(line)
        if match:
            flush()
            title = _md_inline(match.group(2))
            if title:
                out.add(title, heading_level=len(match.group(1)))
        else:
            buffer.append(line if in_code else _md_inline(re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", line)))
    flush()
    return out.parsed()


def _md_inline(text: str) -> str:
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images: keep alt text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: keep label
    return re.sub(r"[*_`]{1,3}", "", text).strip()


_HTML_BLOCKS = {"p", "li", "td", "th", "pre", "blockquote", "dd", "dt", "caption", "figcaption"}
_HTML_HIDDEN = {"script", "style", "noscript", "template", "head"}
# The visible text below a node. The hidden elements are skipped while reading, not removed from the
# tree: lxml refuses to re-attach a removed element's tail holding a control character (ValueError).
_VISIBLE_TEXT = "".join([".//text()[not(", " or ".join(f"ancestor::{tag}" for tag in sorted(_HTML_HIDDEN)), ")]"])


def parse_html(data: bytes, *, limits: Limits | None = None) -> Parsed:
    import lxml.html
    from lxml import etree

    out = _Collector(limits)
    # lxml builds the whole tree (~300 bytes per element: 3 M tiny elements took 860 MB): count the
    # tags before parsing. libxml2 caps the nesting depth itself (255).
    elements = data.count(b"<")
    if elements > out.limits.max_html_elements:
        raise ParseError(
            f"The HTML has more than {out.limits.max_html_elements:,} tags (the limit); split it into smaller files."
        )
    try:
        root = lxml.html.document_fromstring(data)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError) as exc:
        raise ParseError(f"The HTML could not be read: {exc}") from None
    visible_text = etree.XPath(_VISIBLE_TEXT)

    def text_of(el: Any) -> str:
        return " ".join("".join(visible_text(el)).split())

    found = False
    for count, el in enumerate(root.iter(), start=1):
        if count % 1024 == 0:
            out.limits.check_time()
        tag = el.tag if isinstance(el.tag, str) else ""
        if not (tag in _HTML_BLOCKS or re.fullmatch(r"h[1-6]", tag)):
            continue
        ancestors = {a.tag for a in el.iterancestors() if isinstance(a.tag, str)}
        if ancestors & _HTML_HIDDEN:
            continue
        if tag in _HTML_BLOCKS and ancestors & _HTML_BLOCKS:
            continue  # its text is part of the enclosing block's
        text = text_of(el)
        if text:
            out.add(text, heading_level=0 if tag in _HTML_BLOCKS else int(tag[1]))
            found = True
    if not found:  # no block markup at all: take the body's text
        for paragraph in _paragraphs("".join(visible_text(root))):
            out.add(paragraph)
    return out.parsed()


# --- DOCX: a ZIP of XML parts, read as a stream ---------------------------------------------------
#
# python-docx loads the whole document part into one lxml tree (120 MB of XML took 1.5 GB) and
# resolves a paragraph's style by scanning every style of styles.xml in Python (~1 ms per call, two
# calls per paragraph: 43 s for 20,000 paragraphs). Here the archive's directory is checked before
# anything is inflated, the document part is parsed as a stream of events with each paragraph freed
# once read, and the styles are read once into a dict.

_W_NAMESPACES = (
    "http://schemas.openxmlformats.org/wordprocessingml/2006/main",
    "http://purl.oclc.org/ooxml/wordprocessingml/main",  # "strict" OOXML
)
_REL_NAMESPACE = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT_NAMESPACE = "http://schemas.openxmlformats.org/package/2006/content-types"
# Parts read whole (relationships, content types) are small in any real document.
_SMALL_PART_BYTES = 1024 * 1024


def _w(local: str) -> set[str]:
    return {f"{{{ns}}}{local}" for ns in _W_NAMESPACES}


_P, _T, _TC, _TR, _TBL, _PSTYLE = _w("p"), _w("t"), _w("tc"), _w("tr"), _w("tbl"), _w("pStyle")
_SPACE = _w("tab") | _w("ptab") | _w("br") | _w("cr")
_HYPHEN = _w("noBreakHyphen")
_STYLE, _NAME = _w("style"), _w("name")


def _wattr(el: object, local: str) -> str | None:
    for ns in _W_NAMESPACES:
        value = el.get("{" + ns + "}" + local)  # type: ignore[attr-defined]
        if value is not None:
            return str(value)
    return None


class _CappedReader:
    """A file-like view of an archive member that stops with ParseError past ``limit`` bytes."""

    def __init__(self, raw: IO[bytes], limit: int, limits: Limits):
        self.raw, self.limit, self.limits, self.read_bytes = raw, limit, limits, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if 0 < size <= 1 << 20 else 1 << 20)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise ParseError(
                f"The Word file's text expands to more than {self.limit // (1024 * 1024)} MB of XML (the limit); "
                "split it into smaller files."
            )
        self.limits.check_time()
        return data


def _zip_entry_count(data: bytes) -> int:
    """Entries declared by the end-of-central-directory record, read before the directory itself."""
    tail_start = max(0, len(data) - (22 + 0xFFFF))
    at = data.rfind(b"PK\x05\x06", tail_start)
    if at < 0 or at + 22 > len(data):
        raise ParseError("The Word file is damaged or not a .docx file (no ZIP directory).")
    entries = struct.unpack_from("<H", data, at + 10)[0]
    if entries == 0xFFFF:  # ZIP64: the count is in the ZIP64 record the locator before it points to
        locator = at - 20
        if locator < 0 or data[locator : locator + 4] != b"PK\x06\x07":
            raise ParseError("The Word file is damaged or not a .docx file (bad ZIP64 directory).")
        record = struct.unpack_from("<Q", data, locator + 8)[0]
        if record + 40 > len(data) or data[record : record + 4] != b"PK\x06\x06":
            raise ParseError("The Word file is damaged or not a .docx file (bad ZIP64 directory).")
        entries = struct.unpack_from("<Q", data, record + 32)[0]
    return int(entries)


def _iter_xml(stream: _CappedReader) -> Iterator[tuple[str, object]]:
    from lxml import etree

    yield from etree.iterparse(
        stream,
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _small_xml(archive: zipfile.ZipFile, name: str) -> object:
    from lxml import etree

    with archive.open(name) as raw:
        data = raw.read(_SMALL_PART_BYTES + 1)
    if len(data) > _SMALL_PART_BYTES:
        raise ParseError(f"The Word file's part {name} is over {_SMALL_PART_BYTES // 1024} KB; it is not a real .docx.")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    return etree.fromstring(data, parser)


def _relationship_target(archive: zipfile.ZipFile, rels_name: str, kind: str, base: str) -> str | None:
    if rels_name not in archive.NameToInfo:
        return None
    root = _small_xml(archive, rels_name)
    for rel in root.iter(f"{{{_REL_NAMESPACE}}}Relationship"):  # type: ignore[attr-defined]
        if (rel.get("Type") or "").endswith(f"/{kind}") and rel.get("TargetMode") != "External":
            target = rel.get("Target") or ""
            return target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(base, target))
    return None


def parse_docx(data: bytes, *, limits: Limits | None = None) -> Parsed:
    from lxml import etree

    out = _Collector(limits)
    limits = out.limits
    try:
        entries = _zip_entry_count(data)
        if entries > limits.docx_max_entries:
            raise ParseError(
                f"The Word file holds {entries:,} parts; the limit is {limits.docx_max_entries:,}. "
                "It is not a document this service reads."
            )
        archive = zipfile.ZipFile(io.BytesIO(data))
        declared = sum(info.file_size for info in archive.infolist())
        if declared > limits.docx_max_uncompressed_bytes:
            raise ParseError(
                f"The Word file expands to {declared / (1024 * 1024):,.0f} MB; the limit is "
                f"{limits.docx_max_uncompressed_bytes // (1024 * 1024)} MB."
            )
        document_part = _relationship_target(archive, "_rels/.rels", "officeDocument", "")
        if document_part is None or document_part not in archive.NameToInfo:
            raise ParseError("The file is a ZIP archive but not a Word (.docx) document.")
        content_types = _small_xml(archive, "[Content_Types].xml")
        declared_type = next(
            (
                o.get("ContentType") or ""
                for o in content_types.iter(f"{{{_CT_NAMESPACE}}}Override")  # type: ignore[attr-defined]
                if (o.get("PartName") or "").lstrip("/") == document_part
            ),
            "",
        )
        if "wordprocessingml" not in declared_type and "ms-word" not in declared_type:
            raise ParseError("The file is an Office archive but not a Word (.docx) document.")
        size = archive.getinfo(document_part).file_size
        if size > limits.docx_max_xml_bytes:
            raise ParseError(
                f"The Word file's text expands to {size / (1024 * 1024):,.0f} MB of XML; the limit is "
                f"{limits.docx_max_xml_bytes // (1024 * 1024)} MB. Split it into smaller files."
            )
        base = posixpath.dirname(document_part)
        rels = posixpath.join(base, "_rels", posixpath.basename(document_part) + ".rels")
        styles_part = _relationship_target(archive, rels, "styles", base)
        headings = _docx_heading_levels(archive, styles_part, limits) if styles_part in archive.NameToInfo else {}
        with archive.open(document_part) as raw:
            _docx_body(_CappedReader(raw, limits.docx_max_xml_bytes, limits), headings, out)
    except ParseError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        KeyError,
        ValueError,
        struct.error,
        NotImplementedError,  # a compression method zipfile does not know
        RuntimeError,  # an encrypted member
        etree.LxmlError,
    ) as exc:
        raise ParseError(f"The Word file is damaged or not a .docx file ({type(exc).__name__}).") from None
    return out.parsed()


def _docx_heading_levels(archive: zipfile.ZipFile, part: str, limits: Limits) -> dict[str | None, int]:
    """Heading level by paragraph style id (key None: the default paragraph style), from styles.xml."""
    if archive.getinfo(part).file_size > limits.docx_max_xml_bytes:
        raise ParseError("The Word file's styles part is over the XML size limit.")
    levels: dict[str | None, int] = {}
    with archive.open(part) as raw:
        for event, el in _iter_xml(_CappedReader(raw, limits.docx_max_xml_bytes, limits)):
            if event != "end" or el.tag not in _STYLE:  # type: ignore[attr-defined]
                continue
            if _wattr(el, "type") == "paragraph":
                name_el = next((c for c in el if c.tag in _NAME), None)  # type: ignore[attr-defined]
                name = (_wattr(name_el, "val") or "").lower() if name_el is not None else ""
                match = re.match(r"heading (\d)", name)
                level = int(match.group(1)) if match else (1 if name == "title" else 0)
                levels[_wattr(el, "styleId")] = level
                if _wattr(el, "default") in ("1", "true", "on"):
                    levels[None] = level
            el.clear()  # type: ignore[attr-defined]
    return levels


def _docx_body(stream: _CappedReader, headings: dict[str | None, int], out: _Collector) -> None:
    """Paragraphs and table rows in document order: a row is one block, its cells joined by " | "."""
    limits = out.limits
    paragraphs: list[tuple[list[str], list[str | None]]] = []  # open paragraphs: text pieces, [style id]
    rows: list[list[str]] = []  # open table rows: their cells' texts
    cells: list[list[str]] = []  # open table cells: their paragraphs' texts
    seen_paragraphs = seen_cells = 0
    for event, el in _iter_xml(stream):
        tag = el.tag  # type: ignore[attr-defined]
        if event == "start":
            if tag in _P:
                paragraphs.append(([], [None]))
            elif tag in _TR:
                rows.append([])
            elif tag in _TC:
                cells.append([])
                seen_cells += 1
                if seen_cells > limits.docx_max_table_cells:
                    raise ParseError(
                        f"The Word file has more than {limits.docx_max_table_cells:,} table cells (the limit); "
                        "split it into smaller files."
                    )
            continue
        if tag in _T:
            if paragraphs and el.text:  # type: ignore[attr-defined]
                paragraphs[-1][0].append(el.text)  # type: ignore[attr-defined]
        elif tag in _SPACE:
            if paragraphs:
                paragraphs[-1][0].append(" ")
        elif tag in _HYPHEN:
            if paragraphs:
                paragraphs[-1][0].append("-")
        elif tag in _PSTYLE:
            if paragraphs and paragraphs[-1][1][0] is None:  # the first: a tracked change's old style follows
                paragraphs[-1][1][0] = _wattr(el, "val")
        elif tag in _P:
            pieces, (style,) = paragraphs.pop()
            seen_paragraphs += 1
            if seen_paragraphs > limits.max_paragraphs:
                raise ParseError(
                    f"The document has more than {limits.max_paragraphs:,} paragraphs (the limit); "
                    "split it into smaller files."
                )
            text = " ".join("".join(pieces).split())
            if cells:
                if text:
                    cells[-1].append(text)
            else:
                out.add(text, heading_level=headings.get(style, 0) if style else headings.get(None, 0))
            _free(el)
        elif tag in _TC and cells:
            text = " ".join(" ".join(cells.pop()).split())
            if text and rows:
                rows[-1].append(text)
        elif tag in _TR and rows:
            text = " | ".join(rows.pop())
            if cells:  # a table inside a cell: its rows are that cell's text
                if text:
                    cells[-1].append(text)
            else:
                out.add(text)
            _free(el)
        elif tag in _TBL:
            _free(el)


def _free(el: object) -> None:
    """Drop a finished element and the finished siblings before it: memory stays one paragraph deep."""
    el.clear(keep_tail=True)  # type: ignore[attr-defined]
    parent = el.getparent()  # type: ignore[attr-defined]
    if parent is not None:
        while el.getprevious() is not None:  # type: ignore[attr-defined]
            del parent[0]


# --- PDF ------------------------------------------------------------------------------------------

# pypdf bounds every content stream by its parsing work (operands + operators); its default of 2 M
# let one 11 KB page (a compressed stream of 1 M "(a) Tj") take 5 s and 450 MB before the limit
# stopped it. A dense real page has a few 10,000s. Streams inflate to at most 25 MB (default 75 MB);
# no external JBIG2 decoder is ever started for a tenant's file.
_PYPDF_LIMITS: dict[str, Any] = {
    "stream_parsing_work_maximum_count": 300_000,
    "zlib_maximum_output_length": 25_000_000,
    "jbig2dec_binary": None,
}


def parse_pdf(data: bytes, *, limits: Limits | None = None) -> Parsed:
    import pypdf
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError

    out = _Collector(limits)
    limits = out.limits
    try:
        with pypdf.apply_configuration(**_PYPDF_LIMITS):
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                raise ParseError("The PDF is encrypted; upload an unprotected copy.")
            pages = len(reader.pages)
            if pages > limits.max_pdf_pages:
                raise ParseError(
                    f"The PDF has {pages:,} pages; the limit is {limits.max_pdf_pages:,}. Split it into smaller files."
                )
            for number in range(1, pages + 1):
                limits.check_time()
                text = reader.pages[number - 1].extract_text() or ""
                out.check_text_length(len(text))
                # PDF text has hard line breaks inside paragraphs: join lines, split on blank lines.
                for paragraph in _paragraphs(text):
                    out.add(paragraph, page=number)
            return out.parsed(pages)
    except (ParseError, SoftTimeLimitExceeded):
        raise
    except LimitReachedError as exc:
        raise ParseError(f"The PDF is over a size limit of its content ({exc}); split it into smaller files.") from None
    except Exception as exc:
        # pypdf raises whatever its parsing of a malformed file runs into (PdfReadError, ValueError,
        # KeyError, TypeError, AttributeError, IndexError, RecursionError, struct.error, ...: the
        # fuzz test meets many): to the tenant it is one thing, a damaged PDF.
        raise ParseError(f"The PDF is damaged and could not be read ({type(exc).__name__}: {exc}).") from None
