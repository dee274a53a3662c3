"""The one PDF writer of the benchmarks and tests, on fpdf2: pages of text lines in Helvetica. Tests
that need a fixed document use the files in tests/fixtures/documents/ instead; this is for sizes chosen
per run (a 300-page bench document, a page-count bomb)."""

from __future__ import annotations

from fpdf import FPDF

PAGE = (612, 842)  # points
LEADING = 12


def write_pdf(pages: list[list[str]]) -> bytes:
    """A real PDF with one page per item of ``pages``, each a list of text lines (Latin-1: the core
    font's characters)."""
    pdf = FPDF(unit="pt", format=PAGE)
    pdf.set_auto_page_break(False)
    pdf.set_font("helvetica", size=10)
    for lines in pages:
        pdf.add_page()
        for number, line in enumerate(lines):
            pdf.text(40, 42 + LEADING * number, line)
    return bytes(pdf.output())
