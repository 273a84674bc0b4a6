"""Reports built only from bench records and artifact cards, so every figure traces back."""
from __future__ import annotations

from pathlib import Path

from .artifact import load_artifact, write_json
from .bench import load_records
from .errors import ArtifactError
from .extras import REPORT_HINT, charts_available
from .timing import NOISY_SPREAD, fmt_interval


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 1e6:.2f}"


def _kb(b: float | None) -> str:
    return "-" if b is None else f"{b / 1024:.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _card(rec: dict) -> dict | None:
    try:
        card = load_artifact(rec["artifact"]["path"]).card
    except (ArtifactError, KeyError, OSError):
        return None
    # the file there now must be the one that was benchmarked, or its figures do not belong here
    return card if card.get("sha256") == rec["artifact"].get("sha256") else None


def _sorted(recs: list[dict]) -> list[dict]:
    """Teacher first, then students, then exports; failed cells last."""
    order = {"teacher": 0, "student": 1, "exported": 2}
    return sorted(recs, key=lambda r: (r["status"] != "ok", order.get(r["artifact"].get("stage"), 9),
                                       r["artifact"]["name"]))


def _rows(recs: list[dict]) -> list[dict]:
    """One flat row per record, with the figures from its artifact card beside it."""
    rows = []
    for r in recs:
        card = _card(r) or {}
        m = card.get("metrics", {})
        row = {
            "artifact": r["artifact"]["name"], "stage": r["artifact"].get("stage"),
            "format": r["artifact"].get("format"), "status": r["status"],
        }
        if r["status"] == "ok":
            row.update({
                "runtime": f"{r['runtime']} {r['runtime_version'] or ''}".strip(), "threads": r["threads"],
                "target": r["target"]["name"],
                "params": r["artifact"].get("params"), "size_bytes": r["size_bytes"],
                "p50_ms": r["latency_ms"]["p50_ms"], "p90_ms": r["latency_ms"].get("p90_ms"),
                "p99_ms": r["latency_ms"].get("p99_ms"), "runs": r["latency_ms"].get("runs"),
                "cold_start_ms": r["cold_start_ms"],
                "peak_rss_bytes": r["peak_rss_bytes"], "baseline_rss_bytes": r["baseline_rss_bytes"],
                "ndcg@10": r["accuracy"]["ndcg@10"], "hr@10": r["accuracy"]["hr@10"],
                **{f"vs_teacher_{k}": v for k, v in r.get("vs_teacher", {}).items() if k != "teacher"},
                "p50_rounds_ms": r["latency_ms"].get("p50_rounds_ms"),
                "p50_min_ms": (r["latency_ms"].get("p50_spread") or {}).get("min_ms"),
                "p50_max_ms": (r["latency_ms"].get("p50_spread") or {}).get("max_ms"),
                "p50_spread_rel": (r["latency_ms"].get("p50_spread") or {}).get("rel"),
                "noisy": r["latency_ms"].get("noisy"),
                "speedup_vs_teacher": r.get("speedup_vs_teacher"),
                "machine_load": r.get("machine_load"), "timing": r.get("timing"),
                "card_test_ndcg@10": m.get("test_ndcg@10"),
                "card_test_sampled_ndcg@10": m.get("test_sampled_ndcg@10"),
                "card_top10_overlap_teacher": m.get("test_top10_overlap"),
                "parity": m.get("parity"),
            })
        else:
            row["error"] = r.get("error")
        rows.append(row)

    return rows


def _load_run(run_dir: Path, out: Path | None) -> tuple[Path, list[dict], Path]:
    run_dir = Path(run_dir)
    recs = load_records(run_dir)
    if not recs:
        raise ArtifactError(f"{run_dir}: no bench records", hint="run `edgekd bench` first")
    out = Path(out) if out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    return run_dir, recs, out


def build_report(run_dir: Path, out: Path | None = None, plot: bool = True) -> dict:
    """Write report.md and report.json (and latency_vs_ndcg.png) for one bench run."""
    run_dir, recs, out = _load_run(run_dir, out)
    recs = _sorted(recs)
    ok = [r for r in recs if r["status"] == "ok"]
    rows = _rows(recs)
    target = recs[0]["target"]["name"]
    dev = next((r["device"] for r in ok), {})
    lines = [
        f"# edgekd report: {run_dir.name}", "",
        f"Target **{target}** ({dev.get('cpu', '?')}, {dev.get('machine', '?')}), "
        f"batch 1, {ok[0]['threads'] if ok else '?'} thread(s). "
        f"Accuracy: test split, full ranking over the catalogue with seen items excluded, "
        f"computed from each file's own outputs ({ok[0]['accuracy']['users'] if ok else '?'} users). "
        "Ratios are against the teacher (torch fp32) measured in the same run; peak memory is the "
        "process's peak resident set, with the runtime's own baseline (no model) in brackets.", "",
        "| model | stage | format | runtime | params | size KiB | p50 ms [rounds min-max] | p90 ms | p99 ms | peak MB (runtime) "
        "| NDCG@10 | HR@10 | NDCG vs teacher | speed vs teacher | size vs teacher |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['artifact']} | {row['stage']} | {row['format']} | {row['status']}: {row.get('error')} "
                         "| | | | | | | | | | | |")
            continue
        lines.append(
            f"| {row['artifact']} | {row['stage']} | {row['format']} | {row['runtime']} | "
            f"{row['params'] or '-'} | {_kb(row['size_bytes'])} | {_p50(row)} | {_f(row['p90_ms'])} | "
            f"{_f(row['p99_ms'])} | {_mb(row['peak_rss_bytes'])} ({_mb(row['baseline_rss_bytes'])}) | "
            f"{row['ndcg@10']:.4f} | {row['hr@10']:.4f} | {_pct(row.get('vs_teacher_ndcg@10_rel'))} | "
            f"{_speed(row)} | {_ratio(row.get('vs_teacher_size_ratio'))} |")
    lines += ["", *_timing_notes(rows)]
    floors = next((c["metrics"]["floors_test_ndcg@10"] for c in map(_card, recs)
                   if c and "floors_test_ndcg@10" in c.get("metrics", {})), None)
    if floors:
        lines += ["", "Floors on the same split (test NDCG@10, full ranking): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in floors.items()) + "."]
    parity_rows = [r for r in rows if r.get("parity")]
    if parity_rows:
        lines += ["", "## Export parity (validation split, against the torch parent, from artifact cards)", "",
                  "| export | max abs diff | top-10 overlap | NDCG@10 | parent NDCG@10 | change |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in parity_rows:
            p = r["parity"]
            lines.append(f"| {r['artifact']} | {p['max_abs_diff']:.2e} | {p['top10_overlap']:.4f} | "
                         f"{p['ndcg@10']:.4f} | {p['parent_ndcg@10']:.4f} | {_pct(p['ndcg@10_rel_change'])} |")
    train_rows = [r for r in rows if r.get("card_test_ndcg@10") is not None]
    if train_rows:
        lines += ["", "## Training (test split, torch, from artifact cards)", "",
                  "| model | NDCG@10 | sampled-100 NDCG@10 | top-10 overlap with teacher |",
                  "|---|---:|---:|---:|"]
        for r in train_rows:
            ov = r.get("card_top10_overlap_teacher")
            lines.append(f"| {r['artifact']} | {r['card_test_ndcg@10']:.4f} | "
                         f"{r['card_test_sampled_ndcg@10']:.4f} | {'-' if ov is None else f'{ov:.3f}'} |")
    charts = bool(plot and ok) and charts_available()
    if charts:
        png = _plot(rows, out / "latency_vs_ndcg.png")
        lines += ["", f"![latency vs NDCG@10]({png.name})"]
    elif plot:
        (out / "latency_vs_ndcg.png").unlink(missing_ok=True)  # an earlier report's chart, not this one's
    page = build_html(run_dir, out) if plot and ok else None
    if page and charts:
        lines += ["", f"Charts per target (Pareto front, size, memory): [{page.name}]({page.name})"]
    elif page:
        lines += ["", f"Tables per target: [{page.name}]({page.name}). No charts: matplotlib is not installed; charts need `{REPORT_HINT}`."]
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md)
    write_json(out / "report.json", {"run": run_dir.name, "target": target, "rows": rows})
    return {"markdown": out / "report.md", "json": out / "report.json", "html": page, "rows": rows, "text": md,
            "charts": charts}


def _plot(rows: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    markers = "os^DvP<>Xh"
    # One legend entry per artifact instead of labels on the points: exports of one model sit
    # on top of each other and their labels would be unreadable.
    for i, r in enumerate(ok):
        teacher = r["stage"] == "teacher"
        _errorbar(ax, r, r["ndcg@10"], _colour(i, teacher))
        ax.scatter(r["p50_ms"], r["ndcg@10"], s=130 if teacher else 55, alpha=0.85,
                   marker="*" if teacher else markers[i % len(markers)],
                   color=_colour(i, teacher),
                   label=f"{r['artifact']} ({r['format']})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale; bars: slowest and fastest round)")
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.set_title("Latency vs accuracy at batch 1 (teacher: red star)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- HTML

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and NDCG (higher),
    ordered by latency."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in idx:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _png(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _charts(rows: list[dict]) -> list[tuple[str, str]]:
    """(title, inlined PNG) of each chart; none without matplotlib (the [report] extra)."""
    if not charts_available():
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r.get("p50_ms")]
    if not ok:
        return []
    teacher = next((r for r in ok if r["stage"] == "teacher"), None)
    names = [r["artifact"] for r in ok]
    colors = [_colour(i, r["stage"] == "teacher") for i, r in enumerate(ok)]
    charts = []

    fig, ax = plt.subplots(figsize=(8, 4.6))
    pts = [(r["p50_ms"], r["ndcg@10"]) for r in ok]
    front = pareto_front(pts)
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="grey", lw=1, ls="--", label="Pareto front")
    for i, r in enumerate(ok):
        _errorbar(ax, r, pts[i][1], colors[i])
        ax.scatter(*pts[i], s=140 if r["stage"] == "teacher" else 60, color=colors[i],
                   marker="*" if r["stage"] == "teacher" else "o", edgecolor="black" if i in front else "none",
                   label=f"{r['artifact']} ({r['format']})", zorder=3)
    if teacher:
        ax.axhline(teacher["ndcg@10"], color=TEACHER_COLOUR, lw=0.8, ls=":", label="teacher NDCG@10")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1, ms (log; bars: slowest and fastest round)")
    ax.set_ylabel("test NDCG@10, full ranking")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    ax.set_title("Latency vs accuracy (outlined: on the Pareto front)")
    charts.append(("Latency vs NDCG@10", _png(fig)))
    plt.close(fig)

    for key, label, scale in (("size_bytes", "file size, KiB", 1 / 1024), ("peak_rss_bytes", "peak resident memory, MB", 1e-6)):
        vals = [(r.get(key) or 0) * scale for r in ok]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(ok) + 1.2))
        y = range(len(ok))
        ax.barh(y, vals, color=colors)
        if key == "peak_rss_bytes":
            base = [(r.get("baseline_rss_bytes") or 0) * scale for r in ok]
            ax.barh(y, base, color="white", alpha=0.55, hatch="//", edgecolor="grey", label="runtime alone (no model)")
        if teacher and teacher.get(key):
            # in the legend, outside the axes: a label on the line itself was cut off at the edge
            ax.axvline(teacher[key] * scale, color=TEACHER_COLOUR, ls="--", lw=1,
                       label=f"teacher: {teacher[key] * scale:,.0f}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_yticks(list(y), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
        charts.append((label[0].upper() + label[1:], _png(fig)))
        plt.close(fig)
    return charts


def build_html(run_dir: Path, out: Path | None = None) -> Path:
    """One self-contained page for a bench run: per target, a table and the charts (images
    inlined; tables only without matplotlib), the teacher as the baseline on every chart."""
    import html

    run_dir, recs, out = _load_run(run_dir, out)
    by_target: dict[str, list[dict]] = {}
    for r in _sorted(recs):
        by_target.setdefault(r["target"]["name"], []).append(r)
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgekd report {e(run_dir.name)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
             "td.n{text-align:right;font-variant-numeric:tabular-nums}tr.teacher{background:#fde8ea}"
             "tr.failed{color:#a00}.noisy{color:#a00;font-weight:bold}img{max-width:100%;display:block;margin:1em 0}.meta{color:#555;font-size:13px}</style>"
             f"</head><body><h1>edgekd report: {e(run_dir.name)}</h1>"]
    if not charts_available():
        parts.append(f"<p class='meta'>No charts: matplotlib is not installed; charts need <code>{e(REPORT_HINT)}</code>.</p>")
    for target, trecs in by_target.items():
        rows = _rows(trecs)
        ok = [r for r in trecs if r["status"] == "ok"]
        dev = ok[0]["device"] if ok else {}
        state = [f"{k} {e(str(dev[f]))}{u}" for k, f, u in (("governor", "governor", ""), ("temperature", "temperature_c", " °C"),
                                                             ("throttled", "throttled", "")) if dev.get(f) is not None]
        parts.append(f"<h2>Target {e(target)}</h2><p class='meta'>{e(str(dev.get('cpu') or '?'))}, "
                     f"{e(str(dev.get('machine') or '?'))}; {'; '.join(state + [''])}"
                     f"batch 1, {ok[0]['threads'] if ok else '?'} thread(s). Accuracy: test split, full ranking, "
                     "seen items excluded, from each file's own outputs. Ratios against the teacher on the same target.</p>")
        head = ["model", "stage", "format", "runtime", "size KiB", "p50 ms [rounds min-max]", "p90 ms", "p99 ms", "cold start ms",
                "peak MB (runtime)", "NDCG@10", "HR@10", "NDCG vs teacher", "speed vs teacher", "size vs teacher"]
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
        for r in rows:
            if r["status"] != "ok":
                parts.append(f"<tr class='failed'><td>{e(r['artifact'])}</td><td>{e(str(r['stage']))}</td>"
                             f"<td>{e(str(r['format']))}</td><td colspan='{len(head) - 3}'>{e(r['status'])}: "
                             f"{e(str(r.get('error')))}</td></tr>")
                continue
            peak = (f"{_mb(r['peak_rss_bytes'])} ({_mb(r['baseline_rss_bytes'])})" if r.get("peak_rss_bytes") else "-")
            cells = [r["artifact"], r["stage"], r["format"], r["runtime"]]
            nums = [_kb(r["size_bytes"]), _p50(r), _f(r.get("p90_ms")), _f(r.get("p99_ms")),
                    _f(r.get("cold_start_ms"), 1), peak, f"{r['ndcg@10']:.4f}", f"{r['hr@10']:.4f}",
                    _pct(r.get("vs_teacher_ndcg@10_rel")), _speed(r),
                    _ratio(r.get("vs_teacher_size_ratio"))]
            cls = " class='teacher'" if r["stage"] == "teacher" else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in cells)
                         + "".join(f"<td class='n'>{e(str(c))}</td>" for c in nums) + "</tr>")
        parts.append("</table>")
        parts += [f"<p class='meta{' noisy' if 'NOISY' in n else ''}'>{e(n.replace('**', ''))}</p>"
                  for n in _timing_notes(rows)]
        for title, src in _charts(rows):
            parts.append(f"<h3>{e(title)}</h3><img alt='{e(title)}' src='{src}'>")
    parts.append("<p class='meta'>Built by edgekd from the bench records in this directory and the artifact "
                 "cards they name.</p></body></html>")
    page = out / "report.html"
    page.write_text("\n".join(parts))
    return page


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


TEACHER_COLOUR = "black"


def _colour(i: int, teacher: bool):
    """The teacher in black; the others from tab10 without its red (which reads as an alarm)."""
    import matplotlib.pyplot as plt

    if teacher:
        return TEACHER_COLOUR
    palette = [c for j, c in enumerate(plt.cm.tab10.colors) if j != 3]
    return palette[i % len(palette)]


def _errorbar(ax, row: dict, y: float, color) -> None:
    """Horizontal bar from the fastest to the slowest round's p50 (the spread over rounds)."""
    lo, hi = row.get("p50_min_ms"), row.get("p50_max_ms")
    if lo is None or hi is None:
        return
    ax.errorbar([row["p50_ms"]], [y], xerr=[[row["p50_ms"] - lo], [hi - row["p50_ms"]]], fmt="none",
                ecolor=color, elinewidth=1.2, capsize=3, alpha=0.8, zorder=2)


def _p50(row: dict) -> str:
    """0.440 [0.431-0.452]: the median over rounds and the fastest and slowest round."""
    if row.get("p50_min_ms") is None:
        return f"{row['p50_ms']:.3f}"
    return f"{row['p50_ms']:.3f} [{row['p50_min_ms']:.3f}-{row['p50_max_ms']:.3f}]" + (" !" if row.get("noisy") else "")


def _speed(row: dict) -> str:
    """The speed-up against the teacher with its interval over rounds, where there is one."""
    iv = row.get("speedup_vs_teacher")
    if iv and iv.get("verdict") != "reference" and iv.get("low") is not None:
        return fmt_interval(iv)
    return _ratio(row.get("vs_teacher_speedup_p50"))


def _load_text(load: dict | None) -> str:
    if not load:
        return "machine load not recorded"
    la = lambda v: "?" if not v else "/".join(f"{x:.2f}" for x in v)  # noqa: E731
    busy = ", ".join(f"{b['name']} {b['cpu_share']:.2f}" for b in load.get("other_busy") or [])
    share = load.get("other_cpu_share")
    return (f"load average {la(load.get('loadavg_before'))} before, {la(load.get('loadavg_after'))} after "
            f"({load.get('cpu_count')} CPUs); other processes used "
            f"{'?' if share is None else f'{share:.2f}'} cores" + (f" (busiest: {busy})" if busy else ""))


def _timing_notes(rows: list[dict]) -> list[str]:
    """How latency was timed, the machine's state, and a flag on a run whose rounds disagree."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("p50_rounds_ms")]
    if not ok:
        return ["Latency: one measurement per file (no rounds recorded)."]
    t = ok[0].get("timing") or {}
    notes = [f"Latency: {t.get('rounds', len(ok[0]['p50_rounds_ms']))} interleaved rounds ({t.get('design', '')}); "
             "p50 is the median of the per-round p50s, [min-max] the fastest and slowest round; the speed-up "
             "against the teacher is paired by round, with a 95% bootstrap interval over rounds in brackets. "
             f"Machine during the run: {_load_text(ok[0].get('machine_load'))}."]
    threshold = t.get("noisy_threshold", NOISY_SPREAD)
    noisy = [r for r in ok if (r.get("p50_spread_rel") or 0) > threshold]
    if noisy:
        notes.append(f"**NOISY RUN**: the rounds of {', '.join(r['artifact'] for r in noisy)} disagree by more than "
                     f"{threshold:.0%} of their median (" + ", ".join(f"{r['p50_spread_rel']:.0%}" for r in noisy)
                     + "); ratios whose interval includes 1.0 are within noise. Rerun on a quieter machine "
                     "or with more --rounds.")
    return notes
