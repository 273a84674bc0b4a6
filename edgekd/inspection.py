"""`edgekd inspect` (a module not named inspect: it would shadow the standard library
for scripts run from this directory, such as the device runner): what is in a model file: its signature, operators, size and how it is
quantised, read from the file itself (and, for an artifact directory, its card)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import ArtifactError


def inspect_path(path: Path) -> dict:
    p = Path(path)
    card = None
    if p.is_dir():
        from .artifact import load_artifact

        a = load_artifact(p)
        card, p = a.card, a.file
    if not p.is_file():
        raise ArtifactError(f"{p}: no such file")
    kind = p.suffix
    if kind == ".onnx":
        info = inspect_onnx(p)
    elif kind == ".ort":
        info = inspect_ort(p)
    elif kind == ".tflite":
        info = inspect_tflite(p)
    elif kind == ".safetensors":
        info = inspect_safetensors(p)
    else:
        raise ArtifactError(f"{p}: not a model file edgekd knows (.onnx, .ort, .tflite, .safetensors)")
    info = {"file": str(p), "size_bytes": p.stat().st_size, **info}
    if card:
        info["artifact"] = {k: card.get(k) for k in ("name", "stage", "format", "sha256", "arch", "params")}
        info["artifact"]["parent"] = [x.get("name") for x in card.get("parent", [])]
        if "parity" in card.get("metrics", {}):
            info["artifact"]["parity"] = card["metrics"]["parity"]
    return info


def _bytes_by_dtype(arrays) -> dict:
    out: Counter = Counter()
    for dtype, nbytes in arrays:
        out[str(dtype)] += int(nbytes)
    return dict(out)


def inspect_onnx(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    try:
        m = onnx.load(str(path))
    except Exception as e:  # protobuf's own errors have no common base class
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    init_names = {i.name for i in m.graph.initializer}
    elem = {v: k for k, v in onnx.TensorProto.DataType.items()}

    def sig(values):
        out = []
        for v in values:
            if v.name in init_names:
                continue
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            try:  # numpy's names (float32, int32), as the TFLite side reports them
                dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            except (KeyError, ValueError, TypeError):
                dtype = elem.get(t.elem_type, "?").lower()
            out.append({"name": v.name, "shape": shape, "dtype": dtype})
        return out

    ops = Counter(n.op_type for n in m.graph.node)
    arrays = [(numpy_helper.to_array(i).dtype, numpy_helper.to_array(i).nbytes) for i in m.graph.initializer]
    qops = {"DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear", "DequantizeLinear", "QLinearMatMul",
            "ConvInteger", "QLinearConv"}
    int8 = [i.name for i in m.graph.initializer if numpy_helper.to_array(i).dtype in (np.int8, np.uint8)]
    quant = "none (fp32)"
    if ops.keys() & {"DynamicQuantizeLinear", "MatMulInteger"}:
        quant = "dynamic int8 (int8 weights, activations quantised at run time)"
    elif ops.keys() & {"QuantizeLinear", "QLinearMatMul"}:
        quant = "static int8 (QDQ)"
    elif int8:
        quant = "int8 weights, dequantised in the graph"
    return {
        "format": "onnx", "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": sig(m.graph.input), "outputs": sig(m.graph.output),
        "operators": dict(sorted(ops.items())), "weights_bytes": _bytes_by_dtype(arrays),
        "quantization": quant, "quantization_ops": sorted(ops.keys() & qops), "int8_tensors": len(int8),
    }


def inspect_ort(path: Path) -> dict:
    """An ORT-format model: signature from ONNX Runtime, operators from the required-operators
    config written beside it."""
    import onnxruntime as ort

    try:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: not a readable ORT model ({type(e).__name__})") from None

    def sig(values):
        return [{"name": v.name, "shape": list(v.shape), "dtype": v.type.replace("tensor(", "").rstrip(")")}
                for v in values]

    info = {"format": "ort", "inputs": sig(s.get_inputs()), "outputs": sig(s.get_outputs())}
    config = path.with_name("required_operators.config")
    if config.is_file():
        ops = required_operators(config)
        info["operators"] = {f"{d}:{o}" if d not in ("ai.onnx", "") else o: 1 for d, o in sorted(ops)}
        info["required_operators_config"] = str(config)
        qops = {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "QuantizeLinear"}
        info["quantization"] = ("dynamic int8" if {o for _, o in ops} & qops else "none (fp32)")
    else:
        info["operators"], info["quantization"] = {}, "unknown (no required_operators.config beside it)"
    return info


def inspect_tflite(path: Path) -> dict:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    try:
        it = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path}: not a readable TFLite model ({e})") from None

    def sig(details):
        return [{"name": d["name"], "shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
                for d in details]

    ops = Counter(o["op_name"] for o in it._get_ops_details())
    weights = []
    try:
        from ai_edge_litert.tools import flatbuffer_utils as fu

        m = fu.read_model(str(path))
        types = {v: k for k, v in vars(__import__("ai_edge_litert.schema_py_generated", fromlist=["TensorType"]).TensorType).items()
                 if not k.startswith("_")}
        for t in m.subgraphs[0].tensors:
            b = m.buffers[t.buffer]
            if b.data is not None and len(b.data):
                weights.append((types.get(t.type, t.type), len(b.data)))
    except ImportError:  # tflite-runtime has no flatbuffer reader
        pass
    # Constants and what the kernels compute in (the types of the other tensors): reading a
    # constant works before allocation, reading an activation does not. The ids input is
    # int32 whatever the recipe, so it says nothing.
    ids = {d["index"] for d in it.get_input_details()}
    const, act = set(), set()
    for d in it.get_tensor_details():
        if d["index"] in ids:
            continue
        try:
            it.get_tensor(d["index"])
            const.add(np.dtype(d["dtype"]).name)
        except ValueError:
            act.add(np.dtype(d["dtype"]).name)
    if "int16" in act:
        quant = "full integer (int16 activations, int8 weights)"
    elif "int8" in act:
        quant = "full integer (int8 activations and weights)"
    elif "DEQUANTIZE" in ops and "int8" in const:
        quant = "int8 weights, fp32 compute (weight-only)"
    elif "int8" in const:
        quant = "int8 weights (dynamic range / hybrid kernels)"
    elif "float16" in const:
        quant = "fp16 weights"
    else:
        quant = "none (fp32)"
    return {
        "format": "tflite", "inputs": sig(it.get_input_details()), "outputs": sig(it.get_output_details()),
        "operators": dict(sorted(ops.items())), "weights_bytes": _bytes_by_dtype(weights), "quantization": quant,
    }


def inspect_safetensors(path: Path) -> dict:
    from safetensors import safe_open

    tensors, arrays = {}, []
    with safe_open(str(path), "np") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            tensors[k] = {"shape": list(t.shape), "dtype": str(t.dtype)}
            arrays.append((t.dtype, t.nbytes))
    params = sum(int(np.prod(v["shape"])) for v in tensors.values())
    return {"format": "safetensors (torch weights)", "tensors": tensors, "parameters": params,
            "weights_bytes": _bytes_by_dtype(arrays), "quantization": "none (fp32)"}


def to_json(info: dict) -> str:
    return json.dumps(info, indent=2, default=str)


def required_operators(config: Path) -> set[tuple[str, str]]:
    """(domain, op) pairs named by an ORT required-operators config
    (lines: `domain;opset;Op1,Op2,...`)."""
    ops = set()
    for line in Path(config).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, _, names = line.split(";", 2)
        ops |= {(domain, n.strip()) for n in names.split(",") if n.strip()}
    return ops
