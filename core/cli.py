"""The ``bastion`` command line: a thin layer over library functions.

>>> from click.testing import CliRunner
>>> from bastion.cli import cli
>>> CliRunner().invoke(cli, ["--version"]).output.startswith("bastion")
True
"""

from __future__ import annotations

import click

from bastion import __version__


@click.group()
@click.version_option(__version__, prog_name="bastion")
def cli() -> None:
    """bastion: private deep learning on PyTorch, with pointers to data that stays put."""


@cli.command()
@click.option("--serialize", is_flag=True, help="Send every request through the wire format.")
def demo(serialize: bool) -> None:
    """Run the seed tutorial on two in-process workers."""
    from bastion.demo import seed_tutorial

    seed_tutorial(echo=click.echo, serialize=serialize)


def main() -> None:
    """Entry point of the ``bastion`` script."""
    cli()
