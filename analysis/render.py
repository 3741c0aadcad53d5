"""Writing the sections out: one self-contained HTML file (PNGs embedded as base64),
Markdown next to the PNG files, and each table as CSV."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.figures import STATE_COLOURS
from analysis.sections import Section
from studies.tables import format_cell, markdown_table

FORMATS = ("html", "md", "json")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1320px;color:#212529;padding:0 16px}
h1{margin-bottom:4px} .meta{color:#495057;font-size:14px;margin:2px 0}
h2{border-bottom:1px solid #dee2e6;padding-bottom:4px;margin-top:36px}
.help{color:#343a40;max-width:980px;font-size:14px;line-height:1.45}
.note{color:#6c757d;font-size:13px;margin:2px 0}
img{max-width:100%;border:1px solid #e9ecef}
table{border-collapse:collapse;font-size:13px;margin:10px 0}
th,td{border:1px solid #dee2e6;padding:3px 8px;text-align:right}
th{background:#f1f3f5} td.txt{text-align:left}
nav a{margin-right:14px;font-size:14px}
.chips span{display:inline-block;border-radius:10px;padding:1px 9px;margin-right:6px;
color:white;font-size:13px}
"""


def write_report(
    sections: Sequence[Section], header: dict[str, str], out: Path, formats: Sequence[str]
) -> list[Path]:
    """Write PNGs and CSVs for every section, then the requested documents; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for section in sections:
        if section.figure is not None:
            path = out / f"{section.key}.png"
            section.figure.savefig(path, dpi=100)
            written.append(path)
        section.table.to_csv(out / f"{section.key}.csv", index=False)
        written.append(out / f"{section.key}.csv")
    if "html" in formats:
        written.append(out / "report.html")
        written[-1].write_text(to_html(sections, header, out), encoding="utf-8")
    if "md" in formats:
        written.append(out / "report.md")
        written[-1].write_text(to_markdown(sections, header), encoding="utf-8")
    if "json" in formats:
        written.append(out / "report.json")
        written[-1].write_text(to_json(sections, header), encoding="utf-8")
    return written


def to_json(sections: Sequence[Section], header: dict[str, str]) -> str:
    """The answers for a program to read: the header, and each section's `data` lists
    (`verdicts`, `budget_curves`, `reseeded`), present and empty when a section had none."""
    document: dict = {"header": dict(header), "verdicts": [], "budget_curves": [], "reseeded": []}
    for section in sections:
        for key, values in section.data.items():
            document.setdefault(key, []).extend(values)
    return json.dumps(_plain(document), indent=1, allow_nan=False) + "\n"


def _plain(value: object) -> object:
    """JSON's values: numpy numbers as Python's, NaN and infinities as null."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | float) or hasattr(value, "item"):
        number = value.item() if hasattr(value, "item") else value
        if isinstance(number, float) and not math.isfinite(number):
            return None
        return number
    return str(value)


def to_html(sections: Sequence[Section], header: dict[str, str], folder: Path) -> str:
    title = html.escape(header.get("title", "Report"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>",
             f"<style>{_CSS}</style></head><body><h1>{title}</h1>"]  # fmt: skip
    parts += [f"<p class='meta'>{html.escape(k)}: {html.escape(str(v))}</p>"
              for k, v in header.items() if k not in ("title", "counts")]  # fmt: skip
    if header.get("counts"):
        parts.append(f"<p class='chips'>{_chips(header['counts'])}</p>")
    parts.append("<nav>" + "".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>"
                                   for s in sections) + "</nav>")  # fmt: skip
    for section in sections:
        parts.append(f"<h2 id='{section.key}'>{html.escape(section.title)}</h2>")
        parts.append(f"<p class='help'>{html.escape(section.how_to_read)}</p>")
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in section.notes if n]
        png = folder / f"{section.key}.png"
        if section.figure is not None and png.is_file():
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<img alt='{section.key}' src='data:image/png;base64,{data}'>")
        if len(section.table):
            parts.append(_html_table(section.table))
    parts.append("</body></html>")
    return "\n".join(parts)


def _chips(counts: str) -> str:
    """'4 complete, 1 pruned' -> coloured state chips."""
    chips = []
    for item in counts.split(", "):
        number, _, state = item.partition(" ")
        colour = STATE_COLOURS.get(state.upper(), "#868e96")
        chips.append(f"<span style='background:{colour}'>{html.escape(item)}</span>")
    return "".join(chips)


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for values in table.itertuples(index=False):
        cells = []
        for value in values:
            text = html.escape(format_cell(value))
            style = ""
            if text in STATE_COLOURS:
                style = f" style='color:{STATE_COLOURS[text]};font-weight:600'"
            kind = "" if isinstance(value, int | float) else " class='txt'"
            cells.append(f"<td{kind}{style}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def to_markdown(sections: Sequence[Section], header: dict[str, str]) -> str:
    lines = [f"# {header.get('title', 'Report')}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "title"]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.how_to_read, ""]
        lines += [f"*{n}*  " for n in section.notes if n]
        if section.figure is not None:
            lines += ["", f"![{section.title}]({section.key}.png)"]
        if len(section.table):
            lines += ["", frame_as_markdown(section.table)]
    return "\n".join(lines) + "\n"


def frame_as_markdown(table: pd.DataFrame) -> str:
    columns = [str(c) for c in table.columns]
    rows = [dict(zip(columns, row, strict=True)) for row in table.itertuples(index=False)]
    return markdown_table(rows, columns)
