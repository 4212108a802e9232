"""The ``bastion`` command line: a thin layer over library functions.

>>> from click.testing import CliRunner
>>> from bastion.cli import cli
>>> CliRunner().invoke(cli, ["--version"]).output.startswith("bastion")
True
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import click

from bastion import __version__
from bastion.audit.cli import audit


@click.group()
@click.version_option(__version__, prog_name="bastion")
def cli() -> None:
    """bastion: private deep learning on PyTorch, with pointers to data that stays put."""


@cli.group(invoke_without_command=True)
@click.option("--serialize", is_flag=True, help="Send every request through the wire format.")
@click.pass_context
def demo(ctx: click.Context, serialize: bool) -> None:
    """Run the seed tutorial on two in-process workers (or a demo named after it)."""
    if ctx.invoked_subcommand is None:
        from bastion.demo import seed_tutorial

        seed_tutorial(echo=click.echo, serialize=serialize)


@demo.command()
@click.option("--rounds", default=20, show_default=True, help="Federated rounds.")
@click.option("--workers", "n_workers", default=10, show_default=True, help="How many workers.")
@click.option("--transport", type=click.Choice(["memory", "tcp", "shm"]), default="memory",
              show_default=True, help="Workers in this process, or spawned over tcp or shm.")
@click.option("--style", type=click.Choice(["fast", "pointers"]), default="fast",
              show_default=True, help="Ship the training as a function, or drive it by pointers.")
@click.option("--split", type=click.Choice(["iid", "label"]), default="iid", show_default=True,
              help="Split the data at random, or by label (non-IID).")
@click.option("--strategy", type=click.Choice(["fedavg", "fedprox", "fedadam"]),
              default="fedavg", show_default=True)
@click.option("--dp", is_flag=True, help="DP-FedAvg on data its owners registered private.")
@click.option("--dp-side", type=click.Choice(["server", "client"]), default="server",
              show_default=True, help="Noise on the aggregate (owners allow clipped updates "
              "out), or on each worker (owners require DP).")
@click.option("--noise-multiplier", default=1.0, show_default=True, type=float)
@click.option("--clip", default=0.3, show_default=True, type=float,
              help="L2 bound of each client's update.")
@click.option("--target-epsilon", default=None, type=float,
              help="Stop before a round would pass this epsilon.")
def federated(rounds: int, n_workers: int, transport: str, style: str, split: str,
              strategy: str, dp: bool, dp_side: str, noise_multiplier: float, clip: float,
              target_epsilon: float | None) -> None:  # fmt: skip
    """FedAvg on scikit-learn's digits across workers, printing each round's accuracy (and
    with --dp the epsilon spent)."""
    from bastion.errors import BastionError
    from bastion.federated.demo import run_federated_demo

    try:
        run_federated_demo(rounds=rounds, n_workers=n_workers, transport=transport, style=style,
                           split=split, strategy=strategy, dp=dp, dp_side=dp_side,
                           noise_multiplier=noise_multiplier, clip=clip,
                           target_epsilon=target_epsilon, echo=click.echo)  # fmt: skip
    except BastionError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.argument("address")
@click.option("--id", "worker_id", required=True, help="The worker's id, e.g. M1.")
@click.option("--db", default=None, help="Event log: a SQLite file or SQLAlchemy URL.")
@click.option("--authkey-env", default="BASTION_AUTHKEY", show_default=True,
              help="Environment variable holding the shared key.")
@click.option("--durability", type=click.Choice(["batched", "strict"]), default="batched",
              show_default=True)
@click.option("--allow-code", is_flag=True, help="Run functions shipped by authenticated peers.")
@click.option("--snapshot-every", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Snapshot the store every N events (recovery reads only what follows).")
@click.option("--quiet", is_flag=True, help="Log warnings and errors only.")
@click.option("--stop-on-stdin-eof", is_flag=True, hidden=True,
              help="Stop when standard input closes (a parent process went away).")
def serve(address: str, worker_id: str, db: str | None, authkey_env: str, durability: str,
          allow_code: bool, snapshot_every: int, quiet: bool,
          stop_on_stdin_eof: bool) -> None:  # fmt: skip
    """Serve a worker at ADDRESS (tcp://HOST:PORT, shm://NAME) until SIGINT or SIGTERM."""
    import logging
    import sys
    import threading

    from bastion.errors import BastionError
    from bastion.logs import configure
    from bastion.remote import serve as serve_worker

    configure(logging.WARNING if quiet else logging.INFO)
    authkey = os.environ.get(authkey_env)
    if not authkey and not address.startswith("memory://"):
        raise click.UsageError(f"set the shared key in ${authkey_env} (or --authkey-env NAME)")
    try:
        served = serve_worker(address, id=worker_id, db=db, authkey=authkey,
                              durability=durability, allow_code=allow_code,
                              snapshot_every=snapshot_every)  # fmt: skip
    except BastionError as exc:
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if stop_on_stdin_eof:
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    click.echo(f"serving {worker_id} at {served.address}")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    served.close()
    click.echo(f"stopped {worker_id}; event log flushed")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per plugin.")
def plugins(as_json: bool) -> None:
    """List loaded plugins, their versions and the address schemes they serve."""
    from bastion import plugins as registry

    infos = registry.plugin_info()
    if as_json:
        for info in infos:
            click.echo(json.dumps(dataclasses.asdict(info)))
        return
    for info in infos:
        where = "built-in" if info.builtin else info.version
        state = f"FAILED: {info.error}" if info.error else ", ".join(info.schemes) or "-"
        click.echo(f"{info.name:<32} {where:<10} {state}")
    for problem in registry.problems():
        if "failed to load" not in problem:
            click.echo(f"problem: {problem}", err=True)


cli.add_command(audit)


def main() -> None:
    """Entry point of the ``bastion`` script."""
    cli()
