import numpy as np
import pytest

from edgekd.artifact import load_artifact
from edgekd.errors import ConfigError, ExportError
from edgekd.export import export, get_format, list_formats

FORMATS = [f.name for f in list_formats()]


@pytest.fixture(scope="module")
def exports(tiny_student, tiny_ds, store):
    return {f: export(tiny_student, f, store=store, ds=tiny_ds) for f in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_torch_on_validation_sequences(exports, fmt, tiny_student):
    a = exports[fmt]
    p = a.metrics["parity"]
    assert a.card["stage"] == "exported" and a.card["format"] == fmt
    assert a.card["parent"][0]["sha256"] == tiny_student.sha256
    assert a.vocab() == tiny_student.vocab()
    assert a.card["input_spec"][0]["dtype"] == "int32"
    if get_format(fmt).precision == "fp32":
        assert p["top10_overlap"] >= 0.99 and p["max_abs_diff"] <= 1e-3
    else:
        # int8 accuracy floor on the tiny model: the ranking barely moves
        assert p["top10_overlap"] >= 0.8
        assert abs(p["ndcg@10_rel_change"]) <= 0.1
    load_artifact(a.path)  # verifies sha256


@pytest.fixture(scope="module")
def catalogue_student(tmp_path_factory):
    """A student over a larger catalogue (the generator's 800 items, of which 385 occur in 200
    users' histories: a 386 x 32 table): big enough that the item table dominates, as in
    real data (on the 60-item toy catalogue quantisation metadata outweighs the weights)."""
    from edgekd.data import DataSpec, load_data
    from edgekd.train import TrainConfig, train_teacher

    ds = load_data(DataSpec(synthetic={"users": 200, "items": 800, "mean_length": 10, "seed": 1}))
    store = tmp_path_factory.mktemp("cat")
    cfg = TrainConfig(model="sasrec-student", maxlen=20, epochs=1, patience=1)
    return train_teacher(ds, cfg, store=store, name="cat-student"), ds, store


def test_int8_files_are_much_smaller(catalogue_student):
    a, ds, store = catalogue_student
    size = {f: export(a, f, store=store, ds=ds).card["size_bytes"] for f in FORMATS}
    # the item table (386 x 32) in int8, stored once, and no stored masks; ONNX with edgekd's
    # 1-byte row scale codes, TFLite with one scale per tensor.
    assert size["onnx-fp32"] / size["onnx-int8"] > 2.9, size   # 2.86 with fp16 row scales
    assert size["tflite-fp32"] / size["tflite-int8"] > 2.6, size  # 2.0 with a scale and zero point per row


@pytest.mark.parametrize("recipe,per_tensor", [("weight-only", True), ("weight-only-per-channel", False)])
def test_tflite_int8_stores_the_item_table_once_in_int8(catalogue_student, recipe, per_tensor):
    from ai_edge_litert.interpreter import Interpreter

    a, ds, store = catalogue_student
    f = export(a, "tflite-int8", store=store, ds=ds, recipe=recipe, name=f"cat-{recipe}").file
    it = Interpreter(str(f))
    tables = []
    for t in it.get_tensor_details():
        if tuple(t["shape"][:1]) == (ds.num_items + 1,) and len(t["shape"]) == 2 and t["shape"][1] > 1:
            try:
                tables.append((str(it.get_tensor(t["index"]).dtype), len(t["quantization_parameters"]["scales"])))
            except ValueError:
                pass  # an activation, not a constant
    # one int8 copy and no float copy for the scoring layer; one scale by default (per item
    # row, a float scale and an int64 zero point cost 12 bytes beside a d=32 row's 32)
    assert tables == [("int8", 1 if per_tensor else ds.num_items + 1)], tables


def test_exports_run_in_their_runtimes_with_int32_ids(exports, tiny_ds):
    from edgekd.device_runner import load_model, run_batched
    from edgekd.evaluation import model_scores
    from edgekd.torch_io import load_torch_model

    ids = np.random.default_rng(0).integers(0, tiny_ds.num_items + 1, size=(3, 20)).astype(np.int32)
    ref = model_scores(load_torch_model(load_artifact(exports["onnx-fp32"].card["parent"][0]["path"])), ids)
    for fmt in ("onnx-fp32", "tflite-fp32"):
        m = load_model(str(exports[fmt].file), "auto", threads=1)
        assert np.allclose(run_batched(m, ids), ref, atol=1e-4)
    # the ONNX file keeps a dynamic batch: 3 rows in one call, not padded to a fixed batch
    onnx_model = load_model(str(exports["onnx-fp32"].file), "auto", threads=1)
    assert not onnx_model.fixed_batch
    assert np.allclose(onnx_model(ids), ref, atol=1e-4)


def test_onnx_stores_the_item_table_once(exports, tiny_ds):
    import onnx

    m = onnx.load(str(exports["onnx-fp32"].file))
    tables = [i for i in m.graph.initializer if i.dims and i.dims[0] == tiny_ds.num_items + 1]
    assert len(tables) == 1


def test_broken_parity_is_an_error_and_writes_nothing(tiny_student, tiny_ds, tmp_path, monkeypatch):
    import edgekd.export.base as ex

    real = ex._FORMATS["onnx-fp32"]

    def broken(model, path, **kw):
        import copy

        import torch
        wrong = copy.deepcopy(model)
        with torch.no_grad():
            wrong.item_emb.weight.mul_(-1.0)  # the file no longer computes the parent's scores
        return real.writer(wrong, path)

    monkeypatch.setitem(ex._FORMATS, "onnx-fp32", ex.Format("onnx-fp32", ".onnx", "fp32", broken, ""))
    with pytest.raises(ExportError, match="breaks parity"):
        export(tiny_student, "onnx-fp32", store=tmp_path, ds=tiny_ds)
    assert not any(tmp_path.iterdir())


def test_an_export_writes_its_card_once_naming_its_drift_reference(tiny_student, tiny_ds, tmp_path, card_writes):
    from edgekd.drift_reference import REFERENCE, compute_reference, load_reference
    from edgekd.ranking import ServedModel
    from tests.conftest import written_once

    a = export(tiny_student, "onnx-int8", store=tmp_path, ds=tiny_ds)
    card = written_once(card_writes, a.name)
    assert card["drift_reference"] == REFERENCE and card == load_artifact(a.path).card
    # measured on the file before it was saved, it is what the saved artifact ranks, as served
    ref = load_reference(a)
    assert ref["artifact"] == {"name": a.name, "sha256": a.sha256}
    assert ref == compute_reference(ServedModel(load_artifact(a.path)), tiny_ds)
    assert sorted(p.name for p in a.path.iterdir()) == sorted(["artifact.json", "vocab.json", "model.onnx", REFERENCE])


def test_unknown_format_names_the_valid_ones():
    with pytest.raises(ConfigError, match="export formats: onnx-fp32"):
        get_format("local-cpu")


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_reads_signature_and_quantisation_from_the_file(exports, fmt, tiny_ds):
    from edgekd.inspection import inspect_path

    info = inspect_path(exports[fmt].path)
    assert info["inputs"][0]["dtype"] == "int32" and info["inputs"][0]["shape"][-1] == 20
    assert info["outputs"][0]["shape"][-1] == tiny_ds.num_items
    assert info["size_bytes"] == exports[fmt].card["size_bytes"]
    assert ("none" in info["quantization"]) == fmt.endswith("fp32")
    assert exports[fmt].card["signature"]["inputs"] == info["inputs"]
    assert len(info["operators"]) > 5


def test_inspect_torch_weights_and_bad_files(tiny_teacher, tmp_path):
    from edgekd.errors import ArtifactError
    from edgekd.inspection import inspect_path
    from edgekd.models import count_parameters
    from edgekd.torch_io import load_torch_model

    info = inspect_path(tiny_teacher.path)
    assert info["parameters"] == count_parameters(load_torch_model(tiny_teacher))
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="not a readable ONNX model"):
        inspect_path(bad)


def test_onnx_mobile_ships_the_ort_model_and_its_operator_config(exports):
    from edgekd.inspection import required_operators

    a = exports["onnx-mobile"]
    assert a.file.suffix == ".ort"
    ops = {op for _, op in required_operators(a.path / "required_operators.config")}
    assert {"Gather", "Softmax"} <= ops
    # the quantised matmuls are in the config, so a reduced build can run the int8 model
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}


def test_fp16_halves_the_weights(catalogue_student):
    a, ds, store = catalogue_student
    fp32 = export(a, "tflite-fp32", store=store, ds=ds, name="h-fp32").card["size_bytes"]
    fp16 = export(a, "tflite-fp16", store=store, ds=ds, name="h-fp16").card["size_bytes"]
    assert 1.6 < fp32 / fp16 < 2.1


@pytest.mark.parametrize("fmt", ["onnx-fp32", "tflite-fp32", "onnx-int8", "tflite-int8"])
def test_topk_exports_return_the_same_items_as_the_full_score_export(fmt, tiny_student, tiny_ds, store, exports):
    from edgekd.export import run_all_outputs
    from edgekd.evaluation import eval_inputs

    a = export(tiny_student, fmt, store=store, ds=tiny_ds, topk=5)
    assert a.name.endswith("-top5") and a.card["topk"] == 5
    x, _, _ = eval_inputs(tiny_ds, "test", 20)
    top = run_all_outputs(a.file, x)
    full = run_all_outputs(exports[fmt].file, x)["scores"]
    assert top["items"].shape == (len(x), 5) and top["items"].dtype == np.int32
    ref = np.argsort(-full, axis=1, kind="stable")[:, :5]
    assert (top["items"] == ref).all(1).mean() >= 0.98
    assert np.allclose(top["scores"], np.take_along_axis(full, ref, 1), atol=1e-4)
    assert {o["dtype"] for o in a.card["output_spec"]} == {"int32", "float32"}


def test_topk_parity_scores_a_chunk_of_users_at_a_time(tiny_student, tiny_ds, store, monkeypatch):
    """No users x items matrix whole: torch's reference and the file's outputs come a chunk of
    users at a time, and give what one pass over every user gives."""
    import sys

    from edgekd.torch_io import load_torch_model

    par = sys.modules["edgekd.export.parity"]  # (the package exports a function of that name)

    a = export(tiny_student, "onnx-fp32", store=store, ds=tiny_ds, topk=5, name="chunked-top5")
    model = load_torch_model(tiny_student)
    whole = par.topk_parity(model, a.file, tiny_ds, 5)
    rows, real = [], par.model_scores
    monkeypatch.setattr(par, "chunk_users", lambda n: 7)
    monkeypatch.setattr(par, "model_scores", lambda m, x: rows.append(len(x)) or real(m, x))
    held = []

    class NumpyWatch:  # the module's numpy, noting the memory behind what is concatenated
        def __getattr__(self, name):
            return getattr(np, name)

        def concatenate(self, parts, *a, **k):
            def behind(p):  # the bytes a view keeps alive: its outermost numpy base's
                while isinstance(p.base, np.ndarray):
                    p = p.base
                return p.nbytes
            held.append(sum(behind(p) for p in parts))
            return np.concatenate(parts, *a, **k)

    monkeypatch.setattr(par, "np", NumpyWatch())
    assert par.topk_parity(model, a.file, tiny_ds, 5) == whole and whole["identical_topk_users"] == 1.0
    assert max(rows) == 7 and sum(rows) == whole["users"]
    # torch's reference keeps k columns a user, not each chunk's whole sort (at 510k items a slice
    # of each chunk's argsort kept 4 GB alive)
    assert held[0] <= whole["users"] * 5 * 8


def test_parity_scores_a_chunk_of_users_at_a_time(tiny_student, tiny_ds, store, monkeypatch):
    """The parity check's metrics, in torch and in the file, a chunk of users at a time from the
    first chunk on (at 510k items a first chunk of 256 users took the export to 4.7 GB)."""
    import sys

    from edgekd import metrics
    from edgekd.torch_io import load_torch_model

    par = sys.modules["edgekd.export.parity"]
    a = export(tiny_student, "onnx-fp32", store=store, ds=tiny_ds, name="chunked-parity")
    model = load_torch_model(tiny_student)
    whole = par.parity(model, a.file, tiny_ds)
    rows, real_torch, real_file = [], par.model_scores, sys.modules["edgekd.device_runner"].run_batched
    monkeypatch.setattr(metrics, "MAX_CHUNK_SCORES", 7 * tiny_ds.num_items)
    monkeypatch.setattr(par, "model_scores", lambda m, x: rows.append(len(x)) or real_torch(m, x))
    monkeypatch.setattr(sys.modules["edgekd.device_runner"], "run_batched",
                        lambda m, x, **k: rows.append(len(x)) or real_file(m, x, **k))
    chunked = par.parity(model, a.file, tiny_ds)
    assert chunked.pop("max_abs_diff") < 1e-5 and whole.pop("max_abs_diff") < 1e-5  # float sums vary with the batch
    assert chunked == whole
    assert whole["users"] > 7 and max(rows) == 7


@pytest.mark.parametrize("fmt", ["onnx-fp32", "tflite-fp32", "onnx-int8", "tflite-int8"])
def test_gru4rec_student_exports_with_parity(fmt, tiny_teacher, tiny_ds, store):
    from edgekd.distill import DistillConfig, distill

    name = "tiny-gru-student"
    g = load_artifact(store / name) if (store / name).is_dir() else distill(
        tiny_teacher, tiny_ds, DistillConfig(model="gru4rec", d=8, maxlen=20, epochs=1), store=store, name=name)
    e = export(g, fmt, store=store, ds=tiny_ds)
    p = e.metrics["parity"]
    if fmt.endswith("fp32"):
        assert p["max_abs_diff"] < 1e-4 and p["top10_overlap"] >= 0.99
    else:
        assert p["top10_overlap"] >= 0.8


# What each recipe must put in the file, as `edgekd inspect` reads it back from the file alone.
RECIPE_QUANT = {
    ("onnx", "dynamic"): "dynamic int8", ("onnx", "dynamic-per-channel"): "dynamic int8",
    ("onnx", "static-minmax"): "static int8 (QDQ)", ("onnx", "static-entropy"): "static int8 (QDQ)",
    ("onnx", "static-percentile"): "static int8 (QDQ)",
    ("onnx", "tables-only"): "int8 weights, dequantised in the graph",
    ("tflite", "weight-only"): "weight-only", ("tflite", "weight-only-per-channel"): "weight-only",
    ("tflite", "dynamic"): "dynamic range / hybrid kernels", ("tflite", "fp16"): "fp16 weights",
    ("tflite", "full-int8"): "full integer (int8 activations", ("tflite", "full-int16x8"): "full integer (int16 activations",
}


def test_every_recipe_is_expected_here():
    from edgekd.export import list_recipes

    assert {(r.family, r.name) for r in list_recipes()} == set(RECIPE_QUANT)


@pytest.mark.parametrize("family,recipe", sorted(RECIPE_QUANT))
def test_each_recipe_makes_the_file_it_says(tiny_student, tiny_ds, store, family, recipe):
    from edgekd.device_runner import load_model, run_batched
    from edgekd.export import get_recipe
    from edgekd.inspection import inspect_path

    rec = get_recipe(family, recipe)
    fmt = {"onnx": "onnx-int8", "tflite": "tflite-int8"}[family] if rec.precision == "int8" else f"{family}-{rec.precision}"
    a = export(tiny_student, fmt, store=store, ds=tiny_ds, recipe=recipe, name=f"recipe-{family}-{recipe}")
    info = inspect_path(a.path)
    assert RECIPE_QUANT[(family, recipe)] in info["quantization"], info["quantization"]
    if (family, recipe) == ("onnx", "tables-only"):
        # only the tables are int8: no run-time activation quantisation, matmuls in fp32
        assert info["quantization_ops"] == [] and "MatMulInteger" not in info["operators"]
    if (family, recipe) in (("onnx", "dynamic"), ("onnx", "dynamic-per-channel")):
        # 7-bit weights (reduce_range, |w| <= 64): u8s8 kernels without VNNI (and ONNX Runtime's minimal
        # builds on x86) sum pairs of products in 16 bits, which full-range weights saturate
        import onnx
        from onnx import numpy_helper

        g = onnx.load(str(a.file)).graph
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        weights = [inits[n.input[1]] for n in g.node if n.op_type == "MatMulInteger" and n.input[1] in inits]
        assert weights and all(w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 64 for w in weights)  # not 127
    assert a.card["recipe"] == recipe and a.card["signature"]["quantization"] == info["quantization"]
    assert {"top10_overlap", "ndcg@10_rel_change"} <= set(a.metrics["parity"])  # recorded, as for every int8 export
    ids = np.zeros((2, 20), dtype=np.int32)
    ids[:, -3:] = [1, 2, 3]
    scores = run_batched(load_model(str(a.file), "auto", threads=1), ids)
    assert scores.shape == (2, tiny_ds.num_items) and np.isfinite(scores).all()


def test_the_runners_top_k_is_computed_a_chunk_of_users_at_a_time(monkeypatch):
    """The bench's accuracy pass never holds users x items scores (31k x 15k: 1.9 GB, 11 GB to sort)."""
    import numpy as np

    from edgekd import device_runner as dr

    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 40)).astype(np.float32)

    class Fake:
        fixed_batch = 0
        calls = []

        def __call__(self, ids):
            self.calls.append(len(ids))
            return table[ids[:, -1]]

    ids = rng.integers(0, 50, size=(1000, 5))
    seen = np.zeros((1000, 3), dtype=np.int64)
    seen[:, 0] = rng.integers(1, 41, size=1000)
    whole = dr.masked_topk(table[ids[:, -1]], seen, 7)
    monkeypatch.setattr(dr, "SCORE_CHUNK", 40 * 96)  # 96 users' scores at most
    held = []
    real = dr.masked_topk
    monkeypatch.setattr(dr, "masked_topk", lambda s, seen, k: (held.append(s.shape), real(s, seen, k))[1])
    m = Fake()
    got = dr.topk_batched(m, ids, seen, 7, batch=32)
    assert np.array_equal(got, whole)
    assert max(r for r, _ in held) <= 96 and sum(r for r, _ in held) == 1000 and sum(m.calls) == 1000
    # a catalogue wider than SCORE_CHUNK / batch: fewer rows a call than `batch`, from the first
    # call on (at 510k items 256-row calls held a bench runner at 4 GB)
    monkeypatch.setattr(dr, "SCORE_CHUNK", 40 * 10)
    held.clear()
    m.calls.clear()
    assert np.array_equal(dr.topk_batched(m, ids, seen, 7), whole)
    assert max(m.calls) <= 10 and max(r for r, _ in held) <= 10 and sum(m.calls) == 1000


@pytest.mark.parametrize("fmt", ["onnx-fp32", "tflite-fp32"])
def test_the_device_runner_ranks_with_a_topk_graphs_items(fmt, tiny_student, tiny_ds, store, exports):
    """bench's accuracy pass on a top-K file reads its item indices (not its scores as if they
    were the catalogue's), seen items removed: with K = the catalogue, the full file's lists."""
    from edgekd import device_runner as dr
    from edgekd.data import pad_left
    from edgekd.evaluation import eval_inputs

    n = tiny_ds.num_items
    a = export(tiny_student, fmt, store=store, ds=tiny_ds, topk=n, name=f"all-{fmt}")
    x, _, hist = eval_inputs(tiny_ds, "test", 20)
    seen = pad_left([np.unique(h) for h in hist], max(len(h) for h in hist))
    graph, full = dr.load_model(str(a.file), "auto", 1), dr.load_model(str(exports[fmt].file), "auto", 1)
    assert graph.topk_graph and not full.topk_graph
    got, want = dr.topk_batched(graph, x, seen, 10), dr.topk_batched(full, x, seen, 10)
    assert (got == want).all(1).mean() >= 0.98


def test_unseen_of_keeps_the_order_and_pads():
    from edgekd.device_runner import unseen_of

    got = unseen_of(np.array([[5, 3, 9, 1], [2, 4, 6, 8]]), np.array([[0, 3], [0, 0]]), 3)
    assert got.tolist() == [[5, 9, 1], [2, 4, 6]]
    assert unseen_of(np.array([[5, 3]]), np.array([[3, 5]]), 2).tolist() == [[0, 0]]


def test_bench_times_a_topk_export_and_scores_it_from_its_lists(tiny_student, tiny_ds, store, fast_target):
    """A top-K file is benched (it used to be refused): with K = the catalogue its accuracy is
    the full-score export's, and the record says where the figure comes from."""
    from edgekd.bench import bench
    from edgekd.targets import load_target

    n = tiny_ds.num_items
    full = export(tiny_student, "onnx-fp32", store=store, ds=tiny_ds, name="b-full")
    top = export(tiny_student, "onnx-fp32", store=store, ds=tiny_ds, topk=n, name="b-top")
    _, recs = bench([full, top], load_target(str(fast_target)), out=store / "results", rounds=1)
    by = {r["artifact"]["name"]: r for r in recs}
    assert by["b-top"]["status"] == "ok" and by["b-top"]["latency_ms"]["p50_ms"] > 0
    assert by["b-top"]["accuracy"]["ndcg@10"] == pytest.approx(by["b-full"]["accuracy"]["ndcg@10"], abs=0.01)
    assert "in-graph top-K" in by["b-top"]["accuracy"]["note"]


def test_the_drift_reference_scores_a_chunk_of_users_at_a_time(tiny_student, tiny_ds, tmp_path, monkeypatch):
    """At 510k items its chunks of 256 users held the export at 3 GB: chunks follow the catalogue."""
    from edgekd import metrics
    from edgekd.drift_reference import compute_reference
    from edgekd.ranking import ServedModel

    a = export(tiny_student, "onnx-fp32", store=tmp_path, ds=tiny_ds)
    served = ServedModel(load_artifact(a.path))
    whole = compute_reference(served, tiny_ds)
    rows, real = [], served.recommend
    monkeypatch.setattr(metrics, "MAX_CHUNK_SCORES", 7 * tiny_ds.num_items)
    monkeypatch.setattr(served, "recommend", lambda enc, k, **kw: rows.append(len(enc)) or real(enc, k, **kw))
    assert compute_reference(served, tiny_ds) == whole
    assert whole["users"] > 7 and max(rows) == 7


@pytest.mark.parametrize("block", [4, 1024])
def test_the_runners_topk_is_a_true_topk_with_or_without_the_block_prefilter(block, monkeypatch):
    """masked_topk against a full sort of every row, on rows narrower and wider than the block
    prefilter needs (4 * k whole blocks), with ties, NaN, -inf and seen items: the values it
    returns are the row's k largest unseen values, best first, NaN last, each item once."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from edgekd import device_runner as dr

    monkeypatch.setattr(dr, "BLOCK", block)

    @settings(max_examples=60, deadline=None)
    @given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 70 * block), k=st.integers(1, 12),
           ties=st.booleans(), nans=st.floats(0, 0.5))
    def check(seed, n, k, ties, nans):
        rng = np.random.default_rng(seed)
        rows = 3
        s = (rng.integers(-3, 4, size=(rows, n)) if ties else rng.normal(size=(rows, n))).astype(np.float32)
        s[rng.random((rows, n)) < nans] = np.nan
        s[rng.random((rows, n)) < 0.05] = -np.inf
        s[0, -1] = 100.0    # the best item in the columns after the last whole block
        seen = rng.integers(0, n + 1, size=(rows, 4))
        got = dr.masked_topk(s, seen, k)
        masked = s.copy()
        for r in range(rows):
            masked[r, seen[r][seen[r] > 0] - 1] = -np.inf
        want = -np.sort(-masked, axis=1)[:, :min(k, n)]      # NaN sorts last
        assert got.shape == want.shape and got.min() >= 1 and got.max() <= n
        assert all(len(set(row)) == len(row) for row in got.tolist())
        vals = np.take_along_axis(masked, got - 1, 1)
        assert np.array_equal(vals, want, equal_nan=True)

    check()
