"""The one DOCX-bomb builder of the benchmarks and tests: a real .docx (python-docx's own parts) whose
body is streamed into the archive, so a 120 MB body never sits in memory. The abuse benchmark times
what the indexing worker does with one; the parse-limit tests check how it fails."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any

LOREM = b"Lorem ipsum dolor sit amet."


def docx_with_body(write_body: Callable[[Any], None]) -> bytes:
    """A real .docx whose document body is written by ``write_body`` (given the open archive member)."""
    import docx

    seed = io.BytesIO()
    document = docx.Document()
    document.add_paragraph("seed")
    document.save(seed)
    source = zipfile.ZipFile(seed)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename != "word/document.xml":
                archive.writestr(info.filename, data)
                continue
            head, rest = data.split(b"<w:body>", 1)
            with archive.open(info.filename, "w") as member:
                member.write(head + b"<w:body>")
                write_body(member)
                member.write(rest[rest.index(b"<w:sectPr") :])
    return out.getvalue()


def paragraphs(count: int, text: bytes = LOREM) -> Callable[[Any], None]:
    """A body of ``count`` identical paragraphs of ``text``."""

    def write(member: Any) -> None:
        block = b"<w:p><w:r><w:t>" + text + b"</w:t></w:r></w:p>"
        for _ in range(count // 1000):
            member.write(block * 1000)
        member.write(block * (count % 1000))

    return write
