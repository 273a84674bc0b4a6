"""Torch artifacts: writing a model's weights and card (safetensors, never pickle), reading a
model back, and the dataset an artifact was trained on."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .artifact import Artifact, save_artifact
from .data import Dataset, DataSpec, load_data
from .errors import ArtifactError, TrainingError
from .models import count_parameters, create_model


def save_torch_artifact(model: nn.Module, *, store: Path, name: str, stage: str, arch: str,
                        arch_kwargs: dict, ds: Dataset, config: dict, metrics: dict,
                        parent: list[dict] | None = None, seed: int = 0,
                        extra: dict | None = None, finish=None) -> Artifact:
    """Save `model`'s weights as a torch artifact; `finish` as in save_artifact (measurements
    of the saved weights that go on the card, made before it is written)."""
    from safetensors.torch import save_file

    # Tied weights share storage; safetensors refuses shared tensors, so store clones
    # (the item table is one tensor in this model, so nothing is stored twice).
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise TrainingError(f"{name}: not saved: weight {k} has non-finite values (the run diverged)",
                                hint="lower --lr and train again")

    card = {
        "stage": stage, "format": "torch", "arch": arch, "arch_kwargs": arch_kwargs,
        "params": count_parameters(model),
        "input_spec": input_spec(arch_kwargs["maxlen"], dtype="int64"),
        "output_spec": output_spec(ds.num_items),
        "config": config, "parent": parent or [], "metrics": metrics,
        "dataset": dataset_card(ds), "seed": seed, **(extra or {}),
    }
    return save_artifact(store, name, "model.safetensors", lambda p: save_file(state, str(p)),
                         card, ds.vocab(), finish=finish)


def input_spec(maxlen: int, dtype: str = "int32", batch: int | str = "batch", name: str = "item_ids") -> list[dict]:
    return [{"name": name, "shape": [batch, maxlen], "dtype": dtype,
             "meaning": "item indices (vocab.json items[k] is index k+1), left-padded with 0"}]


def output_spec(num_items: int, batch: int | str = "batch", name: str = "scores") -> list[dict]:
    return [{"name": name, "shape": [batch, num_items], "dtype": "float32",
             "meaning": "score of every item for the next position; column k is vocab.json items[k]"}]


def dataset_card(ds: Dataset) -> dict:
    return {"name": ds.name, "fingerprint": ds.fingerprint(), "spec": ds.spec.to_dict() if ds.spec else None,
            "users": ds.num_users, "items": ds.num_items, "events": ds.num_events}


def load_torch_model(a: Artifact) -> nn.Module:
    """Rebuild a torch model from its artifact (safetensors only, never pickle)."""
    from safetensors.torch import load_file

    if a.format != "torch":
        raise ArtifactError(f"{a.path}: a {a.format} artifact, not a torch model",
                            hint="pass the torch artifact it was exported from")
    from safetensors import SafetensorError

    if not isinstance(a.card.get("arch_kwargs"), dict) or not isinstance(a.card.get("arch"), str):
        raise ArtifactError(f"{a.path}: artifact.json lacks a valid 'arch' and 'arch_kwargs'")
    try:
        model = create_model(a.card["arch"], **a.card["arch_kwargs"])
    except TypeError as e:
        raise ArtifactError(f"{a.path}: arch_kwargs do not fit {a.card['arch']}: {e}") from None
    try:
        state = load_file(str(a.file))
        model.load_state_dict(state, strict=True)
    except SafetensorError as e:
        raise ArtifactError(f"{a.file}: not a readable safetensors file ({e})") from None
    except (RuntimeError, ValueError, OSError) as e:
        raise ArtifactError(f"{a.file}: weights do not fit {a.card['arch']} "
                            f"{a.card['arch_kwargs']}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ArtifactError(f"{a.file}: weight {bad[0]} has non-finite values; the model is unusable",
                            hint="train it again (a lower --lr)")
    return model.eval()


def dataset_for(a: Artifact, spec: DataSpec | None = None) -> Dataset:
    """The dataset an artifact was trained on (or `spec`), checked against its fingerprint."""
    if spec is None:
        raw = (a.card.get("dataset") or {}).get("spec")
        if not raw:
            raise ArtifactError(f"{a.path}: artifact.json does not say which data it was trained on",
                                hint="pass --data and --format")
        spec = DataSpec(**raw)
    ds = load_data(spec, store=Path(a.path).resolve().parent)  # the artifact's store (resolved: never itself)
    a.check_dataset(ds.fingerprint())
    return ds
