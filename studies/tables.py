"""Tables as text, for the records a study writes and the reports that read them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def format_cell(value: Any) -> str:
    """A table cell as text: floats to 4 significant digits, missing values blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of `rows` (dicts), columns in first-seen order unless given."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))

    def text(value: Any) -> str:
        return format_cell(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(str(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
