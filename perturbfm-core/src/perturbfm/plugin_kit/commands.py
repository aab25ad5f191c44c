"""``pfm-bench plugins new``: the plugin kit's CLI command.

Registered through a ``pfm_register_commands(cli)`` hookimpl that adds a
``plugins`` group; the core merges a plugin group named like one of its own
groups into it, so the command appears as ``pfm-bench plugins new``.
"""

from __future__ import annotations

from typing import Any

import click

from perturbfm.plugin_kit.generator import KINDS, generate_plugin


@click.group("plugins")
def plugins_group() -> None:
    """Plugin kit commands (merged into the core's ``plugins`` group)."""


@plugins_group.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(list(KINDS)), required=True, help="What the plugin registers.")
@click.option("--dest", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Directory in which to create the package directory NAME/.")
def new_plugin(name: str, kind: str, dest: str) -> None:
    """Generate a plugin package NAME/ of KIND that installs, registers and
    passes the PerturbFM conformance suite out of the box."""
    out = generate_plugin(name, kind, dest)
    click.echo(f"created {kind} plugin {out.names.dist} (registered as {out.names.normalized!r}) in {out.path}",
               err=True)
    click.echo(f"next: pip install -e {out.path}  &&  pytest {out.path}", err=True)
    click.echo(str(out.path))


def register_commands(cli: Any) -> None:
    """Add the kit's commands to the ``pfm-bench`` group ``cli`` (call from a
    ``pfm_register_commands`` hookimpl)."""
    cli.add_command(plugins_group, "plugins")
