"""kubectl-like output: aligned tables on a terminal, or -o json|yaml."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

OUTPUT_OPTION = click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
                             show_default=True, help="Output format.")


def console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=200)


def emit(data: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> Table:
    t = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t
