"""The package's layout, read from the source with `ast` (benchmarks/import_graph.py): no
import cycles, and no module imports one of a layer above its own."""
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "import_graph", Path(__file__).resolve().parent.parent / "benchmarks" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)

# Bottom to top. A module may import its own layer or the ones below it, never one above.
LAYERS = [
    # what everything stands on: files, data, models, targets, reading model files
    {"edgekd", "edgekd.errors", "edgekd.artifact", "edgekd.data", "edgekd.metrics", "edgekd.models",
     "edgekd.kd_losses", "edgekd.baselines", "edgekd.data_arrow", "edgekd.sampled_losses", "edgekd.targets", "edgekd.android", "edgekd.device_runner",
     "edgekd.inspection", "edgekd.timing", "edgekd.extras"},
    # what the stages share: evaluation, torch artifacts, running the device runner
    {"edgekd.evaluation", "edgekd.torch_io", "edgekd.runner", "edgekd.pruning", "edgekd.ranking",
     "edgekd.drift_reference"},
    # the stages that make artifacts
    {"edgekd.train", "edgekd.distill", "edgekd.compress", "edgekd.export", "edgekd.export.base",
     "edgekd.export.onnx", "edgekd.export.tflite", "edgekd.export.quantize", "edgekd.export.parity",
     "edgekd.export.stage"},
    # what measures, reports and drives them
    {"edgekd.bench", "edgekd.report", "edgekd.pipeline", "edgekd.cli", "edgekd.__main__", "edgekd.docgen", "edgekd.serve",
     "edgekd.serve.app", "edgekd.serve.drift", "edgekd.serve.batching", "edgekd.serve.monitoring",
     "edgekd.serve.shadow", "edgekd.search"},
]
# What uses the stages' artifacts: nothing that makes artifacts may import these (or their submodules).
USERS = ("edgekd.serve", "edgekd.search", "edgekd.bench", "edgekd.report", "edgekd.pipeline", "edgekd.cli")


@pytest.fixture(scope="module")
def graph():
    return import_graph.graph()


def test_no_import_cycle(graph):
    assert import_graph.cycles(graph) == []


def test_every_module_has_a_layer(graph):
    placed = set().union(*LAYERS)
    assert set(graph) - placed == set(), "add new modules to LAYERS"


def test_no_module_imports_upward(graph):
    layer = {m: i for i, mods in enumerate(LAYERS) for m in mods}
    upward = [(m, d) for m, deps in graph.items() for d in deps if layer.get(d, 0) > layer.get(m, 0)]
    assert upward == []


def _reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for d in graph.get(todo.pop(), ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_export_and_below_never_import_what_uses_them(graph):
    # by name, whatever LAYERS says: the export stage and everything under it reach none of
    # serve, search, bench, report, pipeline or cli, directly or through another module
    below = [m for m in graph if m == "edgekd.export" or m.startswith("edgekd.export.")
             or any(m in LAYERS[i] for i in range(2))]
    assert "edgekd.export.stage" in below and "edgekd.evaluation" in below
    user = lambda d: any(d == u or d.startswith(u + ".") for u in USERS)  # noqa: E731
    reached = {m: sorted(d for d in _reachable(graph, m) if user(d)) for m in below}
    assert {m: r for m, r in reached.items() if r} == {}


def test_bench_does_not_import_training(graph):
    # bench measures files: it needs artifacts, data and the runner, never the training code
    assert _reachable(graph, "edgekd.bench") & {"edgekd.distill", "edgekd.train"} == set()


def test_the_graph_sees_function_level_imports_and_cycles(tmp_path):
    pkg = tmp_path / "edgekd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    g = import_graph.graph(pkg)
    assert g == {"edgekd": set(), "edgekd.a": {"edgekd.b"}, "edgekd.b": {"edgekd.a"}}
    assert import_graph.cycles(g) == [["edgekd.a", "edgekd.b"]]


def test_a_relative_import_of_a_missing_module_is_an_error(tmp_path):
    pkg = tmp_path / "edgekd"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runner.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..runner import x\n")
    assert import_graph.graph(pkg)["edgekd.sub.a"] == {"edgekd.runner"}
    (pkg / "sub" / "a.py").write_text("def f():\n    from .runner import x\n")  # one dot: edgekd.sub.runner
    with pytest.raises(ImportError, match="names no module"):
        import_graph.graph(pkg)
