"""Reports built only from bench records and artifact cards, so every figure traces back."""
from __future__ import annotations

import json
from pathlib import Path

from .artifact import load_artifact
from .bench import load_records
from .errors import ArtifactError


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
        return load_artifact(rec["artifact"]["path"]).card
    except (ArtifactError, KeyError, OSError):
        return None


def build_report(run_dir: Path, out: Path | None = None, plot: bool = True) -> dict:
    """Write report.md and report.json (and latency_vs_ndcg.png) for one bench run."""
    run_dir = Path(run_dir)
    recs = load_records(run_dir)
    if not recs:
        raise ArtifactError(f"{run_dir}: no bench records", hint="run `edgekd bench` first")
    out = Path(out) if out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    order = {"teacher": 0, "student": 1, "exported": 2}
    recs.sort(key=lambda r: (r["status"] != "ok", order.get(r["artifact"].get("stage"), 9), r["artifact"]["name"]))
    ok = [r for r in recs if r["status"] == "ok"]
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
                "runtime": f"{r['runtime']} {r['runtime_version']}", "threads": r["threads"],
                "params": r["artifact"].get("params"), "size_bytes": r["size_bytes"],
                "p50_ms": r["latency_ms"]["p50_ms"], "p90_ms": r["latency_ms"]["p90_ms"],
                "p99_ms": r["latency_ms"]["p99_ms"], "runs": r["latency_ms"]["runs"],
                "cold_start_ms": r["cold_start_ms"],
                "peak_rss_bytes": r["peak_rss_bytes"], "baseline_rss_bytes": r["baseline_rss_bytes"],
                "ndcg@10": r["accuracy"]["ndcg@10"], "hr@10": r["accuracy"]["hr@10"],
                **{f"vs_teacher_{k}": v for k, v in r.get("vs_teacher", {}).items() if k != "teacher"},
                "card_test_ndcg@10": m.get("test_ndcg@10"),
                "card_test_sampled_ndcg@10": m.get("test_sampled_ndcg@10"),
                "card_top10_overlap_teacher": m.get("test_top10_overlap"),
                "parity": m.get("parity"),
            })
        else:
            row["error"] = r.get("error")
        rows.append(row)

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
        "| model | stage | format | runtime | params | size KiB | p50 ms | p90 ms | p99 ms | peak MB (runtime) "
        "| NDCG@10 | HR@10 | NDCG vs teacher | speed vs teacher | size vs teacher |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['artifact']} | {row['stage']} | {row['format']} | failed: {row.get('error')} "
                         "| | | | | | | | | | | |")
            continue
        lines.append(
            f"| {row['artifact']} | {row['stage']} | {row['format']} | {row['runtime']} | "
            f"{row['params'] or '-'} | {_kb(row['size_bytes'])} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} | "
            f"{row['p99_ms']:.3f} | {_mb(row['peak_rss_bytes'])} ({_mb(row['baseline_rss_bytes'])}) | "
            f"{row['ndcg@10']:.4f} | {row['hr@10']:.4f} | {_pct(row.get('vs_teacher_ndcg@10_rel'))} | "
            f"{_ratio(row.get('vs_teacher_speedup_p50'))} | {_ratio(row.get('vs_teacher_size_ratio'))} |")
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
    if plot and ok:
        png = _plot(rows, out / "latency_vs_ndcg.png")
        if png:
            lines += ["", f"![latency vs NDCG@10]({png.name})"]
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md)
    (out / "report.json").write_text(json.dumps({"run": run_dir.name, "target": target, "rows": rows},
                                                indent=2) + "\n")
    return {"markdown": out / "report.md", "json": out / "report.json", "rows": rows, "text": md}


def _plot(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    markers = "os^DvP<>Xh"
    # One legend entry per artifact instead of labels on the points: exports of one model sit
    # on top of each other and their labels would be unreadable.
    for i, r in enumerate(ok):
        teacher = r["stage"] == "teacher"
        ax.scatter(r["p50_ms"], r["ndcg@10"], s=130 if teacher else 55, alpha=0.85,
                   marker="*" if teacher else markers[i % len(markers)],
                   color="crimson" if teacher else plt.cm.tab10(i % 10),
                   label=f"{r['artifact']} ({r['format']})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.set_title("Latency vs accuracy at batch 1 (teacher: red star)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
