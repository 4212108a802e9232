"""One self-contained HTML file a reviewer can open: the summary, a timeline of events, the
lineage of each object as a graph, and the verify result.

Everything is inline (CSS, SVG, a few lines of JavaScript for filtering); the page fetches
nothing. Every value from the log is escaped, so a tampered log cannot inject markup.

>>> import os, tempfile, torch, bastion as sy
>>> folder = tempfile.mkdtemp()
>>> with sy.VirtualWorker(id="doc-report", db=os.path.join(folder, "m1.db")) as m1:
...     x = m1.send(torch.tensor([1.0, 2.0]))
>>> done = write_report(os.path.join(folder, "m1.db"), os.path.join(folder, "report.html"))
>>> done.objects, done.ok, "<script src" in open(done.path).read()
(1, True, False)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from bastion.audit.details import verify_log
from bastion.audit.export import event_line, event_summary
from bastion.audit.lineage import LineageNode, lineage
from bastion.audit.reader import AuditLog, format_ts, opened
from bastion.audit.summary import Stats, stats, timeline
from bastion.events import Event

COLORS = {"create": "#2b7bb9", "get": "#d9822b", "move": "#7b4fb5", "delete": "#8a8a8a",
          "clear": "#b33a3a", "denied": "#e0245e", "release": "#c9a100",
          "policy": "#5a6a7a"}  # fmt: skip
OTHER = "#3a8a5a"
LABEL, CHAR = 60, 6.7  # graph labels: characters shown, pixels per character (11px monospace)
RELATION_COLORS = {"section": "#f0f0f0", "object": "#fff4c2", "missing": "#ffd6d6",
                   "fetched": "#fde3c8", "released": "#fff0a8", "moved": "#e6dcf5",
                   "arrived": "#e6dcf5", "cleared": "#f5d0d0", "deleted": "#e4e4e4",
                   "more": "#ffffff"}  # fmt: skip


@dataclass(frozen=True)
class ReportResult:
    """Where the report went, how many objects and events it covers, and whether the log
    verified intact."""

    path: str
    objects: int
    events: int
    ok: bool


def write_report(
    url: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    also: Iterable[str | os.PathLike[str]] = (),
    max_objects: int = 200,
    max_events: int = 2000,
) -> ReportResult:
    """Write the HTML report on the log at ``url`` to ``path``.

    ``also``: databases with other workers' logs (for moves). The lineage of at most
    ``max_objects`` objects and at most ``max_events`` events are drawn (the page says when
    there are more).
    """
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(opened(url))
        others = [stack.enter_context(opened(other)) for other in also]
        html, objects, summary, ok = _render(log, others, max_objects, max_events)
    with open(path, "w", encoding="utf-8") as out:
        out.write(html)
    return ReportResult(os.fspath(path), objects, summary.events, ok)


def _render(log: AuditLog, others: Sequence[AuditLog], max_objects: int,
            max_events: int) -> tuple[str, int, Stats, bool]:  # fmt: skip
    summary = stats(log)
    result = verify_log(log.url)
    roots = []
    for event in log.events(kind="create"):
        if event.origin != "move" and event.object_id not in event.inputs:
            roots.append(event)
            if len(roots) >= max_objects:
                break
    sections = [_lineage_section(log, others, root) for root in roots]
    events = list(log.events(limit=max_events))
    more_objects = summary.by_kind.get("create", 0) > len(roots) and len(roots) >= max_objects
    now = format_ts(dt.datetime.now(dt.timezone.utc).timestamp())
    verdict = "intact" if result.ok else "NOT intact"
    body = [
        f"<header><h1>Audit report: {escape(log.name)}</h1>"
        f'<p>generated {now} &middot; log <span class="badge {"ok" if result.ok else "bad"}" '
        f'id="verdict">{verdict}</span></p></header>',
        '<nav><a href="#summary">Summary</a> <a href="#timeline">Timeline</a> '
        '<a href="#objects">Objects</a> <a href="#events">Events</a> '
        '<a href="#verify">Verify</a></nav>',
        _summary_section(summary),
        _timeline_section(log, events, summary, max_events),
        '<section id="objects"><h2>Objects and their lineage</h2>'
        '<p><label>Filter <input id="filter" type="search" placeholder="object id, worker, '
        'op..."></label> <span id="shown"></span> of '
        + str(len(sections))
        + " shown"
        + (
            f" (the first {len(roots)} objects; raise --max-objects for more)"
            if more_objects
            else ""
        )
        + "</p>"
        + "".join(sections)
        + "</section>",
        _events_section(events, summary.events),
        f'<section id="verify"><h2>Verify</h2><p class="{"ok" if result.ok else "bad"}">'
        f"{escape(str(result))}</p></section>",
    ]
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>bastion audit: {escape(log.name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}<script>{JS}</script></body></html>")  # fmt: skip
    return page, len(sections), summary, result.ok


def _summary_section(s: Stats) -> str:
    first = format_ts(s.first_ts) if s.first_ts is not None else "-"
    last = format_ts(s.last_ts) if s.last_ts is not None else "-"
    rows = [
        ("events", s.events),
        ("first event", first),
        ("last event", last),
        ("events per minute", f"{s.events_per_minute:.1f}"),
        ("objects created", s.objects_created),
        ("bytes created", s.bytes_created),
    ]
    if s.bytes_stored is not None:
        rows.append(("bytes stored", s.bytes_stored))
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    counts = "".join(
        f'<table class="counts"><caption>{title}</caption>'
        + "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in table.items())
        + "</table>"
        for title, table in (
            ("by kind", s.by_kind),
            ("by peer", s.by_peer),
            ("by worker", s.by_worker),
        )  # fmt: skip
    )
    return (f"<section id=\"summary\"><h2>Summary</h2><table class=\"kv\">{cells}</table>"
            f"<div class=\"row\">{counts}</div></section>")  # fmt: skip


def _timeline_section(log: AuditLog, events: list[Event], s: Stats, max_events: int) -> str:
    legend = "".join(f"<span><i style=\"background:{c}\"></i>{k}</span>"
                     for k, c in COLORS.items())  # fmt: skip
    if not events or s.first_ts is None or s.last_ts is None:
        return '<section id="timeline"><h2>Timeline</h2><p>No events.</p></section>'
    if s.events > max_events:
        return (
            f'<section id="timeline"><h2>Timeline</h2><p>{s.events} events, per slice of '
            f'time:</p>{_histogram(log)}<p class="legend">{legend}</p></section>'
        )
    workers = sorted({e.worker for e in events})
    lane, left, width = 30, 110, 900
    span = max(s.last_ts - s.first_ts, 1e-9)
    parts = [
        f'<svg id="timeline-svg" xmlns="http://www.w3.org/2000/svg" '
        f'width="{left + width + 20}" height="{lane * len(workers) + 30}">'
    ]
    for i, worker in enumerate(workers):
        y = lane * i + 15
        parts.append(f"<text x=\"4\" y=\"{y + 4}\" class=\"lane\">{escape(worker)}</text>"
                     f"<line x1=\"{left}\" x2=\"{left + width}\" y1=\"{y}\" y2=\"{y}\" "
                     f"class=\"axis\"/>")  # fmt: skip
    for e in events:
        x = left + width * (e.ts - s.first_ts) / span
        y = lane * workers.index(e.worker) + 15
        oid = "" if e.object_id is None else f' data-object="{e.object_id}"'
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y}" r="5" fill="{COLORS.get(e.kind, OTHER)}'
            f'" class="mark"{oid}><title>{escape(event_line(e))}</title></circle>'
        )
    bottom = lane * len(workers) + 25
    parts.append(f"<text x=\"{left}\" y=\"{bottom}\" class=\"tick\">{format_ts(s.first_ts)}"
                 f"</text><text x=\"{left + width}\" y=\"{bottom}\" text-anchor=\"end\" "
                 f"class=\"tick\">{format_ts(s.last_ts)}</text></svg>")  # fmt: skip
    return (f"<section id=\"timeline\"><h2>Timeline</h2><p>Each mark is an event; click one to "
            f"see its object's lineage.</p><div class=\"scroll\">{''.join(parts)}</div>"
            f"<p class=\"legend\">{legend}</p></section>")  # fmt: skip


def _histogram(log: AuditLog) -> str:
    start, width, buckets = timeline(log, 60)
    peak = max((sum(b.values()) for b in buckets), default=1) or 1
    bar, height = 15, 160
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{bar * len(buckets) + 20}" '
        f'height="{height + 30}">'
    ]
    for i, bucket in enumerate(buckets):
        y = height
        for kind, count in sorted(bucket.items()):
            h = height * count / peak
            y -= h
            label = f"{format_ts(start + i * width)}: {count} {kind}"
            parts.append(f"<rect x=\"{i * bar + 10}\" y=\"{y:.1f}\" width=\"{bar - 2}\" "
                         f"height=\"{h:.1f}\" fill=\"{COLORS.get(kind, OTHER)}\"><title>"
                         f"{escape(label)}</title></rect>")  # fmt: skip
    end = format_ts(start + width * len(buckets))
    parts.append(f"<text x=\"10\" y=\"{height + 20}\" class=\"tick\">{format_ts(start)}</text>"
                 f"<text x=\"{bar * len(buckets) + 8}\" y=\"{height + 20}\" text-anchor=\"end\" "
                 f"class=\"tick\">{end}</text></svg>")  # fmt: skip
    return '<div class="scroll">' + "".join(parts) + "</div>"


def _lineage_section(log: AuditLog, others: Sequence[AuditLog], root: Event) -> str:
    tree = lineage(log, root.object_id, worker=root.worker, also=others, max_nodes=300)
    search = " ".join({n.text for n in tree.root.walk()}).lower()
    return (f"<section class=\"object\" id=\"object-{root.object_id}\" data-search=\""
            f"{escape(search)}\"><h3>object {root.object_id} <small>{escape(root.worker)} "
            f"#{root.seq} {escape(root.dtype or '')}</small></h3>"
            f"<div class=\"scroll\">{_graph(tree.root)}</div></section>")  # fmt: skip


def _graph(root: LineageNode) -> str:
    """The tree as an SVG graph: depth to the right, one row per leaf."""
    row, box_h, gap = 26, 20, 24
    placed: list[tuple[LineageNode, int, float]] = []
    edges: list[tuple[int, float, int, float]] = []
    next_row = [0]

    def place(node: LineageNode, depth: int) -> float:
        if not node.children:
            y = next_row[0] * row
            next_row[0] += 1
        else:
            ys = [place(child, depth + 1) for child in node.children]
            y = (ys[0] + ys[-1]) / 2
            for child_y in ys:
                edges.append((depth, y, depth + 1, child_y))
        placed.append((node, depth, y))
        return y

    place(root, 0)
    depth = max(d for _, d, _ in placed)
    widths = [0.0] * (depth + 1)
    for node, d, _ in placed:
        widths[d] = max(widths[d], min(len(node.text), LABEL) * CHAR + 12)
    xs = [5.0]
    for w in widths:
        xs.append(xs[-1] + w + gap)
    parts = [
        f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" '
        f'width="{xs[-1]:.0f}" height="{next_row[0] * row + 10}">'
    ]
    for d1, y1, d2, y2 in edges:
        x1, x2, ya, yb = xs[d1] + widths[d1], xs[d2], y1 + 5 + box_h / 2, y2 + 5 + box_h / 2
        mid = (x1 + x2) / 2
        parts.append(
            f'<path d="M{x1:.1f},{ya} C{mid:.1f},{ya} {mid:.1f},{yb} {x2:.1f},{yb}" class="edge"/>'
        )
    for node, d, y in placed:
        fill = RELATION_COLORS.get(node.relation, "#dcebf7")
        label = node.text if len(node.text) <= LABEL else node.text[: LABEL - 1] + "\u2026"
        oid = "" if node.object_id is None else f' data-object="{node.object_id}"'
        parts.append(f"<g class=\"node\"{oid}><rect x=\"{xs[d]:.1f}\" y=\"{y + 5}\" "
                     f"width=\"{widths[d]:.1f}\" height=\"{box_h}\" rx=\"4\" fill=\"{fill}\"/>"
                     f"<text x=\"{xs[d] + 6:.1f}\" y=\"{y + 19}\">{escape(label)}</text>"
                     f"<title>{escape(node.text)}</title></g>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _events_section(events: list[Event], total: int) -> str:
    rows = "".join(
        f"<tr><td>{format_ts(e.ts)}</td><td>{escape(e.worker)}</td><td>{e.seq}</td>"
        f'<td><i style="background:{COLORS.get(e.kind, OTHER)}"></i>{escape(e.kind)}</td>'
        f"<td>{'' if e.object_id is None else e.object_id}</td><td>{escape(e.peer or '')}</td>"
        f"<td>{escape(event_summary(e))}</td></tr>"
        for e in events
    )
    note = f" (the first {len(events)} of {total})" if total > len(events) else ""
    return (
        f'<section id="events"><h2>Events{note}</h2><table class="events"><thead><tr>'
        f"<th>time (UTC)</th><th>worker</th><th>seq</th><th>kind</th><th>object</th>"
        f"<th>peer</th><th>what</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
padding:0 20px 40px;color:#1c1c1c}
header h1{font-size:22px;margin:18px 0 4px}nav a{margin-right:14px}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:14px 0 6px}h3 small{color:#666;font-weight:normal}
.badge{padding:1px 8px;border-radius:10px;color:#fff}.badge.ok{background:#2e8b57}
.badge.bad{background:#c0392b}p.ok{color:#2e8b57}p.bad{color:#c0392b;font-weight:bold}
table{border-collapse:collapse}th,td{text-align:left;padding:2px 10px 2px 0;vertical-align:top}
.kv th{font-weight:600}.counts{min-width:160px}.row{display:flex;gap:40px;flex-wrap:wrap}
caption{text-align:left;font-weight:600;padding-top:10px}
.events td,.events th{border-bottom:1px solid #eee;font-size:12.5px}
.events td:first-child,.events td:nth-child(5){font-family:ui-monospace,monospace}
i{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:5px}
.legend span{margin-right:14px}.scroll{overflow-x:auto}
svg text{font:11px ui-monospace,"DejaVu Sans Mono",monospace}
svg .lane{font-weight:bold}svg .axis{stroke:#ccc}svg .tick{fill:#666}
.mark{cursor:pointer;stroke:#fff}.edge{fill:none;stroke:#9aa9b8;stroke-width:1.2}
.node rect{stroke:#8aa0b5}.node{cursor:pointer}
section.object{border:1px solid #e3e3e3;border-radius:6px;padding:4px 12px;margin:10px 0}
section.object.flash{outline:3px solid #f5b700}
"""

JS = """
(function () {
  var filter = document.getElementById("filter");
  var objects = Array.prototype.slice.call(document.querySelectorAll("section.object"));
  var shown = document.getElementById("shown");
  function apply() {
    var q = filter ? filter.value.trim().toLowerCase() : "";
    var n = 0;
    objects.forEach(function (o) {
      var hit = !q || o.dataset.search.indexOf(q) >= 0 || o.id.indexOf(q) >= 0;
      o.hidden = !hit;
      if (hit) { n += 1; }
    });
    if (shown) { shown.textContent = String(n); }
  }
  if (filter) { filter.addEventListener("input", apply); }
  document.querySelectorAll("[data-object]").forEach(function (el) {
    el.addEventListener("click", function () {
      var target = document.getElementById("object-" + el.getAttribute("data-object"));
      if (!target) { return; }
      target.hidden = false;
      target.scrollIntoView({block: "start"});
      target.classList.add("flash");
      setTimeout(function () { target.classList.remove("flash"); }, 1500);
    });
  });
  apply();
  document.body.setAttribute("data-ready", String(objects.length));
})();
"""
