"""`edgekd search`: find the best model for a device under an accuracy budget, automatically.

A multi-objective Optuna study over the whole chain, each trial one candidate:

    student (model, width) -> distillation loss -> pruning -> export format and recipe
    -> bench on the target

with two objectives, validation NDCG@10 kept relative to the teacher (maximised) and one cost
on the target (p50 latency at batch 1, file size or peak memory; minimised), and the budget
(kept >= min_kept) as an Optuna constraint, with optional caps beside it (min_speedup,
min_smaller: so many times faster and smaller than the teacher on the target), which the chosen
model meets too. The budget is on VALIDATION NDCG@10 only; the
chosen model's test figures are read once, at the end.

"kept" is the candidate's validation NDCG@10 over the teacher's on the same users. Chosen from
many candidates by that one noisy figure, the winner's is optimistic (a few hundred users move
it by points), so by default the budget applies to its lower confidence bound: kept_low, the
(1 - confidence) quantile of a paired bootstrap over the validation users (each resample scores
teacher and candidate on the same users). `confidence` 0 uses the point figure.

Work is reused: a student is trained once per training setting (its artifact name carries a
key of those settings and the store is looked up first), so every pruning, format and recipe
tried on it starts from the same file; pruned and exported artifacts are reused the same way,
and the bench run of the search keeps the teacher's and every file's record.

The study lives in SQLite in the run directory under a fixed name, so an interrupted search
(Ctrl-C, kill -9) resumes: the run directory is locked by the running process, so a trial
still RUNNING when a new process takes the lock was left by a dead one and is marked FAIL
(it does not count), and the search goes on until --trials trials have finished.

Student trainings are trials of single-objective studies in the same storage, one per student
model, that report validation NDCG@10 every epoch to an Optuna pruner (Optuna's multi-objective
trials cannot report intermediate values): a training clearly worse than the others of its
model at the same epoch stops, and the search trial that asked for it ends PRUNED.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .artifact import DEFAULT_STORE, Artifact, load_artifact, load_parent, path_lock, write_json
from .distill import DistillConfig
from .errors import ArtifactError, ConfigError, EdgeKDError
from .extras import REPORT_HINT, charts_available

STUDY = "edgekd-search"
STUDENTS = STUDY + ".students"
OBJECTIVES = {"p50": ("latency p50 ms", "p50_ms"), "size": ("size bytes", "size_bytes"),
              "memory": ("peak memory bytes", "peak_rss_bytes")}
SAMPLERS = ("tpe", "nsga2", "random")
PARITY_USERS = 1000  # export parity's validation users: the teacher is scored on the same ones
BOOTSTRAP = 2000     # paired bootstrap resamples for kept_low
INTERVAL = 0.9       # the two-sided interval reported with the chosen model's test share
BENCH_RUN = "bench"

DEFAULT_SPACE: dict = {
    "student": {
        "models": ["sasrec-student", "gru4rec", "mlp"],
        "sasrec-student": {"d": [8, 16, 32], "blocks": [1, 2]},
        "gru4rec": {"d": [16, 32]},
        "mlp": {"d": [16, 32], "layers": ["64-32"], "pool": ["mean", "weighted"]},
    },
    "distill": {"loss": ["none", "kl", "rd", "rrd", "kl+rd"]},
    "prune": {"methods": ["none", "structured", "vocabulary"], "sparsity": [0.25, 0.5],
              "coverage": [0.9, 0.95, 0.99], "max_bytes": [], "unknown": ["skip"], "recover_epochs": 0},
    "export": {"formats": ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]},
    "train": {"epochs": 30, "patience": 5, "lr": 2e-3, "batch_size": 128},
    "pruner": {"percentile": 25.0, "startup": 3, "warmup": 2},
}
ARCH_KEYS = ("d", "blocks", "heads", "layers", "pool", "dropout")


# ---------------------------------------------------------------- the search space

def load_space(path: Path | None = None) -> dict:
    """The default space, with the sections and keys of a TOML file in place of the defaults."""
    import tomllib

    space = copy.deepcopy(DEFAULT_SPACE)
    if path is not None:
        try:
            given = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--space {path}: cannot read it ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--space {path}: not valid TOML ({e})") from None
        for section, values in given.items():
            if section not in space or not isinstance(values, dict):
                raise ConfigError(f"--space {path}: unknown section [{section}]; sections: {', '.join(space)}")
            if section == "student":  # the models listed, each with its own options or the defaults
                models = values.get("models", space["student"]["models"])
                space["student"] = {"models": models, **{m: space["student"].get(m, {}) for m in models
                                                         if isinstance(m, str)}}
            for key, v in values.items():
                if section != "student" and key not in space[section]:
                    raise ConfigError(f"--space {path}: unknown key {key!r} in [{section}]; "
                                      f"keys: {', '.join(space[section])}")
                space[section][key] = v
    check_space(space)
    return space


def _choices(space: dict, where: str, values) -> list:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"search space {where}: needs a non-empty list of choices, got {values!r}")
    for v in values:
        if not isinstance(v, (int, float, str, bool)):
            raise ConfigError(f"search space {where}: choices are numbers or strings, got {v!r}")
    return values


def check_space(space: dict) -> None:
    from .compress import parse_bytes
    from .export import get_format, get_recipe
    from .kd_losses import parse_losses
    from .models import create_model, model_kwargs

    st = space["student"]
    for m in _choices(space, "student.models", st.get("models")):
        model_kwargs(m)  # unknown model: ConfigError naming the registered ones
        sub = st.get(m, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"search space student.{m}: a table of options, got {sub!r}")
        for key, values in sub.items():
            if key not in ARCH_KEYS:
                raise ConfigError(f"search space student.{m}: unknown option {key!r}; options: {', '.join(ARCH_KEYS)}")
            for v in _choices(space, f"student.{m}.{key}", values):  # each choice builds
                create_model(m, num_items=2, maxlen=2, **{key: _arch_value(key, v)})
    for k in st:
        if k != "models" and k not in st["models"]:
            raise ConfigError(f"search space [student] has options for {k!r}, which is not in student.models")
    for loss in _choices(space, "distill.loss", space["distill"]["loss"]):
        if loss != "none":
            parse_losses(loss)
    pr = space["prune"]
    for m in _choices(space, "prune.methods", pr["methods"]):
        if m not in ("none", "structured", "vocabulary"):
            raise ConfigError(f"search space prune.methods: {m!r} is not none, structured or vocabulary")
    for s in _choices(space, "prune.sparsity", pr["sparsity"]):
        if not 0 < float(s) < 1:
            raise ConfigError(f"search space prune.sparsity: {s} is not in (0, 1)")
    # vocabulary pruning keeps the items covering a share of the interactions, or the most that
    # fit a byte budget (an app's download limit); either list may be empty, not both
    if not isinstance(pr["max_bytes"], list) or not isinstance(pr["coverage"], list) \
            or not (pr["coverage"] or pr["max_bytes"]):
        raise ConfigError("search space prune.coverage and prune.max_bytes: lists of choices, at least one "
                          f"non-empty, got {pr['coverage']!r} and {pr['max_bytes']!r}")
    for c in _choices(space, "prune.coverage", pr["coverage"]) if pr["coverage"] else []:
        if not 0 < float(c) <= 1:
            raise ConfigError(f"search space prune.coverage: {c} is not in (0, 1]")
    for b in _choices(space, "prune.max_bytes", pr["max_bytes"]) if pr["max_bytes"] else []:
        try:
            parse_bytes(b)
        except ConfigError as e:
            raise ConfigError(f"search space prune.max_bytes: {e}") from None
    for u in _choices(space, "prune.unknown", pr["unknown"]):
        if u not in ("skip", "oov"):
            raise ConfigError(f"search space prune.unknown: {u!r} is not skip or oov")
    for f in _choices(space, "export.formats", space["export"]["formats"]):
        fmt, _, recipe = str(f).partition(":")
        spec = get_format(fmt)
        if recipe:
            if not spec.family or not spec.recipe:
                raise ConfigError(f"search space export.formats: {fmt} takes no recipe ({f!r})")
            get_recipe(spec.family, recipe)
    tr = space["train"]
    for k in ("epochs", "patience", "batch_size"):
        if not isinstance(tr[k], int) or tr[k] < 1:
            raise ConfigError(f"search space train.{k}: an integer >= 1, got {tr[k]!r}")
    if not float(space["pruner"]["percentile"]) > 0:
        raise ConfigError("search space pruner.percentile must be > 0")


def _arch_value(key: str, v):
    """Choices are TOML scalars; an MLP's layers are written "64-32"."""
    if key == "layers":
        try:
            return [int(w) for w in str(v).split("-")]
        except ValueError:
            raise ConfigError(f"search space layers: {v!r} is not widths joined by '-' (like \"64-32\")") from None
    return v


def _structured_ok(model: str) -> bool:
    from .models import SASRec, create_model

    return isinstance(create_model(model, num_items=2, maxlen=2), SASRec)


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class SearchConfig:
    target: str = "local-cpu"
    min_kept: float = 0.95
    confidence: float = 0.9      # the budget applies to kept's lower bound at this confidence (0: to kept)
    objective: str = "p50"
    # optional caps beside the accuracy budget: at least this many times faster (p50) and
    # smaller (file size) than the teacher on the target, as constraints the chosen model meets
    min_speedup: float | None = None
    min_smaller: float | None = None
    trials: int = 20
    timeout: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    space: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_SPACE))

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if not 0 < self.min_kept <= 2:
            raise ConfigError(f"--min-kept is a share of the teacher's validation NDCG@10 (0.95: 95%), got {self.min_kept}")
        if not 0 <= self.confidence < 1:
            raise ConfigError(f"--confidence is the budget's one-sided confidence (0.9), or 0 for the point "
                              f"figure, got {self.confidence}")
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        for flag, v in (("--min-speedup", self.min_speedup), ("--min-smaller", self.min_smaller)):
            if v is not None and not (v > 0 and v < float("inf")):
                raise ConfigError(f"{flag} is a ratio against the teacher (50: 50x), got {v}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"--timeout must be > 0 seconds, got {self.timeout}")

    def identity(self, teacher: Artifact, target_name: str) -> dict:
        """What a resumed search must share with the one that made the run directory."""
        caps = {k: v for k, v in (("min_speedup", self.min_speedup), ("min_smaller", self.min_smaller)) if v is not None}
        if self.confidence:  # (searches made before the bound existed resume with --confidence 0)
            caps["confidence"] = self.confidence
        space = copy.deepcopy(self.space)
        if not space["prune"].get("max_bytes", True):  # (searches made before prune.max_bytes resume)
            del space["prune"]["max_bytes"]
        return {"teacher": teacher.sha256, "target": target_name, "min_kept": self.min_kept,
                "objective": self.objective, "sampler": self.sampler, "seed": self.seed, "space": space, **caps}

    @property
    def kept_key(self) -> str:
        """The trial figure the budget applies to."""
        return "kept_low" if self.confidence else "kept"

    def violations(self, attrs: dict) -> list[float]:
        """How far a trial is from each constraint, relative to it (<= 0: met): the accuracy
        budget, then each cap that is set. A trial without figures (failed, pruned) misses all."""
        out = [(self.min_kept - float(attrs.get(self.kept_key, 0.0))) / self.min_kept]
        for cap, key in ((self.min_speedup, "speedup_p50"), (self.min_smaller, "size_ratio")):
            if cap is not None:
                out.append((cap - float(attrs.get(key) or 0.0)) / cap)
        return out

    def feasible(self, attrs: dict) -> bool:
        return all(v <= 0 for v in self.violations(attrs))

    def missed(self, attrs: dict) -> list[str]:
        """The constraints a trial misses, by name, in violations' order."""
        names = ["kept bound" if self.confidence else "kept"] + (["speed-up"] if self.min_speedup is not None else []) \
            + (["size"] if self.min_smaller is not None else [])
        return [n for n, v in zip(names, self.violations(attrs)) if v > 0]

    def constraints_text(self) -> str:
        bound = f" (lower {self.confidence:.0%} bound)" if self.confidence else ""
        return ", ".join([f"{self.min_kept:.0%} of the teacher's validation NDCG@10{bound}"]
                         + ([f"{self.min_speedup:g}x faster"] if self.min_speedup is not None else [])
                         + ([f"{self.min_smaller:g}x smaller"] if self.min_smaller is not None else []))


@dataclass(frozen=True)
class SearchDistillConfig(DistillConfig):
    """A student's training settings, with model options DistillConfig has no field for (an
    MLP's layers and pooling), so they go into the artifact's arch_kwargs and its card."""

    arch_options: tuple = ()

    def arch_kwargs(self, num_items: int) -> dict:
        return {**super().arch_kwargs(num_items), **dict(self.arch_options)}


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _reuse(store: Path, name: str, check: Callable[[Artifact], bool]) -> Artifact | None:
    try:
        a = load_artifact(Path(store) / name)
    except ArtifactError:
        return None
    return a if check(a) else None


# ---------------------------------------------------------------- the run

def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("edgekd search needs Optuna", hint="pip install 'edgekd[search]'") from None
    return optuna


class Search:
    def __init__(self, teacher: Artifact, cfg: SearchConfig, target, *, store: Path = DEFAULT_STORE,
                 run_dir: Path, say: Callable[[str], None] = print):
        from .evaluation import evaluate_model
        from .metrics import ndcg_gains
        from .torch_io import dataset_for, load_torch_model

        optuna = require_optuna()
        self.teacher, self.cfg, self.target, self.store, self.say = teacher, cfg, target, Path(store), say
        self.run_dir = Path(run_dir)
        if teacher.card.get("stage") != "teacher" or teacher.format != "torch":
            raise ConfigError(f"{teacher.path}: search takes a torch teacher artifact (edgekd train)")
        self.ds = dataset_for(teacher)
        self.space = cfg.space
        self.maxlen = int(teacher.card["arch_kwargs"]["maxlen"])
        t = load_torch_model(teacher)
        ranks: list = []
        self.teacher_valid = evaluate_model(t, self.ds, "valid", sampled=False, users=PARITY_USERS,
                                            ranks=ranks)[0]["ndcg@10"]
        self.teacher_gains = ndcg_gains(ranks)
        self._datasets: dict = {}
        if not self.teacher_valid > 0:
            raise ConfigError(f"{teacher.name}: validation NDCG@10 is {self.teacher_valid}; nothing to keep a share of")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = f"sqlite:///{(self.run_dir / 'search.db').resolve()}"

    # -- studies

    def _sampler(self, seed: int | None = None):
        import optuna

        def constraint(ft) -> list[float]:
            return self.cfg.violations(ft.user_attrs)

        seed = self.cfg.seed if seed is None else seed
        if self.cfg.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.cfg.sampler == "nsga2":
            pop = max(4, min(50, self.cfg.trials // 4))
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop, constraints_func=constraint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, self.cfg.trials // 3)),
                                              multivariate=True, group=True, constraints_func=constraint)

    def open(self):
        import optuna

        self.study = optuna.create_study(storage=self.storage, study_name=STUDY, sampler=self._sampler(),
                                         directions=["maximize", "minimize"], load_if_exists=True)
        ident = json.loads(json.dumps(self.cfg.identity(self.teacher, self.target.name), default=str))
        had = self.study.user_attrs.get("identity")
        if had is None:
            self.study.set_user_attr("identity", ident)
            self.study.set_user_attr("teacher_valid_ndcg@10", self.teacher_valid)
        elif had != ident:
            diff = sorted(k for k in ident if had.get(k) != ident[k])
            raise ConfigError(f"{self.run_dir}: holds a search with other settings ({', '.join(diff)})",
                              hint="use another --results directory, or the same settings to resume it")
        # A resumed search draws on from where it stopped, not again from the seed's first draws
        # (which would repeat the candidates of its first trials): the seed plus the trials so far.
        n = len(self.study.get_trials(deepcopy=False))
        if n:
            self.study.sampler = self._sampler(self.cfg.seed + n)
        self._families: dict = {}
        self.abandoned = self._fail_abandoned()

    def students(self, model: str):
        """The student trainings of one model family, in a study of their own, so that the pruner
        compares a training with its own kind only: an MLP student learns faster in its first
        epochs than a SASRec one, and one pruner over both stopped nearly every SASRec student."""
        import optuna

        if model not in self._families:
            p = self.space["pruner"]
            self._families[model] = optuna.create_study(
                storage=self.storage, study_name=f"{STUDENTS}.{model}", direction="maximize", load_if_exists=True,
                pruner=optuna.pruners.PercentilePruner(float(p["percentile"]), n_startup_trials=int(p["startup"]),
                                                       n_warmup_steps=int(p["warmup"])))
        return self._families[model]

    def _fail_abandoned(self) -> int:
        """Trials left RUNNING by a process that died (we hold the run directory's lock, so no
        live process runs them): FAIL, so they do not count and are not resumed as finished."""
        import optuna
        from optuna.trial import TrialState

        n = 0
        studies = [self.study] + [optuna.load_study(study_name=name, storage=self.storage)
                                  for name in optuna.get_all_study_names(self.storage) if name.startswith(STUDENTS)]
        for study in studies:
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study._storage.set_trial_user_attr(t._trial_id, "failed", "its process ended while it ran")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                n += 1
        return n

    def finished(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    # -- one candidate

    def _student(self, trial, model: str, arch: dict, loss: str) -> Artifact:
        import optuna

        from .distill import distill
        from .train import checkpoint_path

        tr = self.space["train"]
        cfg = SearchDistillConfig(
            model=model, maxlen=self.maxlen, epochs=int(tr["epochs"]), patience=int(tr["patience"]),
            lr=float(tr["lr"]), batch_size=int(tr["batch_size"]), seed=self.cfg.seed,
            kd="off" if loss == "none" else "on", loss="kl" if loss == "none" else loss,
            **{k: v for k, v in arch.items() if k in ("d", "blocks", "heads", "dropout")},
            arch_options=tuple(sorted((k, v) for k, v in arch.items() if k in ("layers", "pool"))))
        # as the card stores it: with the loss decided for this catalogue, tuples as lists
        settings = json.loads(json.dumps(cfg.resolved(self.ds.num_items).to_dict()))
        key = _key({"teacher": self.teacher.sha256, "data": self.ds.fingerprint(), "distill": settings})
        name = f"search-{model}-{key}"
        trial.set_user_attr("student", name)
        a = _reuse(self.store, name, lambda a: a.card.get("config", {}).get("distill") == settings
                   and a.card["parent"][0]["sha256"] == self.teacher.sha256)
        if a is not None:
            trial.set_user_attr("student_reused", True)
            return a
        from optuna.trial import TrialState

        family = self.students(model)
        for t in family.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
            if t.user_attrs.get("key") == key:
                trial.set_user_attr("pruned", f"student {name} stopped early in an earlier trial")
                raise optuna.TrialPruned()
        st = family.ask()
        st.set_user_attr("key", key)
        st.set_user_attr("name", name)
        st.set_user_attr("search_trial", trial.number)

        def progress(row: dict) -> None:
            st.report(float(row["valid_ndcg@10"]), int(row["epoch"]))
            if st.should_prune():
                raise optuna.TrialPruned(f"validation NDCG@10 {row['valid_ndcg@10']:.4f} at epoch {row['epoch']}")

        try:
            # resume: a training interrupted with its trial (kill -9) goes on from its last epoch
            a = distill(self.teacher, self.ds, cfg, store=self.store, name=name, progress=progress, resume=True)
        except optuna.TrialPruned:
            family.tell(st, state=TrialState.PRUNED)
            checkpoint_path(self.store, name).unlink(missing_ok=True)
            trial.set_user_attr("pruned", f"student {name} stopped early: worse than the others at the same epoch")
            raise
        except BaseException:
            family.tell(st, state=TrialState.FAIL)
            raise
        family.tell(st, float(a.metrics["best_valid_ndcg@10"]))
        trial.set_user_attr("student_reused", False)
        return a

    def _prune(self, trial, a: Artifact, method: str, model: str) -> Artifact:
        from .compress import PruneConfig, parse_bytes, prune

        if method == "none":
            return a
        pr = self.space["prune"]
        if method == "structured":
            cfg = PruneConfig(method="structured", sparsity=float(trial.suggest_categorical(
                "prune.sparsity", pr["sparsity"])), recover_epochs=int(pr["recover_epochs"]), seed=self.cfg.seed)
        else:
            by = ("coverage" if pr["coverage"] else "max_bytes") if not (pr["coverage"] and pr["max_bytes"]) \
                else trial.suggest_categorical("prune.by", ["coverage", "max_bytes"])
            amount = ({"coverage": float(trial.suggest_categorical("prune.coverage", pr["coverage"]))} if by == "coverage"
                      else {"max_bytes": parse_bytes(trial.suggest_categorical("prune.max_bytes", pr["max_bytes"]))})
            cfg = PruneConfig(method="vocabulary", **amount, unknown=trial.suggest_categorical(
                "prune.unknown", pr["unknown"]), recover_epochs=int(pr["recover_epochs"]), seed=self.cfg.seed)
        name = f"{a.name}-{cfg.default_suffix()}" + ("-oov" if method == "vocabulary" and cfg.unknown == "oov" else "")
        if pr["recover_epochs"]:
            name += f"-r{pr['recover_epochs']}"
        settings = json.loads(json.dumps(cfg.to_dict()))
        got = _reuse(self.store, name, lambda p: p.card.get("config", {}).get("prune") == settings
                     and p.card["parent"][0]["sha256"] == a.sha256)
        return got or prune(a, cfg, store=self.store, name=name)

    def _export(self, a: Artifact, fmt_choice: str) -> Artifact:
        from .export import export

        fmt, _, recipe = fmt_choice.partition(":")
        name = f"{a.name}-{fmt}" + (f"-{recipe}" if recipe else "")
        got = _reuse(self.store, name, lambda e: e.card["parent"][0]["sha256"] == a.sha256
                     and e.card.get("format") == fmt and (not recipe or e.card.get("recipe") == recipe))
        return got or export(a, fmt, store=self.store, name=name, recipe=recipe or None, parity_users=PARITY_USERS)

    def _bench(self, a: Artifact) -> dict:
        from .bench import bench

        _, recs = bench([a], self.target, out=self.run_dir, teacher=self.teacher, run_id=BENCH_RUN, resume=True)
        rec = next(r for r in recs if r["artifact"]["sha256"] == a.sha256)
        if rec["status"] != "ok":
            raise EdgeKDError(f"bench of {a.name} on {self.target.name} {rec['status']}: {rec.get('error')}")
        return rec

    def _gains(self, a: Artifact, split: str = "valid", users: int | None = PARITY_USERS) -> "np.ndarray":
        """The exported file's NDCG@10 per user of `split` (validation: the users the teacher's
        were on), on its own dataset (a pruned vocabulary keeps every user)."""
        from .torch_io import dataset_for

        # keyed by the spec, not the fingerprint: `unknown_items` changes the inputs only
        key = json.dumps(a.card["dataset"]["spec"], sort_keys=True)
        if key not in self._datasets:
            self._datasets[key] = dataset_for(a)
        ds = self._datasets[key]
        if ds.users != self.ds.users:
            raise EdgeKDError(f"{a.name}: its dataset's users are not the teacher's; kept cannot be paired by user")
        return per_user_ndcg(a, ds, split, users)

    def objective(self, trial) -> tuple[float, float]:
        trial.set_user_attr("pid", os.getpid())
        sp = self.space
        model = trial.suggest_categorical("student", sp["student"]["models"])
        arch = {k: _arch_value(k, trial.suggest_categorical(f"{model}.{k}", v))
                for k, v in sp["student"].get(model, {}).items()}
        loss = trial.suggest_categorical("kd_loss", sp["distill"]["loss"])
        methods = [m for m in sp["prune"]["methods"] if m != "structured" or _structured_ok(model)]
        method = trial.suggest_categorical(f"{model}.prune", methods)
        fmt = trial.suggest_categorical("export", sp["export"]["formats"])
        t0 = time.perf_counter()
        try:
            student = self._student(trial, model, arch, loss)
            pruned = self._prune(trial, student, method, model)
            exported = self._export(pruned, fmt)
            rec = self._bench(exported)
            valid = float(exported.metrics["parity"]["ndcg@10"])
            kept_low = None
            if self.cfg.confidence:
                gains = self._gains(exported)
                if abs(float(gains.mean()) - valid) > 1e-6:  # the same users and file as the export's parity
                    raise EdgeKDError(f"{exported.name}: per-user validation NDCG@10 averages {gains.mean():.6f}, "
                                      f"its parity says {valid:.6f}")
                kept_low = paired_ratio_bound(gains, self.teacher_gains, self.cfg.confidence, seed=self.cfg.seed)
        except EdgeKDError as e:
            trial.set_user_attr("error", str(e))
            raise
        base = self._teacher_record()
        figures = {
            "kept": valid / self.teacher_valid, "kept_low": kept_low, "confidence": self.cfg.confidence or None,
            "valid_ndcg@10": valid, "teacher_valid_ndcg@10": self.teacher_valid,
            "p50_ms": rec["latency_ms"]["p50_ms"], "size_bytes": rec["size_bytes"],
            "peak_rss_bytes": rec["peak_rss_bytes"], "model_rss_bytes": rec.get("model_rss_bytes"),
            "speedup_p50": base["latency_ms"]["p50_ms"] / rec["latency_ms"]["p50_ms"],
            "size_ratio": base["size_bytes"] / rec["size_bytes"],
            "artifact": exported.name, "artifact_path": str(exported.path), "sha256": exported.sha256,
            "chain": [student.name] + ([pruned.name] if pruned is not student else []) + [exported.name],
            "params": exported.card.get("params"), "seconds": time.perf_counter() - t0,
        }
        for k, v in figures.items():
            trial.set_user_attr(k, v)
        low = f" (>= {kept_low:.1%} at {self.cfg.confidence:.0%})" if kept_low is not None else ""
        self.say(f"trial {trial.number}: {describe(trial.params)}: kept {figures['kept']:.1%}{low} of the teacher's "
                 f"valid NDCG@10, p50 {figures['p50_ms']:.3f} ms ({figures['speedup_p50']:.1f}x), "
                 f"{figures['size_bytes'] / 1024:.0f} KiB ({figures['size_ratio']:.1f}x smaller)")
        return figures["kept"], float(figures[OBJECTIVES[self.cfg.objective][1]])

    def _teacher_record(self) -> dict:
        from .bench import load_records

        for r in load_records(self.run_dir / BENCH_RUN):
            if r["artifact"]["sha256"] == self.teacher.sha256 and r["status"] == "ok":
                return r
        raise EdgeKDError(f"the teacher's bench record on {self.target.name} is missing from {self.run_dir}")

    # -- the loop

    def run(self) -> None:
        import optuna
        from optuna.trial import TrialState

        deadline = time.monotonic() + self.cfg.timeout if self.cfg.timeout else None
        done = self.finished()
        if done or self.abandoned:
            self.say(f"resuming {self.run_dir}: {done} of {self.cfg.trials} trials finished"
                     + (f", {self.abandoned} left running by a dead process marked failed" if self.abandoned else ""))
        attempts = 0
        while self.finished() < self.cfg.trials and attempts < 3 * self.cfg.trials:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.say(f"--timeout reached: {self.finished()} of {self.cfg.trials} trials finished")
                break
            self.study.optimize(self.objective, n_trials=1, timeout=left, catch=(EdgeKDError,),
                                callbacks=[optuna.study.MaxTrialsCallback(
                                    self.cfg.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])
            last = self.study.get_trials(deepcopy=False)[-1]
            if last.state == TrialState.PRUNED:
                self.say(f"trial {last.number}: {describe(last.params)}: pruned ({last.user_attrs.get('pruned', '')})")
            elif last.state == TrialState.FAIL:
                self.say(f"trial {last.number}: {describe(last.params)}: failed: {last.user_attrs.get('error')}")
            attempts += 1
        if self.finished() < self.cfg.trials and attempts >= 3 * self.cfg.trials:
            self.say(f"stopped after {attempts} attempts: too many trials failed")


def per_user_ndcg(a: Artifact, ds, split: str, users: int | None = None) -> "np.ndarray":
    """NDCG@10 per user of `split` (full ranking, seen items excluded; a fixed sample of `users`,
    all by default): a torch artifact scored in torch, an exported file by its own outputs."""
    from .metrics import ndcg_gains

    ranks: list = []
    if a.format == "torch":
        from .evaluation import evaluate_model
        from .torch_io import load_torch_model

        evaluate_model(load_torch_model(a), ds, split, sampled=False, users=users, ranks=ranks)
    else:
        from .device_runner import load_model, run_batched
        from .evaluation import eval_inputs
        from .metrics import evaluate_scores

        x, targets, hist = eval_inputs(ds, split, int(a.card["arch_kwargs"]["maxlen"]), users)
        m = load_model(str(a.file), "auto", threads=1)
        evaluate_scores(lambda b: run_batched(m, b), x, targets, hist, sampled=False, never=ds.oov_index,
                        num_items=ds.num_items, ranks=ranks)
    return ndcg_gains(ranks)


def _paired_ratios(student, teacher, seed: int, resamples: int) -> "np.ndarray":
    """sum(student) / sum(teacher) over users in each of `resamples` paired bootstrap resamples:
    each draws users with replacement and keeps both figures of each."""
    import numpy as np

    s, t = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    if s.shape != t.shape or not len(s):
        raise ValueError(f"paired figures of different users: {s.shape} and {t.shape}")
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, resamples, 250):  # [250, users] index draws at a time
        idx = rng.integers(0, len(s), size=(min(250, resamples - start), len(s)))
        ratios.append(s[idx].sum(1) / np.maximum(t[idx].sum(1), 1e-12))
    return np.concatenate(ratios)


def paired_ratio_bound(student: "np.ndarray", teacher: "np.ndarray", confidence: float, seed: int = 0,
                       resamples: int = BOOTSTRAP) -> float:
    """Lower one-sided bound at `confidence` of sum(student) / sum(teacher) over users, by a
    paired bootstrap."""
    import numpy as np

    return float(np.quantile(_paired_ratios(student, teacher, seed, resamples), 1.0 - confidence))


def paired_ratio_interval(student: "np.ndarray", teacher: "np.ndarray", confidence: float = 0.9, seed: int = 0,
                          resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """Two-sided interval at `confidence` of the same ratio: how far the users alone move it."""
    import numpy as np

    r = _paired_ratios(student, teacher, seed, resamples)
    tail = (1.0 - confidence) / 2
    return float(np.quantile(r, tail)), float(np.quantile(r, 1.0 - tail))


def describe(params: dict) -> str:
    model = params.get("student", "?")
    bits = [model] + [f"{k.split('.', 1)[1]}={v}" for k, v in params.items() if k.startswith(model + ".")
                      and not k.endswith(".prune")]
    bits.append(f"kd={params.get('kd_loss')}")
    pm = params.get(f"{model}.prune", "none")
    amount = params.get("prune.sparsity", params.get("prune.coverage", params.get("prune.max_bytes")))
    bits.append(f"prune={pm}" + (f":{amount}" if pm != "none" and amount is not None else ""))
    bits.append(str(params.get("export")))
    return " ".join(bits)


# ---------------------------------------------------------------- results

def trial_rows(study) -> list[dict]:
    return [{"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
             "user_attrs": t.user_attrs,
             "started": t.datetime_start.isoformat() if t.datetime_start else None,
             "completed": t.datetime_complete.isoformat() if t.datetime_complete else None}
            for t in study.get_trials(deepcopy=False)]


METRICS = (("kept", 1), ("p50_ms", -1), ("size_bytes", -1), ("peak_rss_bytes", -1))


def pareto(rows: list[dict]) -> list[dict]:
    """The completed trials no other completed trial beats on all of NDCG kept (higher),
    latency, size and memory (lower) and betters on one."""
    done = [r for r in rows if r["state"] == "COMPLETE"]

    def vec(r):
        return [s * float(r["user_attrs"][k]) for k, s in METRICS]

    front = []
    for r in done:
        v = vec(r)
        if not any(all(a >= b for a, b in zip(vec(o), v)) and vec(o) != v for o in done if o is not r):
            front.append(r)
    return sorted(front, key=lambda r: -r["user_attrs"]["kept"])


def hypervolume(rows: list[dict], objective: str, base_cost: float, ref_cost: float = 1.0) -> float:
    """Hypervolume of the completed trials in (NDCG kept, cost / teacher's cost), against the
    reference point (kept 0, cost ref_cost x the teacher's): larger is a better front."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    key = OBJECTIVES[objective][1]
    pts = [(-float(r["user_attrs"]["kept"]), float(r["user_attrs"][key]) / base_cost)
           for r in rows if r["state"] == "COMPLETE"]
    pts = [p for p in pts if p[0] < 0 and p[1] < ref_cost]
    if not pts:
        return 0.0
    return float(compute_hypervolume(np.array(pts), np.array([0.0, ref_cost])))


def teacher_cost(rec: dict, objective: str) -> float:
    """The teacher's figure for the objective, from its bench record on the target."""
    return float(rec["latency_ms"]["p50_ms"] if objective == "p50" else rec[OBJECTIVES[objective][1]])


def lineage(a: Artifact) -> list[dict]:
    """The artifact and its ancestors back to the teacher, each as name, stage, sha256, path."""
    chain = []
    while True:
        chain.append({"name": a.name, "stage": a.card.get("stage"), "format": a.format, "sha256": a.sha256,
                      "path": str(a.path), "config": a.card.get("config")})
        parents = a.card.get("parent") or []
        if not parents or len(chain) > 16:
            return chain
        a = load_parent(a, parents[0])


def _plot(rows: list[dict], front: list[dict], chosen: dict | None, cfg: SearchConfig, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, key = OBJECTIVES[cfg.objective]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.scatter([r["user_attrs"][key] for r in done], [r["user_attrs"]["kept"] for r in done], s=25,
               color="lightgrey", edgecolor="grey", label="trials")
    ax.scatter([r["user_attrs"][key] for r in front], [r["user_attrs"]["kept"] for r in front], s=45,
               color="tab:blue", label="Pareto front (kept, latency, size, memory)")
    if chosen:
        ax.scatter([chosen["user_attrs"][key]], [chosen["user_attrs"]["kept"]], marker="*", s=220,
                   color="crimson", label=f"chosen: trial {chosen['number']}")
    ax.axhline(cfg.min_kept, color="crimson", ls=":", lw=1, label=f"budget: {cfg.min_kept:.0%} kept")
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} on the target (log)")
    ax.set_ylabel("validation NDCG@10 / teacher's")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"edgekd search: {len(done)} completed trials")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _front_cells(front: list[dict], chosen: dict | None, cfg: SearchConfig) -> tuple[list[str], list[list[str]]]:
    """The front as the table and the HTML page show it: column names, and each trial's cells."""
    heads = ["trial", "candidate", "kept"] + ([f"kept, {cfg.confidence:.0%} bound"] if cfg.confidence else []) \
        + ["p50 ms", "speed-up", "size KiB", "smaller", "peak MB", "misses"]
    rows = []
    for r in front:
        u = r["user_attrs"]
        low = ["-" if u.get("kept_low") is None else f"{u['kept_low']:.1%}"] if cfg.confidence else []
        rows.append([str(r["number"]) + (" *" if chosen and chosen["number"] == r["number"] else ""),
                     describe(r["params"]), f"{u['kept']:.1%}", *low, f"{u['p50_ms']:.3f}",
                     f"{u['speedup_p50']:.1f}x", f"{u['size_bytes'] / 1024:.0f}", f"{u['size_ratio']:.1f}x",
                     f"{u['peak_rss_bytes'] / 1e6:.0f}", ", ".join(cfg.missed(u)) or "none"])
    return heads, rows


def _table(front: list[dict], chosen: dict | None, cfg: SearchConfig):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"Pareto front ({len(front)} trials): validation NDCG@10 kept vs the target's cost")
    heads, rows = _front_cells(front, chosen, cfg)
    for col in heads:
        wrap = col in ("candidate", "misses")
        t.add_column(col, justify="left" if wrap else "right", no_wrap=not wrap)
    for row in rows:
        t.add_row(*map(escape, row))
    return t


def _html(front: list[dict], chosen: dict | None, summary: dict, png: Path | None, path: Path,
          cfg: SearchConfig) -> Path:
    import base64
    import html

    heads, rows = _front_cells(front, chosen, cfg)
    img = (f"<p><img src='data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}'></p>" if png
           else f"<p>No charts: matplotlib is not installed; charts need <code>{html.escape(REPORT_HINT)}</code>.</p>")
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>edgekd search</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
        f"<h1>edgekd search on {html.escape(summary['target'])}</h1>"
        f"<p>{html.escape(summary['conclusion'])}</p>"
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        + f"</table>{img}")
    return path


def _test_interval(s: Search, a: Artifact, users: int) -> dict:
    """How far the users alone move the chosen file's test share: a paired bootstrap of its
    per-user test NDCG@10 against the teacher's, both read on this machine (the file's figure
    above is its target's; on a remote target the two may differ by the runtimes' rounding)."""
    teacher = per_user_ndcg(s.teacher, s.ds, "test", users)
    gains = s._gains(a, "test", users)
    lo, hi = paired_ratio_interval(gains, teacher, INTERVAL, seed=s.cfg.seed)
    return {"kept_here": float(gains.sum() / max(teacher.sum(), 1e-12)), "kept_interval": [lo, hi],
            "interval": f"{INTERVAL:.0%} paired bootstrap over the test users ({BOOTSTRAP} resamples) of this "
                        f"machine's read of the same file and teacher: how far the users alone move the share"}


def finish(s: Search, console=None) -> dict:
    """Write the trial records, the front (JSON, PNG, HTML), the chosen artifact with its
    lineage and its test figures (read here, once), and print the front."""
    from .bench import load_records

    rows = trial_rows(s.study)
    write_json(s.run_dir / "trials.json", rows)
    front = pareto(rows)
    key = OBJECTIVES[s.cfg.objective][1]
    feasible = [r for r in rows if r["state"] == "COMPLETE" and s.cfg.feasible(r["user_attrs"])]
    chosen = min(feasible, key=lambda r: (r["user_attrs"][key], -r["user_attrs"]["kept"])) if feasible else None
    base = s._teacher_record() if any(r["state"] == "COMPLETE" for r in rows) else None
    summary = {
        "teacher": s.teacher.name, "teacher_sha256": s.teacher.sha256, "target": s.target.name,
        "objective": s.cfg.objective, "min_kept": s.cfg.min_kept, "confidence": s.cfg.confidence,
        "min_speedup": s.cfg.min_speedup,
        "min_smaller": s.cfg.min_smaller, "sampler": s.cfg.sampler, "seed": s.cfg.seed,
        "teacher_valid_ndcg@10": s.teacher_valid,
        "trials": {state: sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
        "front": [r["number"] for r in front],
        "hypervolume": hypervolume(rows, s.cfg.objective, teacher_cost(base, s.cfg.objective)) if base else 0.0,
        "hypervolume_reference": "NDCG kept 0, the teacher's cost on the target",
        "space": s.space, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if chosen:
        a = load_artifact(chosen["user_attrs"]["artifact_path"])
        dest = s.run_dir / "chosen" / a.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(a.path, dest)
        rec = next(r for r in load_records(s.run_dir / BENCH_RUN) if r["artifact"]["sha256"] == a.sha256)
        test = {"split": "test", "ndcg@10": rec["accuracy"]["ndcg@10"], "hr@10": rec["accuracy"]["hr@10"],
                "teacher_ndcg@10": base["accuracy"]["ndcg@10"],
                "kept": rec["accuracy"]["ndcg@10"] / base["accuracy"]["ndcg@10"] if base["accuracy"]["ndcg@10"] else None,
                "users": rec["accuracy"]["users"], "source": "the chosen file's own outputs on the target"}
        test.update(_test_interval(s, a, rec["accuracy"]["users"]))
        summary["chosen"] = {"trial": chosen["number"], "params": chosen["params"], "validation": chosen["user_attrs"],
                             "artifact": str(a.path), "copy": str(dest), "lineage": lineage(a), "test": test}
        u = chosen["user_attrs"]
        summary["conclusion"] = (
            f"trial {chosen['number']} ({describe(chosen['params'])}) keeps {u['kept']:.1%} of the teacher's "
            f"validation NDCG@10"
            + (f" (at least {u['kept_low']:.1%} at {s.cfg.confidence:.0%} confidence)" if u.get("kept_low") is not None else "")
            + f" (budget {s.cfg.min_kept:.0%}) at {u['speedup_p50']:.1f}x the teacher's speed and "
            f"{u['size_ratio']:.1f}x smaller on {s.target.name}; on test (read once, now): "
            f"{test['kept']:.1%} of the teacher's NDCG@10 ({INTERVAL:.0%} interval over the users "
            f"{test['kept_interval'][0]:.1%} to {test['kept_interval'][1]:.1%})")
    else:
        summary["chosen"] = None
        summary["conclusion"] = (f"no completed trial meets {s.cfg.constraints_text()}: nothing chosen "
                                 "(more trials, epochs or a looser budget)")
    png = _plot(rows, front, chosen, s.cfg, s.run_dir / "front.png") if charts_available() else None
    if png is None:
        (s.run_dir / "front.png").unlink(missing_ok=True)  # an earlier run's front, not this one's
        s.say(f"front.png not drawn: matplotlib is not installed; charts need {REPORT_HINT}")
    summary["front_png"] = str(png) if png else None
    summary["html"] = str(_html(front, chosen, summary, png, s.run_dir / "search.html", s.cfg))
    write_json(s.run_dir / "front.json", [{"number": r["number"], "params": r["params"], **{
        k: r["user_attrs"].get(k) for k in ("kept", "kept_low", "p50_ms", "size_bytes", "peak_rss_bytes", "speedup_p50",
                                            "size_ratio", "artifact")}} for r in front])
    write_json(s.run_dir / "search.json", summary)
    if console is not None:  # wide enough for the candidate column in a log file too
        console.print(_table(front, chosen, s.cfg), width=None if console.is_terminal else 160)
    s.say(summary["conclusion"])
    return summary


def search(teacher: Artifact, cfg: SearchConfig, target, *, store: Path = DEFAULT_STORE, run_dir: Path,
           say: Callable[[str], None] = print, console=None) -> dict:
    """Run (or resume) the search in `run_dir` and write its results there."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with path_lock(run_dir / "search.lock", "edgekd search"):
        s = Search(teacher, cfg, target, store=store, run_dir=run_dir, say=say)
        s.open()
        s.run()
        return finish(s, console)
