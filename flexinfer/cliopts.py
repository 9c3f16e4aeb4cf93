"""One CLI style for every console script (`flexinfer`, `flexinfer-agent`, `flexinfer-extender`,
`flexinfer-controller`, `flexinfer-proxy`).

- `--version` prints the installed distribution's version (the same string the `_info` metrics and the
  API client's User-Agent carry).
- `--log-level` and `--log-format` on every component.
- Every option can also come from an environment variable named `FLEXINFER_<OPTION>` (for the `flexinfer`
  CLI's subcommands `FLEXINFER_<SUBCOMMAND>_<OPTION>`), and `--help` shows which.
- Listeners: `--bind-address` (default loopback: a component only listens on other interfaces when its
  manifest says so) and `--<what>-port`.

Usage::

    @component_command()
    @bind_address_option()
    @click.option("--metrics-port", ...)
    @logging_options
    def main(...): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from flexinfer.buildinfo import DIST_NAME, version

ENV_PREFIX = "FLEXINFER"
LOOPBACK = "127.0.0.1"
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")

F = TypeVar("F", bound=Callable[..., Any])


CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "auto_envvar_prefix": ENV_PREFIX,
    "show_default": True,
    "max_content_width": 110,
}


def show_envvars(cmd: click.Command) -> click.Command:
    """Mark every option of `cmd` (and of a group's subcommands) to show its environment variable in --help.

    Call it on a group after all subcommands are added.
    """
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name not in ("help", "version"):
            p.show_envvar = True
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            show_envvars(sub)
    return cmd


def with_exit_codes(help_text: str | None, exit_codes: str) -> str:
    """`help_text` followed by an "Exit codes:" paragraph (`\\b`: click keeps its line breaks)."""
    return f"{(help_text or '').rstrip()}\n\n\b\nExit codes:\n{exit_codes}"


def component_command(name: str | None = None, exit_codes: str = "") -> Callable[[F], click.Command]:
    """`@click.command` with the shared context settings, `--version`, and env vars shown in --help.

    `exit_codes` is appended to the help text (an "Exit codes:" paragraph)."""

    def deco(f: F) -> click.Command:
        f = click.version_option(version(), "--version", prog_name=name or DIST_NAME,
                                 message="%(prog)s %(version)s")(f)
        if exit_codes:
            f.__doc__ = with_exit_codes(f.__doc__, exit_codes)
        cmd = click.command(name=name, context_settings=dict(CONTEXT_SETTINGS))(f)
        return show_envvars(cmd)

    return deco


def logging_options(f: F) -> F:
    """--log-level and --log-format (both also from FLEXINFER_LOG_LEVEL / FLEXINFER_LOG_FORMAT)."""
    f = click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None,
                     help="Log output: json lines (default in a cluster or off a terminal) or console.")(f)
    f = click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info",
                     help="Minimum log level.")(f)
    return f


def bind_address_option(help_suffix: str = "") -> Callable[[F], F]:
    """--bind-address for every listener of a component (loopback unless the manifest says otherwise)."""

    def deco(f: F) -> F:
        return click.option("--bind-address", default=LOOPBACK,
                            help="Address every listener of this component binds to (0.0.0.0 or the pod IP "
                                 "in a cluster: the manifests set it)." + help_suffix)(f)

    return deco


def port_option(name: str, default: int, what: str) -> Callable[[F], F]:
    """`--<name>-port` (0 disables that listener)."""
    return click.option(f"--{name}-port", type=click.IntRange(0, 65535), default=default,
                        help=f"{what} (0 = off).")
