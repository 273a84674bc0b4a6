"""The adb target's orchestration, end to end, against a stand-in device: a fake `adb` that runs
`shell` commands on this machine and copies files for push/pull, and a fake `benchmark_model`
that prints a real benchmark_model output sample. What is tested is edgekd's side: quoting
through `adb shell`, pushing the tool and the model, taskset and threads, parsing, accuracy from
the same file on the host, and cleaning up. (A real phone is needed to test the phone.)"""
from __future__ import annotations

import json
import subprocess
from dataclasses import replace
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).parent / "data" / "android"

FAKE_ADB = r"""#!/bin/bash
# stand-in for the adb client: one always-connected device, which is this machine
[ "$1" = "-s" ] && shift 2
cmd=$1; shift
case "$cmd" in
  get-state) echo device ;;
  push) cp "$1" "$2" ;;
  pull) cp "$1" "$2" ;;
  shell)
    case "$*" in
      getprop*) echo fake-phone ;;
      *) exec sh -c "$*" ;;
    esac ;;
  *) echo "fake adb: unsupported $cmd" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def android(tmp_path) -> Path:
    adb = tmp_path / "adb"
    adb.write_text(FAKE_ADB)
    adb.chmod(0o755)
    # each stand-in tool prints its arguments to stderr and appends them, one run a line, to tool_args.txt
    tools = {}
    for name, sample in (("benchmark_model", next(SAMPLES.glob("tflite_new_*.txt"))),
                         ("onnxruntime_perf_test", next(SAMPLES.glob("ort_new_*.txt")))):
        tool = tools[name] = tmp_path / name
        tool.write_text(f"#!/bin/sh\necho \"args: $*\" >&2\necho \"$(basename \"$0\") $*\" >> '{tmp_path / 'tool_args.txt'}'\n"
                        f"cat '{sample}'\n")
        tool.chmod(0o755)
    device_dir = tmp_path / "data local tmp"
    device_dir.mkdir()
    t = tmp_path / "phone.toml"
    t.write_text(f'kind = "adb"\nadb = "{adb}"\nserial = "emulator-5554"\nbenchmark_binary = "{tools["benchmark_model"]}"\n'
                 f'perf_test_binary = "{tools["onnxruntime_perf_test"]}"\n'
                 f'remote_dir = "{device_dir}"\nthreads = 2\ntaskset = "1"\nmin_runs = 10\n'
                 'tflite_delegate = "xnnpack"\nonnx_execution_provider = "nnapi"\n')
    return t


def test_tflite_over_adb_parses_the_tool_and_takes_accuracy_from_the_host(android, tiny_student, tiny_ds, store, tmp_path):
    from edgekd.android import parse_tflite_benchmark
    from edgekd.bench import bench
    from edgekd.export import export
    from edgekd.targets import load_target

    e = export(tiny_student, "tflite-fp32", store=store, ds=tiny_ds, name="adb-tflite")
    # the stand-in adb is a local program named by the target file: allowed for this run only
    t = replace(load_target(str(android)), allow_local_commands=True)
    run_dir, recs = bench([e], t, out=tmp_path / "r", teacher=tiny_student)
    by = {r["artifact"]["name"]: r for r in recs}
    assert by["tiny-student"]["status"] == "skipped"  # torch files have no runtime on a phone
    assert "do not run on a phone" in by["tiny-student"]["error"]
    rec = by["adb-tflite"]
    assert rec["status"] == "ok" and rec["timing_source"] == "benchmark_model"
    sample = parse_tflite_benchmark(next(SAMPLES.glob("tflite_new_*.txt")).read_text())
    assert rec["latency_ms"]["p50_ms"] == pytest.approx(sample["p50_ms"] or sample["avg_ms"])
    assert rec["latency_ms"]["mean_ms"] == pytest.approx(sample["avg_ms"])
    assert rec["device"]["ro.product.model"] == "fake-phone"
    assert 0 <= rec["accuracy"]["ndcg@10"] <= 1 and rec["accuracy"]["users"] == tiny_ds.num_users
    # the target's delegate reached the tool as its own flag, and the record says what it ran with
    args = (android.parent / "tool_args.txt").read_text().split()
    assert "--use_xnnpack=true" in args and "--use_gpu=true" not in args
    assert rec["delegate"]["name"] == "xnnpack" and rec["delegate"]["field"] == "tflite_delegate"
    assert rec["delegate"]["flags"] == ["--use_xnnpack=true"]
    assert rec["delegate"]["reported"] == {"xnnpack": False}  # what the (recorded) sample output says
    assert list((android.parent / "data local tmp").iterdir()) == []  # cleaned up on the device


def test_onnx_over_adb_runs_the_execution_provider_of_the_target(android, tiny_student, tiny_ds, store, tmp_path):
    from edgekd.bench import bench
    from edgekd.export import export
    from edgekd.targets import load_target

    e = export(tiny_student, "onnx-fp32", store=store, ds=tiny_ds, name="adb-onnx")
    t = replace(load_target(str(android)), allow_local_commands=True)
    _, recs = bench([e], t, out=tmp_path / "r", teacher=tiny_student)
    rec = {r["artifact"]["name"]: r for r in recs}["adb-onnx"]
    assert rec["status"] == "ok" and rec["timing_source"] == "onnxruntime_perf_test"
    line = (android.parent / "tool_args.txt").read_text().splitlines()[-1].split()
    assert line[0] == "onnxruntime_perf_test" and line[line.index("-e") + 1] == "nnapi"
    assert rec["delegate"] == {"field": "onnx_execution_provider", "name": "nnapi", "flags": ["-e", "nnapi"],
                               "reported": None}


@pytest.mark.parametrize("key,value,allowed", [
    ("tflite_delegate", "hexagon", "cpu, xnnpack, gpu, nnapi"),
    ("tflite_delegate", "gpu; rm -rf /", "cpu, xnnpack, gpu, nnapi"),
    ("tflite_delegate", 1, "cpu, xnnpack, gpu, nnapi"),
    ("onnx_execution_provider", "gpu", "cpu, xnnpack, nnapi"),
    ("onnx_execution_provider", "-e cuda", "cpu, xnnpack, nnapi"),
])
def test_delegates_and_providers_come_from_an_allow_list(key, value, allowed):
    from edgekd.targets import TargetFileError, target_from_dict

    with pytest.raises(TargetFileError) as e:
        target_from_dict("phone", {"kind": "adb", key: value}, "phone.toml")
    assert repr(key) in str(e.value)
    if isinstance(value, str):
        assert f"allowed: {allowed}" in str(e.value)


def test_delegate_fields_default_to_cpu_and_belong_to_adb_targets():
    from edgekd.targets import TargetFileError, target_from_dict

    t = target_from_dict("phone", {"kind": "adb"}, "phone.toml")
    assert (t.tflite_delegate, t.onnx_execution_provider) == ("cpu", "cpu")
    t = target_from_dict("phone", {"kind": "adb", "tflite_delegate": "gpu", "onnx_execution_provider": "xnnpack"}, "x")
    assert (t.tflite_delegate, t.onnx_execution_provider) == ("gpu", "xnnpack")
    with pytest.raises(TargetFileError, match="applies to kind 'adb' only"):
        target_from_dict("pi", {"kind": "ssh", "host": "pi", "tflite_delegate": "xnnpack"}, "pi.toml")


def test_each_delegate_maps_to_the_tools_own_flags():
    from edgekd.bench import android_delegate
    from edgekd.targets import Target

    t = Target(name="phone", kind="adb")
    expect = {"cpu": ["--use_xnnpack=false"], "xnnpack": ["--use_xnnpack=true"], "gpu": ["--use_gpu=true"],
              "nnapi": ["--use_nnapi=true"]}
    for name, flags in expect.items():
        assert android_delegate("tflite", replace(t, tflite_delegate=name))["flags"] == flags
    for name in ("cpu", "xnnpack", "nnapi"):
        assert android_delegate("onnx", replace(t, onnx_execution_provider=name))["flags"] == ["-e", name]


def test_a_missing_benchmark_binary_fails_the_cell_with_one_clear_line(android, tiny_student, tiny_ds, store, tmp_path):
    import os

    from edgekd.export import export

    e = export(tiny_student, "tflite-fp32", store=store, ds=tiny_ds, name="adb-tflite-2")
    text = android.read_text().replace("benchmark_binary = ", 'benchmark_binary = "/nowhere/benchmark_model"\n#')
    android.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "edgekd", "bench", str(e.path), "--teacher", str(tiny_student.path),
                        "--target", str(android), "--results", str(tmp_path / "r"), "--allow-local-commands"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1
    errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr
    rec = json.loads(next((tmp_path / "r").glob("*/adb-tflite-2__phone.json")).read_text())
    assert rec["status"] == "failed" and "benchmark_binary /nowhere/benchmark_model is missing" in rec["error"]
