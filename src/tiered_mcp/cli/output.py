"""What every command shares: exit codes, the console, money, and one-line failures.

Exit codes: 0 success; 1 the tool (or a doctor check) failed; 2 bad usage, config or spec; 3 the server could not
be started or reached; 130 interrupted (Ctrl-C); 141 stdout was closed early (`| head`), silently, as shells do.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

OK, FAILED, USAGE, UNREACHABLE, INTERRUPTED, CLOSED_PIPE = 0, 1, 2, 3, 130, 141


def console(stderr: bool = False) -> Any:
    """A rich console: the terminal's width on a terminal; piped, wide enough that tables do not fold."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(140, shutil.get_terminal_size().columns)
    return Console(highlight=False, width=width, stderr=stderr)


def money(x: float | None) -> str:
    """USD, with enough digits that a cheap call does not show as $0.00."""
    if x is None:
        return "unknown"
    if x == 0:
        return "$0"
    sign, x = ("-" if x < 0 else ""), abs(x)
    return f"{sign}${x:,.6f}" if x < 0.01 else f"{sign}${x:,.4f}"


def fail(message: str, code: int = FAILED) -> int:
    """Print one line on stderr and return the exit code."""
    print(f"tiered-mcp: {message}", file=sys.stderr)
    return code


def first_leaf(e: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups, as anyio's task groups wrap them."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def fitted_table(con: Any, headers: list[str], rows: list[list[str]], flex: str | None = None,
                 title: str | None = None, right: tuple[str, ...] = ()) -> Any:
    """A table that stays readable at the console's width: every column but `flex` keeps its full width (names
    and money never fold); `flex` (a free-text column) is shortened with an ellipsis, or dropped when no room is
    left. Cells may hold rich markup only outside the flex column's measured text.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cap = 26  # a long model name is cut (with an ellipsis) before the table folds
    widths = {h: min(cap, max([len(h)] + [Text.from_markup(r[i]).cell_len for r in rows])) for i, h in enumerate(headers)}
    fixed = sum(w + 2 for h, w in widths.items() if h != flex) + 1
    room = con.width - fixed - 3
    shown = [h for h in headers if h != flex or room >= 12]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for h in shown:
        if h == flex:
            table.add_column(h, overflow="ellipsis", no_wrap=True, max_width=room)
        else:
            table.add_column(h, no_wrap=True, min_width=widths[h], max_width=cap, overflow="ellipsis",
                             justify="right" if h in right else "left")
    for r in rows:
        table.add_row(*[c for h, c in zip(headers, r, strict=True) if h in shown])
    return table
