"""The export stage: a torch artifact to one registered format, checked for parity before
anything is written. `staged_export` makes and checks the file in a temporary directory, where
it can be measured before it is saved (the quantize stage times its candidates there); its
`save` writes the artifact with the drift reference `edgekd serve` compares live traffic
against, measured on the file before the card is written."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..artifact import DEFAULT_STORE, VOCAB, Artifact, save_artifact, sha256_file, write_json
from ..data import Dataset
from ..errors import ConfigError, EdgeKDError, ExportError
from ..torch_io import dataset_card, dataset_for, input_spec, load_torch_model, output_spec
from .base import get_format, get_recipe
from .parity import FP32_MAX_ABS_DIFF, FP32_MIN_TOP10_OVERLAP, TopKHead, calibration_inputs, parity, topk_parity


def export(a: Artifact, fmt: str, *, store: Path = DEFAULT_STORE, name: str | None = None,
           ds: Dataset | None = None, parity_users: int | None = 1000, topk: int | None = None,
           recipe: str | None = None) -> Artifact:
    """Export torch artifact `a` to `fmt`; writes nothing unless parity holds. With `topk`,
    the graph ends in top-K and returns item indices and scores; `recipe` picks how a
    quantised format is quantised (`edgekd list recipes`)."""
    with staged_export(a, fmt, name=name, ds=ds, parity_users=parity_users, topk=topk, recipe=recipe) as s:
        return s.save(store)


@dataclass
class StagedExport:
    """An export that passed its parity check, waiting in a temporary directory to be saved."""

    dir: Path
    name: str
    payload: Path
    extra: list[str]  # files beside the payload that an app or a build needs
    card: dict  # the card without what save_artifact adds (sha256, sizes, versions, ...)
    vocab: dict
    ds: Dataset

    @cached_property
    def artifact(self) -> Artifact:
        """A read-only view of the staged file as the artifact it will be (its name, payload,
        sha256 and card), for measurements made before it is saved."""
        return Artifact(self.dir, {"name": self.name, **self.card, "file": self.payload.name,
                                   "sha256": sha256_file(self.payload), "size_bytes": self.payload.stat().st_size,
                                   "vocab": VOCAB, "vocab_sha256": sha256_file(self.dir / VOCAB)})

    def save(self, store: Path = DEFAULT_STORE, **fields) -> Artifact:
        """Save it into `store`, `fields` added to its card, with its drift reference (measured
        on the file in the partial directory, so that the card is written once, naming it)."""
        from ..drift_reference import write_reference

        def write(p: Path) -> None:
            shutil.copyfile(self.payload, p)
            for f in self.extra:
                shutil.copyfile(self.payload.with_name(f), p.with_name(f))

        def reference(staged: Artifact) -> dict:  # what `edgekd serve` measures drift against
            return {"drift_reference": write_reference(staged, self.ds)}

        return save_artifact(store, self.name, self.payload.name, write, {**self.card, **fields}, self.vocab,
                             finish=reference)


@contextlib.contextmanager
def staged_export(a: Artifact, fmt: str, *, name: str | None = None, ds: Dataset | None = None,
                  parity_users: int | None = 1000, topk: int | None = None, recipe: str | None = None):
    """Make `a`'s `fmt` file in a temporary directory and check its parity (as `export`); yields
    a StagedExport. Its directory is removed on leaving (`save` copies the file into the store)."""
    spec = get_format(fmt)
    if recipe is not None and not spec.family:
        raise ConfigError(f"{fmt} takes no quantisation recipe")
    if spec.family and spec.recipe:
        rec = get_recipe(spec.family, recipe or spec.recipe)
        precision = rec.precision
        if precision != spec.precision:
            raise ConfigError(f"recipe {rec.name!r} makes {precision} files, not {fmt} ({spec.precision}); "
                              f"use it with a {precision} format")
    else:
        rec, precision = None, spec.precision
    model = load_torch_model(a)
    if topk is not None and not 1 <= topk <= model.num_items:
        raise ConfigError(f"--topk must be between 1 and the {model.num_items} items, got {topk}")
    if ds is not None:
        a.check_dataset(ds.fingerprint())
    ds = ds if ds is not None else dataset_for(a)
    maxlen = model.maxlen
    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as tmp:
        out = Path(tmp) / ("model" + spec.suffix)
        calib = calibration_inputs(ds, maxlen) if rec is not None and rec.calibrated else None
        try:
            info = spec.writer(TopKHead(model, topk) if topk else model, out,
                               recipe=rec.name if rec else None, calib=calib)
        except EdgeKDError:
            raise
        except Exception as e:  # a converter failure: say which and keep its message
            raise ExportError(f"{fmt} export of {a.name} failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
        if topk:
            check = topk_parity(model, out, ds, topk, users=parity_users)
            if precision == "fp32" and check["topk_overlap"] < FP32_MIN_TOP10_OVERLAP:
                raise ExportError(f"{fmt} top-{topk} export of {a.name} returns other items than torch: "
                                  f"overlap {check['topk_overlap']:.3f}; nothing written")
        else:
            check = parity(model, out, ds, users=parity_users)
        # written as "not (ok)" so that a NaN difference fails too
        if not topk and precision == "fp32" and not (check["top10_overlap"] >= FP32_MIN_TOP10_OVERLAP
                                                     and check["max_abs_diff"] <= FP32_MAX_ABS_DIFF):
            raise ExportError(
                f"{fmt} export of {a.name} breaks parity with torch: top-10 overlap "
                f"{check['top10_overlap']:.3f} (need >= {FP32_MIN_TOP10_OVERLAP}), max abs diff "
                f"{check['max_abs_diff']:.2e} (need <= {FP32_MAX_ABS_DIFF:g}); nothing written")
        batch = info.pop("batch")
        extra = info.pop("extra_files", [])
        from ..inspection import inspect_path

        # The signature as the file itself states it (TFLite names its tensors itself).
        seen = inspect_path(out)
        card_sig = {"inputs": seen["inputs"], "outputs": seen["outputs"], "quantization": seen["quantization"],
                    "operators": seen["operators"]}
        card = {
            "stage": "exported", "format": fmt, "precision": precision, "recipe": rec.name if rec else None,
            "arch": a.card["arch"], "arch_kwargs": a.card["arch_kwargs"], "params": a.card.get("params"),
            "input_spec": input_spec(maxlen, "int32", "batch" if batch == "dynamic" else batch,
                                     name=seen["inputs"][0]["name"]),
            "output_spec": (output_spec(ds.num_items, "batch" if batch == "dynamic" else batch,
                                        name=seen["outputs"][0]["name"]) if not topk else
                            [{"name": o["name"], "shape": o["shape"], "dtype": o["dtype"],
                              "meaning": ("the top-K item indices, best first; vocab.json items[i]"
                                          if "int" in o["dtype"] else "their scores")} for o in seen["outputs"]]),
            "topk": topk,
            "signature": card_sig,
            "config": {"export": {"target": fmt, **info}},
            "parent": [a.lineage()], "metrics": {"parity": check},
            "dataset": dataset_card(ds), "seed": a.card.get("seed"),
        }
        default = (f"{a.name}-{fmt}" + (f"-{rec.name}" if rec and recipe else "")
                   + (f"-top{topk}" if topk else ""))
        vocab = a.vocab()
        write_json(Path(tmp) / VOCAB, vocab)  # beside the payload, as the artifact will hold it
        yield StagedExport(Path(tmp), name or default, out, list(extra), card, vocab, ds)
