"""The edgekd command line: one command per stage; each turns options into a config, calls
the stage and prints where its output went. Errors end in one line and an exit code:
0 ok, 1 failed, 2 usage, 3 target unreachable. EDGEKD_DEBUG=1 shows tracebacks."""
from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import click
import typer

try:  # typer >= 0.25 carries its own copy of click; catch both
    from typer._click import exceptions as _tclick
except ImportError:  # pragma: no cover
    _tclick = click.exceptions
USAGE_ERRORS = (click.exceptions.UsageError, _tclick.UsageError)
NO_ARGS = tuple(getattr(m, "NoArgsIsHelpError") for m in (click.exceptions, _tclick) if hasattr(m, "NoArgsIsHelpError"))
ABORT = tuple({click.exceptions.Abort, getattr(_tclick, "Abort", click.exceptions.Abort), getattr(typer, "Abort", click.exceptions.Abort)})
from rich.console import Console
from rich.markup import escape

from .errors import BenchError, ConfigError, EdgeKDError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, distil, export and benchmark sequential recommenders for edge devices.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and convert interaction data.")
list_app = typer.Typer(no_args_is_help=True, help="List registered models, export formats, bench targets.")
app.add_typer(data_app, name="data")
app.add_typer(list_app, name="list")


def _flag_type(self, ctx):
    """A flag takes no value: show none beside it in --help (typer 0.29 prints <bool>)."""
    return None if getattr(self, "is_flag", False) else _option_type(self, ctx)


try:
    from typer.core import TyperOption

    _option_type = TyperOption.display_type_rich
    TyperOption.display_type_rich = _flag_type
except (ImportError, AttributeError):  # pragma: no cover - other typer versions print no type for flags
    pass


def _version(value: bool):
    if value:
        from . import __version__

        out.print(f"edgekd {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    pass


console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataOpt = typer.Option(None, "--data", help="interaction file (default: the built-in synthetic dataset)")
FormatOpt = typer.Option(None, "--format", help="movielens | sasrec | csv | synthetic (default: movielens "
                         "when --data is given, else synthetic)")
SynthOpt = typer.Option(None, "--synthetic", help="synthetic dataset setting KEY=VALUE (users, items, "
                        "mean_length, tastes, p_markov, seed, ...); repeatable")
StoreOpt = typer.Option(Path("models"), "--out", help="artifact store directory (every command that reads or "
                        "writes artifacts; store names resolve there)")
ResultsOpt = typer.Option(Path("benchmarks/results"), "--results", help="bench results directory")
TensorboardOpt = typer.Option(None, "--tensorboard", help="write TensorBoard scalars (losses, validation "
                              "metrics, epoch time) to this directory")
JsonOpt = typer.Option(False, "--json", help="print JSON instead of a table")
PeriodOpt = typer.Option(None, "--period", help="a time period of the events: early:Q (before the Q-quantile "
                         "of timestamps) or late:Q (from it on), e.g. early:0.5")
NegativesOpt = typer.Option(None, "--negatives", help="next-item loss: 0 = full softmax over the catalogue; N = sampled "
                            "(in-batch + N negatives). Default: full up to 20,000 items, else 256 sampled")
SamplerOpt = typer.Option("uniform", "--sampler", help="sampled negatives: uniform or popularity (logQ-corrected)")
LossTypeOpt = typer.Option("ce", "--loss-type", help="with sampled negatives: ce (sampled softmax) or gbce "
                           "(gSASRec; on MovieLens-100k it ranks well below ce: see benchmarks/scale)")


def _json(obj) -> None:
    """Machine-readable output: plain JSON on stdout, no colour, no wrapping."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _bytes_ok(value: Optional[str]) -> Optional[int]:
    """'2MB', '1.5MiB', '500000' -> bytes (a usage error otherwise)."""
    from .compress import parse_bytes

    try:
        return None if value is None else parse_bytes(value)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None


def _name_ok(value: Optional[str]) -> Optional[str]:
    """--name is checked before any work: one safe path component, else exit 2."""
    if value is not None:
        from .artifact import check_name

        check_name(value)
    return value


def _spec(data: Optional[Path], fmt: Optional[str], synthetic: Optional[list[str]] = None,
          period: Optional[str] = None):
    from .data import DataSpec, SyntheticConfig

    fmt = fmt or ("movielens" if data else "synthetic")
    synth = {}
    for item in synthetic or []:
        key, sep, value = item.partition("=")
        if not sep or key not in SyntheticConfig.__dataclass_fields__:
            raise ConfigError(f"--synthetic {item!r}: expected KEY=VALUE with KEY one of "
                              f"{', '.join(SyntheticConfig.__dataclass_fields__)}")
        typ = type(getattr(SyntheticConfig(), key))
        try:
            synth[key] = typ(value)
        except ValueError:
            raise ConfigError(f"--synthetic {key}: {value!r} is not a {typ.__name__}") from None
    return DataSpec(format=fmt, path=str(data) if data else None, synthetic=synth, period=period)


def _load(spec, store: Optional[Path] = None):
    """The dataset, built once per file and store (load_data's cache)."""
    from .data import load_data

    ds = load_data(spec, store=store)
    st = ds.stats()
    console.print(f"data: {st['name']}: {st['users']} users, {st['items']} items, {st['events']} events"
                  + (f" ({st['dropped_users']} users with fewer than {spec.min_events} events dropped)"
                     if st["dropped_users"] else ""))
    return ds


@contextmanager
def _epochs(label: str, total: int):
    """A progress bar over epochs that shows the losses and validation NDCG@10."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 reports
        yield None
        return

    def terms(row: dict) -> str:  # the distillation terms beside the total
        parts = [f"{k[:-5]} {v:.3f}" for k, v in row.items() if k.endswith("_loss") and k != "task_loss"]
        return f" ({', '.join(parts)})" if parts else ""

    if not console.is_terminal:  # a log file or CI: one plain line per epoch instead of a bar
        def line(row: dict):
            kd = terms(row)
            console.print(f"{label}: epoch {row['epoch']}/{total} loss {row['loss']:.3f}{kd} "
                          f"valid NDCG@10 {row['valid_ndcg@10']:.4f} (best epoch {row['best_epoch']}) "
                          f"{row['epoch_s']:.1f}s", highlight=False, soft_wrap=True)
        yield line
        return

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
                  transient=False) as bar:
        task = bar.add_task(label, total=total, info="")

        def update(row: dict):
            info = f"loss {row['loss']:.3f}{terms(row)}"
            info += f"  valid NDCG@10 {row['valid_ndcg@10']:.4f} (best epoch {row['best_epoch']})"
            bar.update(task, completed=row["epoch"], info=info)

        yield update
        bar.update(task, total=bar.tasks[0].completed)


# ---------------------------------------------------------------- data

@data_app.command("stats")
def data_stats(data: Optional[Path] = DataOpt, format: Optional[str] = FormatOpt,
               synthetic: Optional[list[str]] = SynthOpt, period: Optional[str] = PeriodOpt):
    """Load a dataset and print its size and fingerprint."""
    ds = _load(_spec(data, format, synthetic, period))
    out.print_json(json.dumps(ds.stats()))


@data_app.command("convert")
def data_convert(dest: Path = typer.Argument(..., help="output file (SASRec text: `user item` per line)"),
                 data: Optional[Path] = DataOpt, format: Optional[str] = FormatOpt,
                 synthetic: Optional[list[str]] = SynthOpt, period: Optional[str] = PeriodOpt):
    """Write the sequences in SASRec text format (same ids, same leave-one-out split) so a
    reference implementation can run on identical data."""
    from .data import write_sasrec_text

    ds = _load(_spec(data, format, synthetic, period))
    write_sasrec_text(ds, dest)
    out.print(str(dest))


# ---------------------------------------------------------------- list

@list_app.command("models")
def list_models_cmd(as_json: bool = JsonOpt):
    """Registered models (for `train --model` and `distill --model`)."""
    from .models import list_models

    if as_json:
        return _json([{"name": m.name, "role": m.role, "summary": m.summary} for m in list_models()])
    for m in list_models():
        out.print(f"{m.name:16} {m.role:8} {m.summary}")


@list_app.command("formats")
def list_formats_cmd(as_json: bool = JsonOpt):
    """Export formats (for `export --target`)."""
    from .export import list_formats

    if as_json:
        return _json([{"name": f.name, "suffix": f.suffix, "precision": f.precision, "family": f.family or None,
                       "summary": f.summary} for f in list_formats()])
    for f in list_formats():
        out.print(f"{f.name:14} {f.summary}")


@list_app.command("losses")
def list_losses_cmd(as_json: bool = JsonOpt):
    """Distillation loss terms (for `distill --loss`, combined with +)."""
    from .kd_losses import list_losses

    if as_json:
        return _json([{"name": x.name, "weight_option": "--" + x.weight_field.replace("_", "-"),
                       "summary": x.summary} for x in list_losses()])
    for spec in list_losses():
        out.print(f"{spec.name:6} --{spec.weight_field.replace('_', '-'):14} {spec.summary}")


@list_app.command("targets")
def list_targets_cmd(as_json: bool = JsonOpt):
    """Bench targets (for `bench --target`): devices, each from its TOML file."""
    targets_list(as_json)


targets_app = typer.Typer(no_args_is_help=True, help="Bench targets: devices described by TOML files (built-in, "
                          "or yours in the user config directory: `edgekd targets init`).")
app.add_typer(targets_app, name="targets")


@targets_app.command("list")
def targets_list(as_json: bool = JsonOpt):
    """Every target with its kind, where it points and the file it comes from (yours in the user
    config directory first, then the built-ins)."""
    from .targets import list_targets, load_target

    rows, sources = [], list_targets()
    for name, src in sources.items():
        row = {"name": name, "origin": src.origin, "file": src.path or None, "overrides_builtin": src.overrides}
        try:
            t = load_target(name)
            where = t.describe() + (f", {t.device}" if t.device != "cpu" else "")
            if t.local_commands():
                where += " (needs --allow-local-commands)"
            row.update(kind=t.kind, where=where, threads=t.threads, error=None)
        except EdgeKDError as e:
            row.update(kind=None, where=None, threads=None, error=str(e))
        rows.append(row)
    if as_json:
        return _json(rows)
    for r in rows:
        src = sources[r["name"]].describe()
        if r["error"]:
            out.print(f"{r['name']:14} invalid: {r['error']}", markup=False, highlight=False)
        else:
            out.print(f"{r['name']:14} {r['kind']:6} {r['where']:32} {r['threads']} thread(s)  {src}",
                      markup=False, highlight=False)


@targets_app.command("init")
def targets_init(name: str = typer.Argument(..., help="a built-in target: pi, android, cuda or local-cpu"),
                 force: bool = typer.Option(False, "--force", help="replace an existing file of that name")):
    """Copy a built-in target file into your config directory to edit ($XDG_CONFIG_HOME/edgekd/targets,
    default ~/.config/edgekd/targets); a file there overrides the built-in of the same name.

    Example: edgekd targets init pi && $EDITOR ~/.config/edgekd/targets/pi.toml"""
    from .targets import init_target

    out.print(str(init_target(name, force=force)), markup=False, highlight=False)


AllowLocalOpt = typer.Option(False, "--allow-local-commands", help="let this run use what in the target file "
                             "could run a command on this machine (ssh ProxyCommand and the like, a custom adb "
                             "client); refused otherwise")


def _target(name: str, allow_local_commands: bool):
    from dataclasses import replace

    from .targets import load_target

    t = load_target(name)
    return replace(t, allow_local_commands=True) if allow_local_commands else t


@targets_app.command("check")
def targets_check(name: str = typer.Argument(..., help="target name or path to a .toml"),
                  allow_local_commands: bool = AllowLocalOpt):
    """Is the target reachable, and which runtimes (and versions) does it have?"""
    from .bench import check_target

    info = check_target(_target(name, allow_local_commands))
    out.print_json(json.dumps(info))


# ---------------------------------------------------------------- stages

@app.command()
def train(data: Optional[Path] = DataOpt, format: Optional[str] = FormatOpt,
          synthetic: Optional[list[str]] = SynthOpt, period: Optional[str] = PeriodOpt,
          model: str = typer.Option("sasrec", help="registered model (edgekd list models)"),
          d: Optional[int] = typer.Option(None, "--d", "--dim", help="hidden size (default: the model's; "
                                          "--dim under torchrun, whose own options --d would abbreviate)"),
          blocks: Optional[int] = typer.Option(None), heads: Optional[int] = typer.Option(None),
          dropout: Optional[float] = typer.Option(None), maxlen: Optional[int] = typer.Option(None),
          epochs: int = typer.Option(200, help="at most this many epochs"),
          patience: int = typer.Option(30, help="stop after this many epochs without a better validation NDCG@10"),
          batch_size: int = typer.Option(128), lr: float = typer.Option(2e-3),
          label_smoothing: float = typer.Option(0.2, help="label smoothing of the cross-entropy (chosen on "
                                                "MovieLens-100k validation)"),
          bucket: bool = typer.Option(False, "--bucket", help="length-bucketed batches cut to their longest "
                                      "window (exact; 1.6x faster epochs on MovieLens-100k)"),
          negatives: Optional[int] = NegativesOpt, sampler: str = SamplerOpt, loss_type: str = LossTypeOpt,
          seed: int = typer.Option(0), store: Path = StoreOpt,
          name: Optional[str] = typer.Option(None, help="artifact name (default: <data>-teacher)", callback=_name_ok),
          tensorboard: Optional[Path] = TensorboardOpt,
          resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its checkpoint")):
    """Train a teacher with early stopping on validation NDCG@10.

    Example: edgekd train --data ml-100k/u.data --out models"""
    from .train import TrainConfig, train_teacher

    cfg = TrainConfig(model=model, d=d, blocks=blocks, heads=heads, dropout=dropout, maxlen=maxlen,
                      label_smoothing=label_smoothing, bucket=bucket,
                      negatives=negatives, sampler=sampler, loss_type=loss_type,
                      epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, seed=seed)
    ds = _load(_spec(data, format, synthetic, period), store)
    with _epochs("train teacher", epochs) as progress:
        a = train_teacher(ds, cfg, store=store, name=name, progress=progress, resume=resume,
                          tensorboard=tensorboard)
    if a is not None:  # None: a torchrun process other than rank 0
        _done(a)


@app.command()
def distill(teachers: Optional[list[Path]] = typer.Argument(None, help="teacher artifact directory (or use --teacher)"),
            teacher: Optional[list[Path]] = typer.Option(None, "--teacher", help="a teacher; repeat for several "
                                                         "(their soft labels are mixed)"),
            teacher_weight: Optional[list[float]] = typer.Option(None, "--teacher-weight", help="one per teacher, "
                                                                 "in order (default: equal)"),
            kd: str = typer.Option("on", help="on: distil from the teacher; off: the same student alone (baseline)"),
            loss: str = typer.Option("kl", "--loss", help="distillation terms, combined with +: kl, mse, rd, rrd, "
                                     "hint (edgekd list losses), e.g. kl+hint"),
            model: str = typer.Option("sasrec-student", help="registered student model"),
            temperature: float = typer.Option(2.0, "--temperature", "-T", help="kl: softmax temperature"),
            kd_weight: float = typer.Option(1.0, help="kl: weight (lambda) of the KL term"),
            mse_weight: float = typer.Option(0.1, help="mse: weight of logit matching"),
            rd_weight: float = typer.Option(1.0, help="rd: weight"), rd_k: int = typer.Option(10, help="rd: teacher top-K"),
            rd_lambda: float = typer.Option(5.0, help="rd: position weight exp(-rank/lambda)"),
            rd_mu: float = typer.Option(0.1, help="rd: ranking-discrepancy sharpness"),
            rd_warmup: int = typer.Option(2, help="rd: epochs before discrepancy weighting starts"),
            rrd_weight: float = typer.Option(0.1, help="rrd: weight"), rrd_k: int = typer.Option(10, help="rrd: teacher top-K"),
            hint_weight: float = typer.Option(1.0, help="hint: weight"),
            teacher_cache: Optional[int] = typer.Option(None, "--teacher-cache", help="K > 0: run the teacher "
                                                        "once before training and keep each position's top-K items "
                                                        "and scores (6 K bytes a position) instead of running it in "
                                                        "every batch; soft labels over those K. 0: the live teacher. "
                                                        "Default: K=100 above 50,000 items, else 0"),
            cache_positions: Optional[int] = typer.Option(None, "--cache-positions", help="the teacher cache "
                                                          "holds this many positions per training window (the "
                                                          "last always among them); 0: all. Default: all while "
                                                          "building it takes at most 1e11 teacher scores, else "
                                                          "as many as fit"),
            data: Optional[Path] = typer.Option(None, "--data", help="train the student on other data than the "
                                                "teacher's (cross-domain: items matched by original id)"),
            format: Optional[str] = FormatOpt, synthetic: Optional[list[str]] = SynthOpt,
            period: Optional[str] = PeriodOpt,
            online: bool = typer.Option(False, "--online", help="mutual learning: a fresh teacher of the "
                                        "teacher's shape trains together with the student, each learning from the other"),
            init_from_teacher: bool = typer.Option(False, "--init-from-teacher", help="start the student's item "
                                                   "embeddings from an SVD projection of the (first) teacher's"),
            d: Optional[int] = typer.Option(None, "--d", "--dim", help="the student's hidden size"),
            blocks: Optional[int] = typer.Option(None),
            heads: Optional[int] = typer.Option(None), dropout: Optional[float] = typer.Option(None),
            maxlen: Optional[int] = typer.Option(None, help="the student's window of recent items "
                                                 "(default and at most: the teacher's)"),
            epochs: int = typer.Option(200), patience: int = typer.Option(10),
            batch_size: int = typer.Option(128), lr: float = typer.Option(2e-3),
            label_smoothing: float = typer.Option(0.0, help="label smoothing of the student's task loss"),
            negatives: Optional[int] = NegativesOpt, sampler: str = SamplerOpt, loss_type: str = LossTypeOpt,
            seed: int = typer.Option(0), store: Path = StoreOpt,
            name: Optional[str] = typer.Option(None, help="artifact name (default: derived from the input)", callback=_name_ok), tensorboard: Optional[Path] = TensorboardOpt,
            resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its checkpoint")):
    """Train a student: cross-entropy + the weighted --loss terms against the teacher(s).

    Example: edgekd distill ml-100k-teacher --loss kl+hint --out models"""
    from .artifact import load_artifact
    from .distill import DistillConfig, distill as run
    from .errors import ConfigError
    from .torch_io import dataset_for

    paths = list(teachers or []) + list(teacher or [])
    if not paths:
        raise ConfigError("name a teacher artifact (edgekd distill TEACHER, or --teacher A --teacher B)")
    ts = [load_artifact(p, store) for p in paths]
    maxlen = maxlen or min(t.card["arch_kwargs"]["maxlen"] for t in ts)
    cfg = DistillConfig(model=model, kd=kd, loss=loss, temperature=temperature, kd_weight=kd_weight,
                        label_smoothing=label_smoothing,
                        mse_weight=mse_weight, rd_weight=rd_weight, rd_k=rd_k, rd_lambda=rd_lambda, rd_mu=rd_mu,
                        rd_warmup=rd_warmup, rrd_weight=rrd_weight, rrd_k=rrd_k, hint_weight=hint_weight,
                        teacher_weights=tuple(teacher_weight) if teacher_weight else None,
                        init_from_teacher=init_from_teacher, online=online, teacher_cache=teacher_cache,
                        cache_positions=cache_positions, d=d,
                        blocks=blocks, heads=heads, dropout=dropout, maxlen=maxlen, epochs=epochs,
                        patience=patience, batch_size=batch_size, lr=lr, seed=seed,
                        negatives=negatives, sampler=sampler, loss_type=loss_type)
    if data or format or synthetic or period:
        if period and not (data or format or synthetic):  # the teacher's data, another period
            from .data import DataSpec

            ds = _load(DataSpec(**{**ts[0].card["dataset"]["spec"], "period": period}), store)
        else:
            ds = _load(_spec(data, format, synthetic, period), store)
    else:
        ds = dataset_for(ts[0])
    with _epochs(f"distill ({loss if kd == 'on' else 'kd off'})", epochs) as progress:
        a = run(ts, ds, cfg, store=store, name=name, progress=progress, resume=resume, tensorboard=tensorboard)
    if a is not None:  # None: a torchrun process other than rank 0
        _done(a)


@app.command()
def export(artifact: Path = typer.Argument(..., help="torch artifact directory (a teacher or student)"),
           target: str = typer.Option(..., "--target", "-t",
                                      help="export FORMAT (edgekd list formats): onnx-fp32 | onnx-int8 | onnx-mobile | "
                                           "tflite-fp32 | tflite-fp16 | tflite-int8 | tflite-dynamic-int8 "
                                           "(not a device: devices are for `bench --target`)"),
           store: Path = StoreOpt, name: Optional[str] = typer.Option(None, help="artifact name (default: derived from the input)", callback=_name_ok),
           topk: Optional[int] = typer.Option(None, "--topk", help="end the graph in top-K: return the K best "
                                              "item indices and their scores instead of a score per item"),
           recipe: Optional[str] = typer.Option(None, "--recipe", help="quantisation recipe for a quantised "
                                                "format (edgekd list recipes)")):
    """Export to ONNX or TFLite; checked for parity with torch before anything is written.

    Example: edgekd export ml-100k-student --target onnx-int8 --out models"""
    from .artifact import load_artifact
    from .export import export as run, get_format

    get_format(target)  # a bad name fails before any loading
    a = run(load_artifact(artifact, store), target, store=store, name=name, topk=topk, recipe=recipe)
    _done(a)


@app.command()
def quantize(artifact: Path = typer.Argument(..., help="torch artifact directory (a student, usually)"),
             target: str = typer.Option("onnx-int8", "--target", "-t",
                                        help="quantised export format: onnx-int8 | onnx-mobile | tflite-int8 | "
                                             "tflite-dynamic-int8 | tflite-fp16"),
             recipe: Optional[list[str]] = typer.Option(None, "--recipe", help="recipe to try (repeatable; "
                                                        "default: all of the format's family; edgekd list recipes)"),
             require_gain: bool = typer.Option(False, "--require-gain", help="fail unless a recipe is smaller, "
                                               "not slower and accurate enough"),
             max_ndcg_drop: float = typer.Option(0.01, help="largest relative NDCG@10 drop accepted"),
             threads: int = typer.Option(1), store: Path = StoreOpt,
             rounds: int = typer.Option(5, "--rounds", help="interleaved timing rounds of fp32 and the recipes (>= 2)")):
    """Try quantisation recipes, measure each beside fp32 (size, local-CPU latency, accuracy), keep the winner.

    Example: edgekd quantize ml-100k-student --target tflite-int8 --require-gain"""
    from .artifact import load_artifact
    from .export.quantize import QuantizeConfig, quantize as run

    cfg = QuantizeConfig(target=target, recipes=tuple(recipe or ()), require_gain=require_gain,
                         max_ndcg_drop=max_ndcg_drop, threads=threads, rounds=rounds)
    r = run(load_artifact(artifact, store), cfg, store=store,
            say=lambda m: console.print(m, highlight=False, markup=False))
    out.print(str(r["report"]))


@app.command()
def prune(artifact: Path = typer.Argument(..., help="torch artifact directory (a student)"),
          method: str = typer.Option("unstructured", help="unstructured: global magnitude (zeros in a dense "
                                     "file); structured: remove attention width, FFN units (and --dims) for a "
                                     "smaller dense model; vocabulary: keep the items that cover --coverage; "
                                     "window: read only the last --window items of a history"),
          sparsity: float = typer.Option(0.5, help="unstructured: share of the weights set to zero; structured: "
                                         "share of the non-embedding parameters removed"),
          dims: float = typer.Option(0.0, help="structured: share of the embedding width d removed too"),
          coverage: float = typer.Option(0.95, help="vocabulary: keep the fewest items covering this share of "
                                         "the training interactions (or of the teacher's mass, --by teacher)"),
          keep_items: Optional[int] = typer.Option(None, help="vocabulary: keep exactly this many items instead"),
          max_bytes: Optional[str] = typer.Option(None, "--max-bytes", help="vocabulary: keep the most items whose "
                                                  "weights fit this size at --budget-precision (e.g. 2MB, 1.5MiB, "
                                                  "500000): a phone's download limit", callback=_bytes_ok),
          budget_precision: str = typer.Option("int8", help="vocabulary: the export precision --max-bytes is "
                                               "for: int8 or fp32"),
          window: Optional[int] = typer.Option(None, help="window: how many of a history's latest items the "
                                               "model reads (less than its maxlen)"),
          by: str = typer.Option("interactions", help="vocabulary: rank items by 'interactions' or 'teacher' "
                                 "(its probability mass on validation users)"),
          unknown: str = typer.Option("skip", help="vocabulary: what the model's input does with a pruned "
                                      "item: 'skip' it (the sequence closes up) or feed the one 'oov' index"),
          recover_epochs: int = typer.Option(0, help="then distil from the teacher this many epochs"),
          recover_from: str = typer.Option("teacher", help="who teaches the recovery: 'teacher', or 'parent' "
                                           "(the unpruned model itself)"),
          lr: float = typer.Option(1e-3, help="recovery learning rate"),
          seed: int = typer.Option(0), store: Path = StoreOpt, name: Optional[str] = typer.Option(None, help="artifact name (default: derived from the input)", callback=_name_ok),
          rounds: int = typer.Option(5, "--rounds", help="interleaved timing rounds against the parent (>= 2)")):
    """Prune a torch model, optionally recovering by distillation from its teacher.

    Example: edgekd prune ml-100k-student --method vocabulary --coverage 0.9 --recover-epochs 5"""
    from .artifact import load_artifact
    from .compress import PruneConfig, prune as run

    cfg = PruneConfig(method=method, sparsity=sparsity, dims=dims, coverage=coverage, keep_items=keep_items,
                      max_bytes=max_bytes, budget_precision=budget_precision, by=by, unknown=unknown, window=window,
                      recover_epochs=recover_epochs, recover_from=recover_from, lr=lr, seed=seed, rounds=rounds)
    a = load_artifact(artifact, store)
    with _epochs("recover (distil)", max(recover_epochs, 1)) as progress:
        p = run(a, cfg, store=store, name=name, progress=progress)
    m = p.metrics
    what = {"unstructured": f"sparsity {m['sparsity']:.3f}",
            "structured": f"non-embedding parameters {m['non_embedding_params']:,} (parent "
                          f"{m['parent_non_embedding_params']:,})",
            "vocabulary": f"{p.card['pruning'].get('items_kept')} of {p.card['pruning'].get('items_before')} items "
                          f"kept" + (f" (weights {b['estimated_bytes']:,} bytes at {b['precision']}, budget "
                                     f"{b['max_bytes']:,})" if (b := p.card['pruning'].get('size_budget')) else ""),
            "window": f"window {p.card['pruning'].get('window')} positions (was {p.card['pruning'].get('window_before')}; "
                      f"reads the last {p.card['pruning'].get('history_items')} history items, "
                      f"{p.card['pruning'].get('test_histories_cut', 0) * 100:.1f}% of test histories are longer)"}[method]
    console.print(f"pruned {p.name}: {what}, test NDCG@10 {m['test_ndcg@10']:.4f} "
                  f"({m['test_ndcg@10_vs_parent'] * 100:.1f}% of the parent), file {m['size']['size_bytes']} bytes "
                  f"(parent {m['size']['parent_size_bytes']}), gzip {m['size']['gzip_bytes']} "
                  f"(parent {m['size']['parent_gzip_bytes']}); {m['size']['note']}", highlight=False)
    lat = m["latency"]
    console.print(f"latency (torch, batch 1, {lat['threads']} thread(s), local CPU): p50 {lat['p50_ms']:.3f} ms, "
                  f"parent {lat['parent_p50_ms']:.3f} ms ({lat['speedup']:.2f}x [{lat['speedup_interval'][0]:.2f}-"
                  f"{lat['speedup_interval'][1]:.2f}] over {len(lat['p50_rounds_ms'])} rounds, {lat['latency_verdict']})"
                  + ("" if lat["not_slower"] else "  WARNING: slower than the parent"), highlight=False)
    out.print(str(p.path))


@list_app.command("recipes")
def list_recipes_cmd(as_json: bool = JsonOpt):
    """Quantisation recipes (for `quantize --recipe` and `export --recipe`)."""
    from .export import list_recipes

    if as_json:
        return _json([{"family": r.family, "name": r.name, "precision": r.precision, "calibrated": r.calibrated,
                       "summary": r.summary} for r in list_recipes()])
    for r in list_recipes():
        out.print(f"{r.family:7} {r.name:20} {'calibrated ' if r.calibrated else ''}{r.summary}")


@app.command()
def inspect(path: Path = typer.Argument(..., help="a .onnx, .tflite or .safetensors file, an artifact directory, "
                                        "or an artifact's name in the store"),
            store: Path = StoreOpt):
    """Print a model file's signature, operators, size and how it is quantised (JSON).

    Example: edgekd inspect ml-100k-student-onnx-int8 --out models"""
    from .artifact import load_artifact
    from .inspection import inspect_path, to_json

    target = path if path.is_file() else load_artifact(path, store).path
    out.print_json(to_json(inspect_path(target)))


@app.command()
def bench(artifacts: list[Path] = typer.Argument(..., help="artifact directories or store names; or plain model "
                                                 "files (.onnx, .ort, .tflite) from anywhere"),
          target: str = typer.Option("local-cpu", "--target", "-t",
                                     help="DEVICE to run on (edgekd list targets), or a path to a target .toml; "
                                          "not an export format"),
          teacher: Optional[Path] = typer.Option(None, help="baseline teacher (default: from lineage)"),
          threads: Optional[int] = typer.Option(None, min=1, help="threads (default: the target's)"),
          users: Optional[int] = typer.Option(None, min=1, help="evaluate on a sample of this many test users"),
          store: Path = StoreOpt, results: Path = ResultsOpt,
          run_id: Optional[str] = typer.Option(None, "--run", help="run directory name (default: a new "
                                               "timestamped one; with --resume, the latest on this target)"),
          resume: bool = typer.Option(False, "--resume", help="keep finished cells of the run and do the rest"),
          allow_local_commands: bool = AllowLocalOpt,
          rounds: int = typer.Option(5, "--rounds", min=1, help="interleaved timing rounds: every file is timed "
                                     "once per round, in turns; p50 is the median over rounds, ratios get an "
                                     "interval"),
          vocab: Optional[Path] = typer.Option(None, "--vocab", help="plain files: the vocab.json the file was "
                                               "trained with; with --data, accuracy is measured too"),
          data: Optional[Path] = typer.Option(None, "--data", help="plain files: the interaction data for accuracy "
                                              "(with --vocab)"),
          format: Optional[str] = FormatOpt,
          as_json: bool = typer.Option(False, "--json", help="print the run directory and its records as JSON")):
    """Benchmark artifacts on a device, each in its own process, against the teacher. A plain
    model file gets latency and memory (accuracy with --vocab and --data).

    Example: edgekd bench ml-100k-student ml-100k-student-onnx-int8 --target pi --out models

    Example: edgekd bench my-model.tflite --target local-cpu"""
    from .bench import PLAIN_SUFFIXES

    tgt = _target(target, allow_local_commands)
    console.print(f"target {tgt.name}: {tgt.source}", highlight=False, markup=False)
    plain = [p for p in artifacts if p.suffix in PLAIN_SUFFIXES and p.is_file()]
    if plain:
        if len(plain) != len(artifacts):
            raise ConfigError("bench either artifacts or plain model files in one run, not both")
        run_dir, recs = _bench_files(plain, tgt, results, threads, users, vocab, data, format, run_id)
    else:
        from .artifact import load_artifact
        from .bench import bench as run

        arts = [load_artifact(p, store) for p in artifacts]
        t = load_artifact(teacher, store) if teacher else None
        run_dir, recs = run(arts, tgt, out=results, teacher=t, threads=threads, users=users,
                            on_result=_print_result, run_id=run_id, resume=resume, rounds=rounds)
    if as_json:
        _json({"run_dir": str(run_dir), "records": recs})
    else:
        out.print(str(run_dir), markup=False, highlight=False)
    failed = [r for r in recs if r["status"] == "failed"]
    if failed:
        raise BenchError(f"{len(failed)} of {len(recs)} cells failed on {tgt.name} (first: {failed[0]['error']}); "
                         f"the rest are in {run_dir}")


def _bench_files(files, tgt, results, threads, users, vocab, data, fmt, run_id):
    from .bench import bench_file, plain_file

    ds = voc = None
    if vocab is not None or data is not None:
        if vocab is None or data is None:
            raise ConfigError("accuracy of a plain file needs both --vocab and --data")
        try:
            voc = json.loads(vocab.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{vocab}: not a readable vocab.json ({e})") from None
        ds = _load(_spec(data, fmt))
    recs, run_dir = [], None
    for f in files:
        run_dir, rec = bench_file(plain_file(f), tgt, out=results, threads=threads, users=users, ds=ds, vocab=voc,
                                  run_id=run_id or (run_dir.name if run_dir else None))
        _print_result(rec)
        recs.append(rec)
    return run_dir, recs


def _speed(iv: dict) -> str:
    from .timing import fmt_interval

    return f"{fmt_interval(iv)} ({iv['verdict']})"


def _print_result(rec: dict):
    if rec["status"] != "ok":
        console.print(f"{rec['status']}: {rec['error']}", highlight=False, markup=False)
        return
    peak = rec.get("peak_rss_bytes")
    acc = f", NDCG@10 {rec['accuracy']['ndcg@10']:.4f}" if rec.get("accuracy") else ""
    console.print(f"bench {rec['artifact']['name']}{' (kept from the earlier run)' if rec.get('resumed') else ''}: "
                  f"p50 {rec['latency_ms']['p50_ms']:.3f} ms"
                  + (f" (rounds {rec['latency_ms']['p50_spread']['min_ms']:.3f}-"
                     f"{rec['latency_ms']['p50_spread']['max_ms']:.3f})" if rec["latency_ms"].get("p50_spread") else "")
                  + (f", {_speed(rec['speedup_vs_teacher'])} vs teacher"
                     if (rec.get("speedup_vs_teacher") or {}).get("verdict", "reference") != "reference" else "")
                  + acc
                  + (f", peak {peak / 1e6:.0f} MB" if peak else ""), highlight=False)


@app.command()
def report(run: Optional[Path] = typer.Argument(None, help="bench run directory (default: the latest)"),
           results: Path = ResultsOpt,
           dest: Optional[Path] = typer.Option(None, "--dest", help="write the report here (default: the run dir)"),
           html: bool = typer.Option(True, "--html/--no-html", help="also write report.html: one self-contained "
                                     "page with a table per target and the charts"),
           as_json: bool = typer.Option(False, "--json", help="print report.json instead of the Markdown table")):
    """Markdown + JSON (+ HTML) report from bench records and artifact cards.

    Example: edgekd report --results benchmarks/results --dest reports/latest"""
    from .bench import latest_run, load_records
    from .report import build_report

    run = run or latest_run(results)
    if any(r.get("status") == "ok" and r.get("accuracy") is None for r in load_records(run)):
        raise ConfigError(f"{run}: plain model files benched without accuracy (no --vocab and --data); "
                          "their latency and memory are the JSON records in that directory")
    r = build_report(run, dest, plot=html)
    if as_json:
        sys.stdout.write(Path(r["json"]).read_text().rstrip("\n") + "\n")
    else:
        out.print(r["text"], markup=False, highlight=False)
    console.print(f"report: {r['markdown']}" + (f"  page: {r['html']}" if r.get("html") else ""), markup=False)


@app.command()
def pipeline(data: Optional[Path] = DataOpt, format: Optional[str] = FormatOpt,
             synthetic: Optional[list[str]] = SynthOpt,
             store: Optional[Path] = typer.Option(None, "--out", help="artifact store directory (default: models)"),
             results: Optional[Path] = typer.Option(None, "--results", help="bench results directory "
                                                    "(default: benchmarks/results)"),
             target: Optional[str] = typer.Option(None, "--target", "-t", help="DEVICE to bench on (edgekd list "
                                                  "targets; default: local-cpu)"),
             formats: Optional[str] = typer.Option(None, "--formats", help="export formats, comma-separated "
                                                   "(default: onnx-fp32,onnx-int8,tflite-fp32,tflite-int8; "
                                                   "tflite ones are skipped when the tflite extra is not installed)"),
             config: Optional[Path] = typer.Option(None, "--config", help="a pipeline recipe (TOML) "
                                                   "holding every setting; each run writes its own as "
                                                   "pipeline.toml in its results directory; options given here "
                                                   "override it"),
             maxlen: Optional[int] = typer.Option(None, help="sequence length (default: 200 for files, "
                                                  "50 for the synthetic default)"),
             epochs: Optional[int] = typer.Option(None, help="at most this many epochs per training "
                                                  "(default: 200 for files, 30 for the synthetic default)"),
             patience: Optional[int] = typer.Option(None, help="early-stopping patience (default: 30 for the "
                                                    "teacher, 10 for the students)"),
             seed: Optional[int] = typer.Option(None, help="random seed (default: 0)"),
             resume: bool = typer.Option(False, "--resume", help="reuse finished artifacts of an earlier "
                                         "run with the same settings and continue interrupted trainings"),
             allow_local_commands: bool = AllowLocalOpt):
    """train -> distill (KD and no-KD) -> export -> bench -> report, in one command.

    Example: edgekd pipeline --data ml-100k/u.data --target pi --formats onnx-int8,tflite-int8

    Example: edgekd pipeline --config benchmarks/results/RUN/pipeline.toml"""
    from .pipeline import PipelineConfig, read_recipe, run_pipeline

    kw = read_recipe(config) if config else {}
    given = {"store": store, "results": results, "target": target, "maxlen": maxlen, "epochs": epochs,
             "patience": patience, "seed": seed,
             "exports": tuple(f.strip() for f in formats.split(",") if f.strip()) if formats else None}
    kw.update({k: v for k, v in given.items() if v is not None})
    if data or format or synthetic:
        kw["data"] = _spec(data, format, synthetic)
    run_pipeline(PipelineConfig(**kw, resume=resume, allow_local_commands=allow_local_commands), console=console, epochs_bar=_epochs, on_result=_print_result)


@app.command()
def serve(artifact: Path = typer.Argument(..., help="artifact to serve (a directory or a name in the store)"),
          store: Path = StoreOpt, host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default)"),
          port: int = typer.Option(8000), workers: int = typer.Option(1, help="worker processes (metrics in "
                                                                      "prometheus-client's multiprocess mode)"),
          threads: int = typer.Option(1, help="runtime threads per worker"),
          target: str = typer.Option("local-cpu", help="bench target whose runtime table picks the runtime"),
          max_batch: int = typer.Option(1, help="dynamic micro-batching: up to this many requests per model "
                                        "call (1: off, the measured default; docs/serving.md)"),
          max_wait_ms: float = typer.Option(0.5, help="micro-batching: wait at most this long for a batch"),
          max_history: int = typer.Option(10000, help="refuse histories longer than this (422)"),
          max_body_kb: int = typer.Option(256, help="refuse request bodies larger than this (413)"),
          reference: bool = typer.Option(False, "--reference", help="compute the drift reference first if the "
                                         "artifact has none (loads its training data)"),
          shadow: Optional[Path] = typer.Option(None, "--shadow", help="teacher artifact to compare with, off "
                                                "the request path"),
          shadow_rate: float = typer.Option(0.05, help="share of requests the shadow teacher sees"),
          admin_token: Optional[str] = typer.Option(None, envvar="EDGEKD_ADMIN_TOKEN", show_envvar=True,
                                                    help="enable POST /admin/reload with this bearer token"),
          echo: bool = typer.Option(False, "--echo-endpoint", hidden=True),
          log_level: str = typer.Option("warning")):
    """Serve an artifact over HTTP: /v1/recommend, /healthz, /readyz, /v1/model, /metrics.

    Example: edgekd serve ml-100k-student-onnx-int8 --shadow ml-100k-teacher --shadow-rate 0.05
    """
    from .extras import require_serve

    require_serve()
    from .serve import config, ensure_reference, serve as run

    if reference:
        ensure_reference(str(artifact), store, say=lambda m: console.print(m, highlight=False, markup=False))
    cfg = config(artifact=str(artifact), store=str(store), threads=threads, target=target, max_batch=max_batch,
                 max_wait_ms=max_wait_ms, max_history=max_history, max_body_bytes=max_body_kb * 1024,
                 shadow=str(shadow) if shadow else None, shadow_rate=shadow_rate, admin_token=admin_token, echo=echo)
    console.print(f"serving {artifact} on http://{host}:{port} ({workers} worker(s)); docs at /docs", highlight=False)
    run(cfg, host=host, port=port, workers=workers, log_level=log_level)


@app.command()
def search(teacher: Path = typer.Argument(..., help="teacher artifact directory (edgekd train)"),
           target: str = typer.Option("local-cpu", "--target", "-t", help="DEVICE every candidate is benched on "
                                      "(edgekd list targets)"),
           min_kept: float = typer.Option(0.95, "--min-kept", help="budget: the share of the teacher's VALIDATION "
                                          "NDCG@10 a candidate must keep"),
           confidence: float = typer.Option(0.9, "--confidence", help="the budget holds for kept's lower bound at "
                                            "this one-sided confidence (paired bootstrap over validation users); "
                                            "0: for the point figure"),
           objective: str = typer.Option("p50", "--objective", help="what to minimise on the target: p50 "
                                         "(latency at batch 1), size (file) or memory (peak RSS)"),
           trials: int = typer.Option(20, "--trials", help="finished trials (completed or pruned) to reach; "
                                      "a resumed search counts those already done"),
           timeout: Optional[float] = typer.Option(None, "--timeout", help="stop starting trials after this many seconds"),
           space: Optional[Path] = typer.Option(None, "--space", help="search space TOML (sections student, distill, "
                                                "prune, export, train, pruner replace the defaults)"),
           sampler: str = typer.Option("tpe", "--sampler", help="tpe (multi-objective TPE), nsga2 or random"),
           min_speedup: Optional[float] = typer.Option(None, "--min-speedup", help="a cap beside the budget: the "
                                                       "chosen model is at least this many times faster (p50) than "
                                                       "the teacher on the target"),
           min_smaller: Optional[float] = typer.Option(None, "--min-smaller", help="a cap beside the budget: the "
                                                       "chosen model's file is at least this many times smaller "
                                                       "than the teacher's"),
           seed: int = typer.Option(0), store: Path = StoreOpt,
           results: Optional[Path] = typer.Option(None, "--results", help="run directory: search.db, bench "
                                                  "records, trials.json, the front (default: "
                                                  "benchmarks/results/search-<teacher>)"),
           allow_local_commands: bool = AllowLocalOpt):
    """Search students, losses, pruning and export recipes for the best model on a device under an accuracy budget.

    Example: edgekd search ml-100k-teacher --target local-cpu --min-kept 0.95 --min-speedup 50 --min-smaller 20
    """
    from .artifact import load_artifact
    from .search import SearchConfig, load_space
    from .search import search as run

    t = load_artifact(teacher, store)
    cfg = SearchConfig(target=target, min_kept=min_kept, confidence=confidence, objective=objective, trials=trials, timeout=timeout,
                       sampler=sampler, seed=seed, space=load_space(space), min_speedup=min_speedup,
                       min_smaller=min_smaller)
    run_dir = results or Path("benchmarks/results") / f"search-{t.name}"
    run(t, cfg, _target(target, allow_local_commands), store=store, run_dir=run_dir,
        say=lambda m: console.print(m, highlight=False, markup=False), console=out)
    out.print(str(run_dir))


def _done(a):
    m = a.card.get("metrics", {})
    bits = [f"{k} {m[k]:.4f}" for k in ("test_ndcg@10", "test_hr@10", "test_top10_overlap") if k in m]
    if "parity" in m and "top10_overlap" in m["parity"]:
        p = m["parity"]
        bits.append(f"parity: top-10 overlap {p['top10_overlap']:.4f}, max abs diff {p['max_abs_diff']:.2e}, "
                    f"valid NDCG@10 change {p['ndcg@10_rel_change'] * 100:+.2f}%")
    console.print(f"{a.card['stage']} {a.name}: " + ", ".join(bits) + f" ({a.card['size_bytes']} bytes)")
    out.print(str(a.path))


RESUMABLE = {"train", "distill", "bench", "pipeline"}


def _interrupted() -> None:
    """One line on Ctrl-C: what was interrupted and how to go on."""
    args = sys.argv[1:]
    cmd = next((a for a in args if not a.startswith("-")), "edgekd")
    if cmd in RESUMABLE:
        again = "edgekd " + " ".join(args) + ("" if "--resume" in args else " --resume")
        console.print(f"interrupted: {cmd}; finished artifacts, bench records and the last epoch's checkpoint "
                      f"are kept; to continue: {escape(again)}", highlight=False, soft_wrap=True)
    else:
        console.print(f"interrupted: {cmd}; nothing half-written was kept (artifacts are written whole or not "
                      "at all); run it again", highlight=False, soft_wrap=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from .errors import EdgeKDWarning

    if issubclass(category, EdgeKDWarning):
        console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main() -> None:
    debug = bool(os.environ.get("EDGEKD_DEBUG"))
    warnings.showwarning = _show_warning
    try:
        rc = app(standalone_mode=False)
        if rc == 130:  # typer turns Ctrl-C into Exit(130) before it reaches the handler below
            _interrupted()
        sys.exit(rc if isinstance(rc, int) else 0)
    except NO_ARGS:  # help was printed
        sys.exit(0)
    except USAGE_ERRORS as e:
        cmd = e.ctx.command_path if e.ctx else "edgekd"
        console.print(f"[red]error:[/red] {escape(e.format_message())} (see `{cmd} --help`)", highlight=False)
        sys.exit(2)
    except ABORT:
        _interrupted()
        sys.exit(130)
    except EdgeKDError as e:
        if debug:
            raise
        hint = f"; {e.hint}" if e.hint else ""
        console.print(f"[red]error:[/red] {escape(str(e) + hint)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _interrupted()
        sys.exit(130)
    except Exception as e:  # a bug or an unexpected library failure: one line, traceback on request
        if debug:
            raise
        console.print(f"[red]error:[/red] {escape(f'{type(e).__name__}: {e}')} (EDGEKD_DEBUG=1 shows the traceback)",
                      highlight=False, soft_wrap=True)
        sys.exit(1)
