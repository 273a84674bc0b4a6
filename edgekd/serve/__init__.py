"""`edgekd serve`: a student artifact behind HTTP (FastAPI + uvicorn), with Prometheus metrics,
drift against the artifact's validation reference, an optional shadow teacher and hot reload."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError

__all__ = ["serve", "ensure_reference"]


def ensure_reference(artifact: str, store: Path, say=print) -> None:
    """Compute and store the artifact's drift reference when it has none (on its training data's
    validation users)."""
    from ..artifact import load_artifact
    from ..drift_reference import attach_reference, load_reference

    a = load_artifact(artifact, store)
    if load_reference(a) is not None:
        say(f"drift reference: {a.path / a.card.get('drift_reference', 'drift_reference.json')} (kept)")
        return
    from ..torch_io import dataset_for

    attach_reference(a, dataset_for(a))
    say(f"drift reference: computed on validation users, written to {a.path / 'drift_reference.json'}")


def serve(cfg, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "info") -> None:
    """Run the service until interrupted."""
    import uvicorn

    from .app import create_app

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if not 1 <= cfg.max_batch <= 1024 or cfg.max_wait_ms < 0:
        raise ConfigError(f"--max-batch must be in 1..1024 and --max-wait-ms >= 0, got {cfg.max_batch}, "
                          f"{cfg.max_wait_ms}")
    if not 0 <= cfg.shadow_rate <= 1:
        raise ConfigError(f"--shadow-rate must be in [0, 1], got {cfg.shadow_rate}")
    if workers == 1:
        uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level, access_log=False)
        return
    # Several processes: prometheus-client's multiprocess mode (its directory must exist, empty,
    # before any worker imports prometheus_client) and a control directory for reloads.
    tmp = Path(tempfile.mkdtemp(prefix="edgekd-serve-"))
    (tmp / "metrics").mkdir()
    (tmp / "control").mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
           "EDGEKD_SERVE_CONFIG": replace(cfg, control_dir=str(tmp / "control"), workers=workers).to_env()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        uvicorn.run("edgekd.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def config(**kw):
    from .app import ServeConfig

    return ServeConfig(**kw)
