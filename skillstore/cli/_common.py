"""Shared CLI plumbing: open the workspace per command, and print rows as a rich table or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")


@contextmanager
def workspace_session() -> Iterator[tuple[Any, Any]]:
    """(catalog, session) for one command: checked, committed on success, always closed."""
    from ..catalog import open_catalog

    catalog = open_catalog()
    try:
        with catalog.session() as session:
            yield catalog, session
    finally:
        catalog.close()


def jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    return value


def print_json(doc: Any) -> None:
    typer.echo(json.dumps(jsonable(doc), indent=2, sort_keys=False))


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    value = jsonable(value)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _block(value: Any, indent: int = 0) -> str:
    """A nested dict or list as indented "key: value" lines (a job's request, its step
    outputs) instead of one line of JSON; scalars and flat lists stay on one line."""
    value = jsonable(value)
    pad = "  " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            item = jsonable(item)
            nested = (isinstance(item, dict) and item) or (
                isinstance(item, list) and any(isinstance(v, dict | list) for v in item))
            lines.append(f"{pad}{key}:\n{_block(item, indent + 1)}" if nested
                         else f"{pad}{key}: {_block(item)}")
        return "\n".join(lines)
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "\n".join(f"{pad}- {_block(v, indent + 1).lstrip()}" for v in value)
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "[]"
    if isinstance(value, float) and abs(value) >= 1e6:  # a timestamp, a byte count
        return f"{value:.0f}"
    return _cell(value)


def print_rows(rows: Sequence[dict], columns: Sequence[str], *, as_json: bool, title: str,
               empty: str = "Nothing yet.", footer: str | None = None,
               compact: bool = False) -> None:
    """A listing: a rich table for people, `--json` (the full rows) for programs. ``compact``
    drops the borders, for a wide listing that must still fit 80 columns."""
    if as_json:
        print_json(list(rows))
        return
    console = Console()
    if not rows:
        console.print(empty)
        return
    table = Table(title=title, title_justify="left", **(
        {"box": None, "pad_edge": False, "header_style": "bold underline"} if compact else {}))
    for i, col in enumerate(columns):
        # Never cut a value; the leading id and name columns do not even wrap.
        table.add_column(col, overflow="fold", no_wrap=i < 2)
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    console.print(table)
    if footer:
        console.print(footer)


def print_record(doc: dict, *, as_json: bool, title: str) -> None:
    """One object: key/value lines for people, JSON for programs."""
    if as_json:
        print_json(doc)
        return
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in doc.items():
        table.add_row(key, _block(value))
    Console().print(table)


def short(digest: str | None, n: int = 12) -> str | None:
    return None if digest is None else digest.removeprefix("sha256:")[:n]
