"""Tables for the console: a Markdown table wider than the console is printed as aligned plain
text, its column headers on two lines and its columns split into blocks that each fit, every
block repeating the row labels. The wide Markdown stays in the files (table.md, comparison.md)."""

from __future__ import annotations

from collections.abc import Sequence

WIDTH = 100
_GAP = "  "


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _is_rule(cells: Sequence[str]) -> bool:
    return all(c and set(c) <= set("-:") for c in cells)


def _header(text: str) -> tuple[str, str]:
    """A header cell on two lines: ``acc INT+TS`` -> ``acc`` over ``INT+TS``."""
    top, _, bottom = text.partition(" ")
    return (top, bottom) if bottom else ("", top)


def _blocks(sizes: Sequence[int], width: int) -> list[list[int]]:
    """The columns after the first split into the fewest near-equal runs that each fit in
    ``width`` beside the first (a single column wider than that gets a run of its own)."""
    rest = list(range(1, len(sizes)))
    for count in range(1, len(rest) + 1):
        step, extra = divmod(len(rest), count)
        runs, start = [], 0
        for k in range(count):
            stop = start + step + (1 if k < extra else 0)
            runs.append(rest[start:stop])
            start = stop
        if all(sizes[0] + sum(len(_GAP) + sizes[i] for i in run) <= width for run in runs):
            return runs
    return [[i] for i in rest]


def _plain(rows: list[list[str]], right: list[bool], width: int) -> list[str]:
    """Aligned text of a table (first row: headers), split into blocks no wider than ``width``."""
    headers = [_header(h) for h in rows[0]]
    body = [[c.replace("**", "") for c in row] for row in rows[1:]]
    ncols = len(headers)
    sizes = [
        max([len(headers[i][0]), len(headers[i][1]), *(len(r[i]) for r in body if i < len(r))])
        for i in range(ncols)
    ]
    blocks = _blocks(sizes, width)

    def cell(text: str, i: int) -> str:
        return text.rjust(sizes[i]) if right[i] else text.ljust(sizes[i])

    lines: list[str] = []
    for number, block in enumerate(blocks):
        if number:
            lines.append("")
        columns = [0, *block]
        for part in (0, 1):
            lines.append(_GAP.join(cell(headers[i][part], i) for i in columns).rstrip())
        lines.append(_GAP.join("-" * sizes[i] for i in columns))
        for row in body:
            padded = row + [""] * (ncols - len(row))
            lines.append(_GAP.join(cell(padded[i], i) for i in columns).rstrip())
    return lines


def console_table(text: str, width: int = WIDTH) -> str:
    """``text`` with each Markdown table wider than ``width`` columns rewritten as aligned plain
    text that fits, and other lines longer than ``width`` wrapped (narrower tables unchanged)."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("|"):
            out.append(console_lines(lines[i], width))
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].lstrip().startswith("|"):
            j += 1
        block = lines[i:j]
        i = j
        rows = [_cells(line) for line in block]
        if max(map(len, block)) <= width or len(rows) < 2 or not _is_rule(rows[1]):
            out.extend(block)
            continue
        right = [c.endswith(":") for c in rows[1]]
        right += [False] * (len(rows[0]) - len(right))
        out.extend(_plain([rows[0], *rows[2:]], right, width))
    return "\n".join(out)


def console_lines(text: str, width: int = WIDTH) -> str:
    """``text`` with lines longer than ``width`` wrapped at spaces, continuations indented."""
    import textwrap

    wrapped: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            wrapped.append(line)
        else:
            wrapped.extend(
                textwrap.wrap(line, width, subsequent_indent="    ", break_long_words=False)
            )
    return "\n".join(wrapped)
