"""Markdown tables, as the reports and tools write them."""
from typing import Iterable, Sequence


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A header, its rule and one line per row, each cell the ``str`` of its value."""
    lines = [_line(head), "|" + "---|" * len(head)] + [_line(row) for row in rows]
    return "\n".join(lines) + "\n"


def _line(cells: Sequence[object]) -> str:
    # a '|' in a cell would split the row, a line break would end the table
    return "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |"


__all__ = ["markdown_table"]
