"""`edgekd pipeline`: the flow of docs/design.md as one ordered list of stages.

    train (teacher) -> distill (KD student, no-KD student) -> export (4 formats) -> bench -> report

Each stage writes an artifact; with `resume`, a stage whose artifact already exists with the
same inputs and settings is reused instead of rerun, so an interrupted pipeline continues
where it stopped.
"""
from __future__ import annotations

import json
import tomllib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .artifact import Artifact, load_artifact
from .data import DataSpec, Dataset, load_data
from .errors import ArtifactError, ConfigError

EXPORTS = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
SYNTHETIC_MAXLEN = 50
SYNTHETIC_EPOCHS = 30  # keeps the default run within a few minutes on 2 cores


@dataclass(frozen=True)
class PipelineConfig:
    data: DataSpec = field(default_factory=DataSpec)
    store: Path = Path("models")
    results: Path = Path("benchmarks/results")
    maxlen: int | None = None
    epochs: int | None = None  # default: 200 for files, SYNTHETIC_EPOCHS for the synthetic default
    patience: int | None = None  # default: each stage's own (teacher 30, students 10)
    seed: int = 0
    resume: bool = False
    allow_local_commands: bool = False  # the command line's opt-in for this run; never in a recipe
    target: str = "local-cpu"
    exports: tuple[str, ...] = EXPORTS


RECIPE_FILE = "pipeline.toml"
MEMORY_FILE = "pipeline-memory.json"  # each stage's peak RSS (StagePeaks)
NOT_RECIPE = ("resume", "allow_local_commands")  # how to run, not what: left out of the recipe


def recipe_dict(cfg: PipelineConfig) -> dict:
    """Every setting of a run as a TOML-ready dict (no None: TOML has no null; paths absolute
    so that the recipe repeats the run from any directory)."""
    d = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in NOT_RECIPE or v is None:
            continue
        if f.name == "data":
            v = {k: (list(x) if isinstance(x, tuple) else x) for k, x in asdict(v).items() if x is not None}
            if v.get("path"):
                v["path"] = str(Path(v["path"]).resolve())
        elif isinstance(v, Path):
            v = str(v.resolve())
        elif isinstance(v, tuple):
            v = list(v)
        d[f.name] = v
    return d


def write_recipe(cfg: PipelineConfig, path: Path) -> Path:
    import tomli_w

    path.write_text("# edgekd pipeline recipe: `edgekd pipeline --config THIS_FILE` repeats the run\n"
                    + tomli_w.dumps(recipe_dict(cfg)))
    return path


def read_recipe(path: Path) -> dict:
    """A recipe file as PipelineConfig keyword arguments; unknown keys are refused."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline recipe") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    known = {f.name for f in fields(PipelineConfig)} - set(NOT_RECIPE)
    for k in raw:
        if k not in known:
            raise ConfigError(f"{path}: {k!r} is not a pipeline setting; settings: {', '.join(sorted(known))}")
    out = dict(raw)
    if "data" in out:
        dk = {f.name for f in fields(DataSpec)}
        bad = set(out["data"]) - dk if isinstance(out["data"], dict) else {"(not a table)"}
        if bad:
            raise ConfigError(f"{path}: data.{sorted(bad)[0]} is not a data setting; settings: {', '.join(sorted(dk))}")
        out["data"] = DataSpec(**out["data"])
    for k in ("store", "results"):
        if k in out:
            out[k] = Path(out[k])
    if "exports" in out:
        out["exports"] = tuple(out["exports"])
    return out


def _reusable(store: Path, name: str, *, fingerprint: str, parent: Artifact | None = None,
              config: dict | None = None) -> Artifact | None:
    """The artifact `name` in `store` if it was made from the same inputs with the same
    settings: the same data, the same parent (by sha256) and the same `config` sections."""
    try:
        a = load_artifact(store / name)
    except ArtifactError:
        return None
    same = ((a.card.get("dataset") or {}).get("fingerprint") == fingerprint
            and (parent is None or (a.card.get("parent") or [{}])[0].get("sha256") == parent.sha256)
            and all((a.card.get("config") or {}).get(k) == v for k, v in (config or {}).items()))
    return a if same else None


def _children_peak_bytes() -> int:
    """The largest finished child process's peak RSS (the bench's runners, a converter)."""
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class StagePeaks:
    """Each stage's peak resident memory in this process (Linux: the kernel's high-water mark,
    reset when a stage starts; elsewhere the process's peak so far), and the child processes'.
    Resetting the mark also lowers what getrusage and `time -v` report for this process: the
    stage peaks are the figures to read."""

    def __init__(self):
        self.peaks: dict[str, dict] = {}

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
            return True
        except OSError:
            return False

    @contextmanager
    def stage(self, name: str):
        from .device_runner import peak_rss_bytes

        exact = self._reset()
        try:
            yield
        finally:
            self.peaks[name] = {"peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
                                "measured": "this stage" if exact else "the process so far"}

    def summary(self) -> dict:
        children = round(_children_peak_bytes() / 2**20, 1)
        return {"stages": self.peaks, "child_processes_peak_rss_mb": children,
                "peak_rss_mb": max([v["peak_rss_mb"] for v in self.peaks.values()] + [children])}

    def line(self) -> str:
        s = self.summary()
        return (f"peak memory (RSS) {s['peak_rss_mb'] / 1024:.2f} GB; by stage: " + ", ".join(
            f"{k} {v['peak_rss_mb'] / 1024:.2f} GB" for k, v in self.peaks.items())
            + f"; child processes {s['child_processes_peak_rss_mb'] / 1024:.2f} GB")


def run_pipeline(cfg: PipelineConfig, console=None, epochs_bar=None, on_result=None) -> dict:
    from contextlib import nullcontext

    from .bench import bench
    from .distill import DistillConfig, distill
    from .export import export, get_format
    from .report import build_report
    from .targets import load_target
    from .train import TrainConfig, train_teacher

    from .extras import TFLITE_HINT, tflite_available

    say = console.print if console else print
    exports = [f for f in cfg.exports if get_format(f)]
    if not tflite_available():
        skipped = [f for f in exports if get_format(f).suffix == ".tflite"]
        if skipped:
            say(f"skipping {', '.join(skipped)}: TFLite conversion is not installed; {TFLITE_HINT}")
            exports = [f for f in exports if f not in skipped]
    target = load_target(cfg.target)
    if cfg.allow_local_commands:
        target = replace(target, allow_local_commands=True)
    target.check_local_commands()  # before any training, not after it
    say(f"target {target.name}: {target.source}")
    peaks = StagePeaks()
    with peaks.stage("data"):
        ds: Dataset = load_data(cfg.data, store=cfg.store)
    say(f"data: {ds.name}: {ds.num_users} users, {ds.num_items} items, {ds.num_events} events"
        + (f" ({ds.dropped_users} users dropped: fewer than {cfg.data.min_events} events)" if ds.dropped_users else ""))
    fp = ds.fingerprint()
    maxlen = cfg.maxlen or (SYNTHETIC_MAXLEN if cfg.data.format == "synthetic" else None)
    bar = epochs_bar or (lambda label, total: nullcontext(None))
    epochs = cfg.epochs or (SYNTHETIC_EPOCHS if cfg.data.format == "synthetic" else 200)

    # 1. teacher
    tcfg = TrainConfig(model="sasrec", maxlen=maxlen, epochs=epochs, seed=cfg.seed,
                       **({"patience": cfg.patience} if cfg.patience else {}))
    name = f"{ds.name}-teacher"
    teacher = cfg.resume and _reusable(cfg.store, name, fingerprint=fp, config={"train": tcfg.resolved(ds.num_items).to_dict()})
    if teacher:
        say(f"reusing {teacher.path}")
    else:
        with bar("1/5 train teacher", epochs) as progress, peaks.stage("teacher"):
            teacher = train_teacher(ds, tcfg, store=cfg.store, name=name, progress=progress,
                                        resume=cfg.resume)
    say(f"teacher: test NDCG@10 {teacher.metrics['test_ndcg@10']:.4f} -> {teacher.path}")

    # 2. students, with and without the teacher
    students = {}
    for kd in ("on", "off"):
        dcfg = DistillConfig(model="sasrec-student", kd=kd, maxlen=teacher.card["arch_kwargs"]["maxlen"],
                             epochs=epochs, seed=cfg.seed, teacher_cache=None, **({"patience": cfg.patience} if cfg.patience else {}))
        name = f"{ds.name}-student-{'kd' if kd == 'on' else 'nokd'}"
        s = cfg.resume and _reusable(cfg.store, name, fingerprint=fp, parent=teacher,
                                     config={"distill": dcfg.resolved(ds.num_items).to_dict()})
        if s:
            say(f"reusing {s.path}")
        else:
            with bar(f"2/5 distill (kd {kd})", epochs) as progress, peaks.stage(f"student (kd {kd})"):
                s = distill(teacher, ds, dcfg, store=cfg.store, name=name, progress=progress,
                            resume=cfg.resume)
        say(f"student (kd {kd}): test NDCG@10 {s.metrics['test_ndcg@10']:.4f} -> {s.path}")
        students[kd] = s

    # 3. exports of the distilled student
    exported = []
    for fmt in exports:
        name = f"{students['on'].name}-{fmt}"
        e = cfg.resume and _reusable(cfg.store, name, fingerprint=fp, parent=students["on"])
        if e:
            say(f"reusing {e.path}")
        else:
            say(f"3/5 export {fmt} ...")
            with peaks.stage(f"export {fmt}"):
                e = export(students["on"], fmt, store=cfg.store, name=name, ds=ds)
        p = e.metrics["parity"]
        say(f"export {fmt}: {e.card['size_bytes']} bytes, top-10 overlap {p['top10_overlap']:.4f}, "
            f"valid NDCG@10 change {p['ndcg@10_rel_change'] * 100:+.2f}% -> {e.path}")
        exported.append(e)

    # 4. bench everything on the target, the teacher first as the baseline
    say(f"4/5 bench on {target.name} ({target.threads} thread(s)) ...")
    with peaks.stage("bench"):
        run_dir, records = bench([students["on"], students["off"], *exported], target, out=cfg.results,
                                 teacher=teacher, on_result=on_result)
    # the settings as they ran: the formats actually exported, the epochs and window resolved
    write_recipe(replace(cfg, exports=tuple(exports), epochs=epochs, maxlen=maxlen), run_dir / RECIPE_FILE)

    # 5. report
    with peaks.stage("report"):
        rep = build_report(run_dir)
    memory = peaks.summary()
    (run_dir / MEMORY_FILE).write_text(json.dumps(memory, indent=1) + "\n")
    if console is not None:
        console.print(rep["text"], markup=False, highlight=False)
    else:
        print(rep["text"])
    say(peaks.line())
    say(f"artifacts: {cfg.store}/  bench records: {run_dir}/  report: {rep['markdown']}  "
        f"recipe: {run_dir / RECIPE_FILE}")
    return {"teacher": teacher, "students": students, "exports": exported, "run_dir": run_dir,
            "records": records, "report": rep, "memory": memory}
