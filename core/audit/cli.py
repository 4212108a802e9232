"""``bastion audit``: read an event log without writing SQL (a thin layer over bastion.audit).

Every command takes DB, a SQLite file path or a SQLAlchemy URL, opens it read-only and works
while workers append to it. ``--json`` prints one JSON object a line. Bad input (a missing
file, a database that is not a bastion log, an unknown seq or object id) is a one-line error
and exit status 1.

>>> from click.testing import CliRunner
>>> result = CliRunner().invoke(audit, ["events", "no-such.db"])
>>> result.exit_code, result.output
(1, 'Error: no event log at no-such.db: the file does not exist\\n')
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from bastion.errors import BastionError

F = TypeVar("F", bound=Callable[..., Any])


def _errors(command: F) -> F:
    """Turn bastion's errors into one-line click errors (exit status 1, no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BastionError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}") from None

    return wrapper  # type: ignore[return-value]


class PointType(click.ParamType):
    """A seq (42) or a time (2026-11-26T09:30:00, UTC unless a zone is given; @POSIX)."""

    name = "SEQ|TIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from bastion.audit.reader import parse_point

        if not isinstance(value, str):
            return value
        try:
            return parse_point(value)
        except BastionError as exc:
            self.fail(str(exc), param, ctx)


POINT = PointType()
db_argument = click.argument("db", metavar="DB")
worker_option = click.option("--worker", "-w", default=None, help="Only this worker's log.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="One JSON object per line, for scripts.")  # fmt: skip
with_option = click.option("--with", "also", multiple=True, metavar="DB2",
                           help="Another database holding the logs of workers objects moved "
                           "to (repeat).")  # fmt: skip


def _print(renderable: Any) -> None:
    """A rich table on standard output: colours on a terminal; plain, unwrapped (up to 200
    columns) and without trailing blanks otherwise."""
    from rich.console import Console

    if sys.stdout.isatty():
        Console(highlight=False).print(renderable)
        return
    console = Console(width=max(shutil.get_terminal_size((200, 24))[0], 200), highlight=False,
                      color_system=None)  # fmt: skip
    with console.capture() as captured:
        console.print(renderable)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _emit(record: Any) -> None:
    click.echo(json.dumps(record, separators=(",", ":"), default=str))


def _short(digest: str | None) -> str:
    return digest[:16] if digest else ""


def _table(events: Iterable[Any]) -> None:
    from rich.table import Table

    from bastion.audit.export import event_summary
    from bastion.audit.reader import format_ts

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("time (UTC)", "left"), ("worker", "left"), ("seq", "right"),
                          ("kind", "left"), ("object", "right"), ("peer", "left"),
                          ("digest", "left"), ("what", "left")):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=name != "what")
    for e in events:
        table.add_row(format_ts(e.ts), e.worker, str(e.seq), e.kind,
                      "" if e.object_id is None else str(e.object_id), e.peer or "",
                      _short(e.digest), event_summary(e))  # fmt: skip
    _print(table)


@click.group()
def audit() -> None:
    """Read a worker's event log: what happened to each object, and is the log intact.

    DB is a SQLite file path or a SQLAlchemy URL; it is opened read-only. Points in a log
    are a seq (42) or a time in UTC (2026-11-26T09:30:00, or @POSIX seconds).
    """


@audit.command()
@db_argument
@worker_option
@click.option("--kind", "-k", "kinds", multiple=True, help="Only events of this kind (repeat).")
@click.option("--object", "object_id", type=int, default=None, help="Only this object id.")
@click.option("--peer", default=None, help="Only events requested by (or sent to) this peer.")
@click.option("--since", type=POINT, default=None, help="From this seq or time (inclusive).")
@click.option("--until", type=POINT, default=None, help="Up to this seq or time (inclusive).")
@click.option("--newest-first", "-r", is_flag=True, help="Newest event first.")
@click.option(
    "--limit", "-n", type=click.IntRange(min=0), default=None, help="At most this many events."
)
@json_option
@_errors
def events(db: str, worker: str | None, kinds: tuple[str, ...], object_id: int | None,
           peer: str | None, since: Any, until: Any, newest_first: bool, limit: int | None,
           as_json: bool) -> None:  # fmt: skip
    """The events in time order, filtered."""
    from bastion.audit.export import event_record
    from bastion.audit.reader import AuditLog

    with AuditLog(db) as log:
        found = log.events(
            worker=worker,
            kind=kinds or None,
            object_id=object_id,
            peer=peer,
            since=since,
            until=until,
            newest_first=newest_first,
            limit=limit,
        )
        if as_json:
            for event in found:
                _emit(event_record(event))
        else:
            _table(found)


@audit.command()
@db_argument
@click.argument("seq", type=int)
@worker_option
@json_option
@_errors
def show(db: str, seq: int, worker: str | None, as_json: bool) -> None:
    """One event in full, with its payload's dtype, shape, digest and size."""
    from rich.table import Table

    from bastion.audit.details import describe

    record = describe(db, seq, worker)
    if as_json:
        _emit(record)
        return
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in record.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, separators=(", ", ": ")) if value != {} else ""
        table.add_row(key, "" if value is None else str(value))
    _print(table)


@audit.command()
@db_argument
@click.argument("object_id", type=int)
@worker_option
@with_option
@click.option(
    "--max-nodes",
    type=click.IntRange(min=10),
    default=2000,
    show_default=True,
    help="Stop the tree at this many lines.",
)
@json_option
@_errors
def lineage(db: str, object_id: int, worker: str | None, also: tuple[str, ...], max_nodes: int,
            as_json: bool) -> None:  # fmt: skip
    """OBJECT_ID's history as a tree: origin, what was computed from it, gets and moves."""
    from bastion.audit.lineage import lineage as build

    tree = build(db, object_id, worker=worker, also=also, max_nodes=max_nodes)
    if as_json:
        _emit(tree.to_dict())
    else:
        click.echo(tree.render())
        if tree.truncated:
            click.echo(f"(cut at {max_nodes} lines: raise --max-nodes to see more)")


@audit.command()
@db_argument
@click.option(
    "--at",
    type=POINT,
    default=None,
    help="A seq (of --worker) or a time; default: the end of the log.",
)
@worker_option
@click.option(
    "--export",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the tensors to this folder (safetensors, one file per worker).",
)
@json_option
@_errors
def replay(db: str, at: Any, worker: str | None, directory: str | None, as_json: bool) -> None:
    """The object store as it stood at a point: ids, dtype, shape, digest."""
    from rich.table import Table

    from bastion.audit.lineage import payload_text
    from bastion.audit.replay import export_store, store_at

    stores = store_at(db, at, worker)
    written = [] if directory is None else export_store(db, directory, at, worker)
    if as_json:
        for name, objects in stores.items():
            for state in objects.values():
                _emit({"worker": name, **state.to_dict()})
    else:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("worker", "object", "payload", "digest", "created at", "origin"):
            table.add_column(column, no_wrap=True)
        for name, objects in stores.items():
            for s in objects.values():
                payload = payload_text(s)  # type: ignore[arg-type]
                table.add_row(name, str(s.object_id), payload, _short(s.digest), f"#{s.seq}",
                              s.origin or "")  # fmt: skip
        _print(table)
        held = ", ".join(f"{name}: {len(objects)}" for name, objects in stores.items())
        click.echo(f"objects held: {held or 'none'}")
    for path in written:
        click.echo(f"wrote {path}", err=as_json)


@audit.command()
@db_argument
@worker_option
@json_option
@_errors
def verify(db: str, worker: str | None, as_json: bool) -> None:
    """Check the hash chain and payload digests; exit 1 naming the first bad event."""
    from bastion.audit.details import verify_log

    result = verify_log(db, worker)
    if as_json:
        _emit({"ok": result.ok, "checked": result.checked, "worker": result.worker,
               "seq": result.seq, "reason": result.reason})  # fmt: skip
    else:
        click.echo(str(result))
    if not result.ok:
        sys.exit(1)


@audit.command()
@db_argument
@worker_option
@json_option
@_errors
def stats(db: str, worker: str | None, as_json: bool) -> None:
    """Counts by kind, peer and worker; payload bytes; first and last event; rate."""
    from bastion.audit.reader import format_ts
    from bastion.audit.summary import stats as compute

    s = compute(db, worker)
    if as_json:
        _emit(s.to_dict())
        return
    first = format_ts(s.first_ts) if s.first_ts is not None else "-"
    last = format_ts(s.last_ts) if s.last_ts is not None else "-"
    lines = [f"events            {s.events}", f"first event       {first}",
             f"last event        {last}", f"events per minute {s.events_per_minute:.1f}",
             f"objects created   {s.objects_created}",
             f"bytes created     {_bytes(s.bytes_created)}"]  # fmt: skip
    if s.bytes_stored is not None:
        lines.append(f"bytes stored      {_bytes(s.bytes_stored)} (payload store)")
    click.echo("\n".join(lines))
    for title, counts in (("by kind", s.by_kind), ("by peer", s.by_peer),
                          ("by worker", s.by_worker)):  # fmt: skip
        click.echo(f"\n{title}")
        for key, count in counts.items():
            click.echo(f"  {key:<24} {count:>12}")


def _bytes(count: int) -> str:
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit} ({count} B)"


@audit.command()
@db_argument
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file (default: standard output).",
)
@worker_option
@click.option("--kind", "-k", "kinds", multiple=True, help="Only events of this kind (repeat).")
@_errors
def export(db: str, fmt: str, output: str | None, worker: str | None,
           kinds: tuple[str, ...]) -> None:  # fmt: skip
    """Every event, with the hash chain, as JSON lines or CSV for other tools."""
    from bastion.audit.export import export as write
    from bastion.audit.reader import AuditLog

    with AuditLog(db) as log:  # opened first: a bad DB leaves no empty output file behind
        if output is None:
            write(log, sys.stdout, fmt, worker=worker, kind=kinds or None)
            return
        with open(output, "w", newline="") as out:
            count = write(log, out, fmt, worker=worker, kind=kinds or None)
    click.echo(f"wrote {count} events to {output}", err=True)


@audit.command()
@db_argument
@worker_option
@click.option(
    "--lines",
    "-n",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Print this many of the latest events first.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they arrive.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between polls of the database.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=None,
    help="With --follow: stop after this many seconds (default: until Ctrl-C).",
)
@json_option
@_errors
def tail(db: str, worker: str | None, lines: int, follow: bool, interval: float,
         duration: float | None, as_json: bool) -> None:  # fmt: skip
    """The latest events; with --follow, new events as a worker writes them."""
    from bastion.audit.export import event_line, event_record
    from bastion.audit.reader import AuditLog

    def show_event(event: Any) -> None:
        if as_json:
            _emit(event_record(event))
        else:
            click.echo(event_line(event))

    with AuditLog(db) as log:
        workers = None if worker is None else [log.worker(worker)]
        start = log.last_seqs()
        latest = list(log.events(worker=workers, newest_first=True, limit=lines))
        for event in reversed(latest):
            show_event(event)
        if not follow:
            return
        if workers is not None:
            start = {name: seq for name, seq in start.items() if name in workers}
        deadline = None if duration is None else time.monotonic() + duration
        stop = (lambda: False) if deadline is None else (lambda: time.monotonic() >= deadline)
        try:
            for event in log.follow(interval=interval, start=start, stop=stop):
                if workers is None or event.worker in workers:
                    show_event(event)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            return


@audit.command()
@db_argument
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default="report.html",
    show_default=True,
    help="The HTML file to write.",
)
@with_option
@click.option(
    "--max-objects",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Draw the lineage of at most this many objects.",
)
@click.option(
    "--max-events",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="List and mark at most this many events (a histogram over time past that).",
)
@_errors
def report(db: str, output: str, also: tuple[str, ...], max_objects: int,
           max_events: int) -> None:  # fmt: skip
    """One self-contained HTML file: summary, timeline, lineage graphs, verify result."""
    from bastion.audit.report import write_report

    written = write_report(db, output, also=also, max_objects=max_objects,
                           max_events=max_events)  # fmt: skip
    click.echo(
        f"wrote {os.path.abspath(written.path)}: {written.objects} objects, "
        f"{written.events} events, log {'intact' if written.ok else 'NOT intact'}"
    )
