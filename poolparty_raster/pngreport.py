"""``poolparty-raster report WORK_DIR --png FILE``: the report's four pictures in one static
image, drawn by matplotlib (the optional extra ``plot``)."""
from __future__ import annotations

import io
from typing import Any

from poolparty_raster.reportdata import ideal, timeline_rows
from poolparty_raster.svgcharts import FAILED, PALETTE

INSTALL = "pip install poolparty_raster[plot]"


def render_png(report: dict[str, Any]) -> bytes:
    """The report drawn as a PNG; SystemExit naming the extra when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(f"poolparty-raster: --png needs matplotlib: {INSTALL}") from None
    matplotlib.use("Agg")  # no display: a file only
    from matplotlib import pyplot

    runs, settings = report["runs"], report["settings"]
    if not runs:
        raise SystemExit("poolparty-raster: no chunk with a record has finished yet: "
                         "nothing to draw")
    t0 = settings.get("prepared") or min(r["start"] for r in runs)
    figure = pyplot.figure(figsize=(13, 10), layout="constrained")
    grid = figure.add_gridspec(2, 2, height_ratios=(1.2, 1))
    figure.suptitle(f"map {settings['job_name']}: {settings['tasks']} tasks in "
                    f"{settings['chunks']} chunks ({settings['mode']} mode)")
    _timeline(figure.add_subplot(grid[0, :]), report, t0)
    _done(figure.add_subplot(grid[1, 0]), runs, settings, t0)
    _memory(figure.add_subplot(grid[1, 1]), runs)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    pyplot.close(figure)
    return image.getvalue()


def _timeline(axes: Any, report: dict[str, Any], t0: float) -> None:
    rows = timeline_rows(report["runs"])
    colours = {job: PALETTE[i % len(PALETTE)] for i, job in
               enumerate(dict.fromkeys(r["job_id"] or "local" for r in report["runs"]))}
    for i, (_, row) in enumerate(rows):
        axes.broken_barh([(r["start"] - t0, max(r["seconds"], 1e-3)) for r in row], (i + 0.1, 0.8),
                         facecolors=[FAILED if r["exit"] != "returned"
                                     else colours[r["job_id"] or "local"] for r in row],
                         edgecolors=["black" if r["attempt"] > 1 else "none" for r in row])
    deaths = report["deaths"]
    if deaths:
        axes.scatter([d["time"] - t0 for d in deaths], [len(rows) + 0.5] * len(deaths),
                     marker="x", color=FAILED, label="an attempt that died")
        axes.legend(loc="lower right")
    names = [name for name, _ in rows] + (["attempts that died"] if deaths else [])
    axes.set_yticks([i + 0.5 for i in range(len(names))],
                    names if len(names) <= 40 else [""] * len(names))
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the map was prepared")
    axes.set_title("chunks per host and process (red: a task raised; outlined: a later attempt)")


def _done(axes: Any, runs: list[dict[str, Any]], settings: dict[str, Any], t0: float) -> None:
    ends = sorted((r["end"] - t0, r["last_task"] - r["first_task"] + 1) for r in runs)
    done, times, counts = 0, [0.0], [0]
    for end, tasks in ends:
        done += tasks
        times.append(end)
        counts.append(done)
    axes.step(times, counts, where="post", label="tasks done")
    best = ideal(runs)
    axes.plot([0, best["start"] - t0, best["end"] - t0], [0, 0, done], "--", color="grey",
              label=f"ideal: the same work on {best['slots']} slots, without waiting")
    axes.legend(loc="lower right")
    axes.set_xlabel("seconds since the map was prepared")
    axes.set_ylabel("tasks done")
    axes.set_ylim(0, settings["tasks"] * 1.05)
    axes.set_title("tasks done over time")


def _memory(axes: Any, runs: list[dict[str, Any]]) -> None:
    axes.scatter([r["seconds"] for r in runs], [r["peak_rss"] / 1e6 for r in runs],
                 c=[FAILED if r["exit"] != "returned" else PALETTE[0] for r in runs], s=14)
    axes.set_xlabel("run time of the chunk (s)")
    axes.set_ylabel("peak RSS (MB)")
    axes.set_title("peak memory against run time, per chunk")
