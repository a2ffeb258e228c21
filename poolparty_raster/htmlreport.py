"""``poolparty-raster report WORK_DIR --html FILE``: one self-contained HTML page (inline CSS
and SVG, no script, nothing fetched) drawn from reportdata.map_report: a timeline of chunks per
host and process, tasks done over time against the ideal, queue wait against run time, peak
memory against run time with the slowest chunks listed, and the map's settings."""
from __future__ import annotations

import time
from html import escape
from typing import Any

from poolparty_raster import svgcharts
from poolparty_raster.reportdata import ideal, job_label, slowest, summary, timeline_rows
from poolparty_raster.svgcharts import FAILED, PALETTE, Axes

WIDTH = 1100
SLOWEST = 10
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;
max-width:1140px;color:#222;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px}
p.note{color:#555;margin:2px 0 8px}.figures span{display:inline-block;margin-right:22px}
.figures b{font-size:17px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;
text-align:left;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
svg text{font-size:11px;fill:#333}svg .label{font-size:12px}
.grid{stroke:#e6e6e6}.axis{stroke:#888}.lane{fill:#000;fill-opacity:.015}.lane-alt{fill:#000;fill-opacity:.045}
.chunk{stroke:#fff;stroke-width:.5}.retry{stroke:#000;stroke-width:1.5}
.death{stroke:#d62728;stroke-width:2.5}.done{fill:none;stroke:#1f77b4;stroke-width:2}
.ideal{fill:none;stroke:#999;stroke-width:1.5;stroke-dasharray:6 4}
.legend{display:flex;gap:16px;flex-wrap:wrap;color:#444}.swatch{display:inline-block;width:12px;
height:12px;margin-right:4px;vertical-align:-1px}
"""


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def _tip(run: dict[str, Any]) -> str:
    tasks = (f"task {run['first_task']}" if run["first_task"] == run["last_task"]
             else f"tasks {run['first_task']}-{run['last_task']}")
    return (f"chunk {run['chunk']} ({tasks}), attempt {run['attempt']}: {run['exit']}\n"
            f"{run['host']}, job {job_label(run)}, pid {run['pid']}\n"
            f"{_when(run['start'])}, {run['seconds']:.3f} s, CPU {run['cpu']:.3f} s, "
            f"peak RSS {_mb(run['peak_rss'])}")


def timeline(report: dict[str, Any], t0: float) -> str:
    runs, deaths = report["runs"], report["deaths"]
    rows = timeline_rows(runs)
    lost_row = bool(deaths)
    count = len(rows) + lost_row
    lane = max(4.0, min(22.0, 700 / max(count, 1)))
    end = max([r["end"] for r in runs] + [d["time"] for d in deaths] + [t0 + 1]) - t0
    height = int(svgcharts.TOP + lane * count + svgcharts.BOTTOM)
    left = 190  # room for the rows' names
    axes = Axes(WIDTH, height, end, None, "seconds since the map was prepared", "", left)
    colours = {job: PALETTE[i % len(PALETTE)]
               for i, job in enumerate(dict.fromkeys(r["job_id"] or "local" for r in runs))}
    for i, (name, row) in enumerate(rows):
        top = svgcharts.TOP + i * lane
        axes.add(f'<rect class="{"lane" if i % 2 else "lane-alt"}" x="{left}" y="{top:.1f}" '
                 f'width="{WIDTH - left - svgcharts.RIGHT}" height="{lane:.1f}"/>')
        if lane >= 9:
            axes.add(f'<text x="{left - 6}" y="{top + lane / 2 + 4:.1f}" text-anchor="end">'
                     f'{escape(name[:32])}</text>')
        for run in row:
            x = axes.x(run["start"] - t0)
            failed = run["exit"] != "returned"
            # A failure stays visible however short it was.
            width = max(3.0 if failed else 1.0, axes.x(run["end"] - t0) - x)
            fill = FAILED if failed else colours[run["job_id"] or "local"]
            retry = " retry" if run["attempt"] > 1 else ""
            axes.add(f'<rect class="chunk{retry}" data-chunk="{run["chunk"]}" x="{x:.2f}" '
                     f'y="{top + 1:.1f}" width="{width:.2f}" height="{max(lane - 2, 1):.1f}" '
                     f'fill="{fill}"><title>{escape(_tip(run))}</title></rect>')
    if lost_row:
        top = svgcharts.TOP + len(rows) * lane
        axes.add(f'<text x="{left - 6}" y="{top + lane / 2 + 4:.1f}" text-anchor="end">'
                 f'attempts that died</text>')
        for death in deaths:
            x, mid, r = axes.x(death["time"] - t0), top + lane / 2, min(lane / 2 - 1, 6)
            what = (f"chunk {death['chunk']}" if death["chunk"] is not None
                    else f"worker {death['worker']}")
            tip = f"{what}, job {death['job_id']}: {death['event']} ({death['reason']})"
            axes.add(f'<path class="death" d="M{x - r:.1f},{mid - r:.1f}L{x + r:.1f},{mid + r:.1f}'
                     f'M{x - r:.1f},{mid + r:.1f}L{x + r:.1f},{mid - r:.1f}"><title>{escape(tip)}'
                     '</title></path>')
    return axes.svg("timeline-chart", "timeline of chunks per host and process")


def done_over_time(report: dict[str, Any], t0: float) -> str:
    runs = sorted(report["runs"], key=lambda r: r["end"])
    total = int(report["settings"]["tasks"])
    points, done = [(0.0, 0)], 0
    for run in runs:
        points.append((run["end"] - t0, done))
        done += run["last_task"] - run["first_task"] + 1
        points.append((run["end"] - t0, done))
    best = ideal(runs)
    first, ideal_end, slots = best["start"] - t0, best["end"] - t0, best["slots"]
    axes = Axes(WIDTH // 2 - 10, 300, max(points[-1][0], ideal_end), total,
                "seconds since the map was prepared", "tasks done")
    axes.add(svgcharts.polyline(axes, [(0, 0), (first, 0), (ideal_end, done)], "ideal"))
    axes.add(svgcharts.polyline(axes, points, "done"))
    return axes.svg("done-chart", "tasks done over time against the ideal") + (
        f'<p class="note">Dashed: the same work on {slots} slot{"s" * (slots != 1)} (the most '
        f'that ran at once) from the first start, without waiting.</p>')


def waits(report: dict[str, Any]) -> str:
    found = report["waits"]
    if not found:
        return '<p class="note">No queue wait is known (no chunk with a record has a submission).</p>'
    axes = Axes(WIDTH // 2 - 10, 300, max(w["wait"] for w in found),
                max(w["run"] for w in found), "queue wait (s)", "run time (s)")
    unit = "worker" if "worker" in found[0] else "chunk"
    svgcharts.scatter(axes, found, lambda w: w["wait"], lambda w: w["run"], "wait",
                      lambda w: PALETTE[0],
                      lambda w: f"{unit} {w[unit]}, job {w['job_id']}: waited {w['wait']:.2f} s, "
                                f"ran {w['run']:.2f} s")
    return axes.svg("wait-chart", "queue wait against run time") + (
        f'<p class="note">One point per {unit}: from its submission to its first start, against '
        f'the time its chunks ran.</p>')


def memory(report: dict[str, Any]) -> str:
    runs = report["runs"]
    axes = Axes(WIDTH, 300, max(r["seconds"] for r in runs), max(r["peak_rss"] for r in runs) / 1e6,
                "run time of the chunk (s)", "peak RSS (MB)")
    svgcharts.scatter(axes, runs, lambda r: r["seconds"], lambda r: r["peak_rss"] / 1e6, "mem",
                      lambda r: FAILED if r["exit"] != "returned" else PALETTE[0], _tip)
    return axes.svg("memory-chart", "peak memory against run time per chunk")


def _table(header: list[str], rows: list[list[Any]], css_class: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{css_class}"><tr>{head}</tr>{body}</table>'


def _slowest_table(runs: list[dict[str, Any]]) -> str:
    rows = [[r["first_task"] if r["first_task"] == r["last_task"]
             else f"{r['first_task']}-{r['last_task']}", r["chunk"], f"{r['seconds']:.3f}",
             f"{r['cpu']:.3f}", _mb(r["peak_rss"]), r["host"], job_label(r), r["attempt"],
             r["exit"]] for r in slowest(runs, SLOWEST)]
    return _table(["task(s)", "chunk", "seconds", "CPU s", "peak RSS", "host", "job",
                   "attempt", "exit"], rows, "slowest")


def _settings_table(settings: dict[str, Any]) -> str:
    shown = {k: _when(v) if k in ("prepared", "ended") else v for k, v in settings.items()}
    return _table(["setting", "value"], [[k, v] for k, v in shown.items()], "settings")


def render(report: dict[str, Any]) -> str:
    """The page, as one string."""
    settings, runs = report["settings"], report["runs"]
    title = f"poolparty_raster map {settings['job_name']}"
    parts = [f"<h1>{escape(title)}</h1><p class='note'>{escape(report['work_dir'])}</p>"]
    if report["chunks_without_record"]:
        parts.append(f"<p class='note'>{report['chunks_without_record']} finished chunks carry "
                     f"no record (written by an older version): not drawn.</p>")
    if runs:
        t0 = settings.get("prepared") or min(r["start"] for r in runs)
        facts = summary(report)
        figures = [("chunks run", len(runs)), ("hosts", facts["hosts"]),
                   ("span", f"{facts['last_end'] - facts['first_start']:.2f} s"),
                   ("busy", f"{facts['busy_seconds']:.2f} s"),
                   ("median chunk", f"{facts['median_seconds']:.3f} s"),
                   ("largest peak RSS", _mb(facts["max_peak_rss"])),
                   ("attempts that died", len(report["deaths"]))]
        if facts["median_wait"] is not None:
            figures.insert(5, ("median queue wait", f"{facts['median_wait']:.2f} s"))
        parts.append("<p class='figures'>" + "".join(
            f"<span>{escape(k)}: <b>{escape(str(v))}</b></span>" for k, v in figures) + "</p>")
        parts.append("<h2>Timeline: chunks per host and process</h2><p class='legend'>"
                     f"<span><i class='swatch' style='background:{PALETTE[0]}'></i>a chunk "
                     "(colour: its job)</span><span><i class='swatch' style='background:"
                     f"{FAILED}'></i>a task raised</span><span><i class='swatch' style='border:"
                     "2px solid #000'></i>a later attempt</span><span style='color:#d62728'>"
                     "✕ an attempt that died (hover: the scheduler's reason)</span></p>")
        parts.append(timeline(report, t0))
        parts.append("<div style='display:flex;gap:20px'><div><h2>Tasks done over time</h2>"
                     f"{done_over_time(report, t0)}</div><div><h2>Queue wait against run "
                     f"time</h2>{waits(report)}</div></div>")
        parts.append(f"<h2>Peak memory against run time, per chunk</h2>{memory(report)}")
        parts.append(f"<h2>The slowest chunks</h2>{_slowest_table(runs)}")
    else:
        parts.append("<p>No chunk with a record has finished yet.</p>")
    if report["deaths"]:
        rows = [[_when(d["time"]), d["chunk"] if d["chunk"] is not None else f"worker {d['worker']}",
                 d["job_id"], d["host"] or "", d["event"], d["reason"]] for d in report["deaths"]]
        parts.append("<h2>Attempts that died (what the scheduler said)</h2>"
                     + _table(["time", "chunk", "job", "host", "event", "reason"], rows, "deaths"))
    parts.append(f"<h2>Settings</h2>{_settings_table(settings)}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
