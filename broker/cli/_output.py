"""The one way commands print: data on stdout (JSON with ``--json``, else text), notes and
errors on stderr, so scripts can pipe stdout whatever else is said."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2


class Out:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str) -> None:
        print(json.dumps(data, indent=2, default=str) if self.as_json else text)

    def rows(self, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        self.emit(rows, table(rows, columns))

    def record(self, data: dict[str, Any]) -> None:
        """One object as aligned ``key value`` lines."""
        self.emit(data, "\n".join(f"{k:24} {'-' if v is None else v}" for k, v in data.items()))

    def note(self, text: str) -> None:
        """For people only (stderr, and never in ``--json`` mode)."""
        if not self.as_json:
            print(text, file=sys.stderr)

    def next_page(self, option: str, value: object) -> None:
        """Where the next page starts: on stderr in both modes (scripts read it too)."""
        print(f"more: rerun with {option} {value}", file=sys.stderr)

    def error(self, code: str, detail: str) -> None:
        if self.as_json:
            print(json.dumps({"error": code, "detail": detail}), file=sys.stderr)
        else:
            print(f"error ({code}): {detail}", file=sys.stderr)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)
