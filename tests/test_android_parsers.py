"""Parsers of benchmark_model / onnxruntime_perf_test output, tested on real outputs.

Every file under tests/data/android/ is output the tool printed, copied from the public source named
in SOURCES (only the surrounding markdown/rst was dropped: code fences, and the 3-space rst indent of
the TI sample). Expected numbers below are read off the files by eye; units converted to ms / bytes.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.android import parse_ort_perf_test, parse_tflite_benchmark
from edgekd.errors import BenchError

DATA = Path(__file__).parent / "data" / "android"
MIB = 1024 * 1024

# Where each sample comes from, and which tool version printed it.
SOURCES = {
    "tflite_old_mobilenet_v1_riscv.txt": (
        "https://github.com/NobuoTsukamoto/meta-tensorflow-lite/blob/0f6dac408896487a6302d8fe81299dc942d5697b/"
        "doc/tensorflow-lite-benchmark.md -- benchmark_model on qemuriscv64, mobilenet_v1_1.0_224, "
        "--enable_op_profiling=true; older output (no log prefix, no percentiles, op-profiler tables "
        "after the summary); an earlier revision of the same doc cites TF v2.8.0"),
    "tflite_tf2x_peak_footprint_issue42507.txt": (
        "https://github.com/tensorflow/tensorflow/issues/42507 (Aug 2020, TF 2.x of that time) -- the "
        "issue's pasted output up to the memory line; the op-profiler tables that follow were not kept. "
        "Prints the memory deltas under their earlier name 'Peak memory footprint (MB): init= overall='"),
    "tflite_new_ssd_mobilenet_v2_am62x.txt": (
        "https://github.com/TexasInstruments/processor-sdk-doc/blob/b04bc774e6d79ff4e9b2805cf150025f8082b716/"
        "source/linux/Foundational_Components/Machine_Learning/tflite.rst -- 'How to run benchmark using "
        "CPU delegate' block, AM62x EVM, TensorFlow Lite 2.18/2.20 from TI's Yocto SDK; newer output "
        "('INFO: ' prefix, p5/median/p95 on the stat lines)"),
    "ort_old_v1.3.1_acl_squeezenet.txt": (
        "https://github.com/ARM-software/ComputeLibrary/issues/850, reposted as "
        "https://github.com/microsoft/onnxruntime/issues/4647 -- onnxruntime_perf_test 1.3.1 (master of "
        "2020-07-09) with the ACL EP, squeezenet1.0-9, first of the two runs pasted"),
    "ort_2020_pr2798_resnet50.txt": (
        "https://github.com/microsoft/onnxruntime/pull/2798 (2020-01-08, the PR adding the session "
        "creation line; ORT master before 1.2) -- resnet50 on Windows; no space after the colons"),
    "ort_new_kleidiai_resnet50v2.txt": (
        "https://github.com/ArmDeveloperEcosystem/arm-learning-paths/blob/234564b54a144ed055ef60e1313ce1a1ca742477/"
        "content/learning-paths/mobile-graphics-and-gaming/performance_onnxruntime_kleidiai_sme2/"
        "profiling_example.md -- first block ('ORT with SME2 support'), recent ORT built with KleidiAI, "
        "run with -s on a C1-Pro core; prints 'Average inference time cost total' and the latency block"),
}


def _read(name: str) -> str:
    return (DATA / name).read_text()


def test_every_sample_has_a_source():
    assert sorted(p.name for p in DATA.glob("*.txt")) == sorted(SOURCES)


# --------------------------------------------------------------------------- benchmark_model


def test_tflite_old_output_with_op_profiler():
    r = parse_tflite_benchmark(_read("tflite_old_mobilenet_v1_riscv.txt"))
    assert r["tool"] == "benchmark_model"
    assert r["format"] == "old"
    assert r["init_ms"] == pytest.approx(17.187)
    assert r["first_inference_ms"] == pytest.approx(3512.391)
    assert r["warmup_avg_ms"] == pytest.approx(3512.39)
    assert r["avg_ms"] == pytest.approx(2950.34)
    # the timed runs' line (count=50 ... std=109798), not the warm-up "count=1 curr=3512391" and not
    # the profiler's "Timings (microseconds): count=50 ... std=109770" printed after the summary
    assert r["runs"] == 50
    assert r["std_ms"] == pytest.approx(109.798)
    assert r["min_ms"] == pytest.approx(2727.568)
    assert r["max_ms"] == pytest.approx(3189.954)
    assert r["p50_ms"] is None and r["p90_ms"] is None and r["p95_ms"] is None and r["p99_ms"] is None
    assert r["model_size_bytes"] == 16_900_800
    assert r["init_memory_delta_bytes"] == 4_415_491  # 4.21094 MiB
    assert r["overall_memory_delta_bytes"] == 48_324_569  # 46.0859 MiB
    assert r["peak_memory_bytes"] is None


def test_tflite_earlier_peak_footprint_wording():
    r = parse_tflite_benchmark(_read("tflite_tf2x_peak_footprint_issue42507.txt"))
    assert r["format"] == "old"
    assert r["init_ms"] == pytest.approx(0.855)
    assert r["first_inference_ms"] == pytest.approx(49.06)
    assert r["warmup_avg_ms"] == pytest.approx(34.8251)
    assert r["avg_ms"] == pytest.approx(33.2094)
    # count=15 is the warm-up phase; count=50 the timed one
    assert r["runs"] == 50
    assert (r["min_ms"], r["max_ms"], r["std_ms"]) == pytest.approx((32.641, 34.005, 0.45))
    assert r["model_size_bytes"] == 4448
    assert r["init_memory_delta_bytes"] == 0
    assert r["overall_memory_delta_bytes"] == 13_492_237  # 12.8672 MiB
    assert r["peak_memory_bytes"] is None  # that line is a delta, not the periodic-monitor peak


def test_tflite_new_output_with_percentiles():
    r = parse_tflite_benchmark(_read("tflite_new_ssd_mobilenet_v2_am62x.txt"))
    assert r["format"] == "new"
    assert r["init_ms"] == pytest.approx(5.579)
    assert r["first_inference_ms"] == pytest.approx(1357.602)
    assert r["warmup_avg_ms"] == pytest.approx(1357.6)
    assert r["avg_ms"] == pytest.approx(1240.27)
    # the timed line, not the warm-up "count=1 curr=1357602 p5=1357602 median=1357602 p95=1357602"
    assert r["runs"] == 50
    assert r["std_ms"] == pytest.approx(2.565)
    assert r["min_ms"] == pytest.approx(1238.588)
    assert r["max_ms"] == pytest.approx(1252.566)
    assert r["p50_ms"] == pytest.approx(1239.807)
    assert r["p95_ms"] == pytest.approx(1247.415)
    assert r["p90_ms"] is None and r["p99_ms"] is None
    assert r["model_size_bytes"] == 67_312_800
    assert r["init_memory_delta_bytes"] == 6_672_383  # 6.36328 MiB
    assert r["overall_memory_delta_bytes"] == 115_167_199  # 109.832 MiB
    assert r["peak_memory_bytes"] is None


def test_tflite_delegate_settings_the_tool_echoes():
    # the TI sample ran with --use_xnnpack=false and says "Use xnnpack: [0]"; the old one says nothing
    assert parse_tflite_benchmark(_read("tflite_new_ssd_mobilenet_v2_am62x.txt"))["delegates_reported"] == {
        "xnnpack": False}
    assert parse_tflite_benchmark(_read("tflite_old_mobilenet_v1_riscv.txt"))["delegates_reported"] is None
    # the gpu and NNAPI providers' LogParams wording ("Use gpu", "Use NNAPI"), on a line of its own
    text = _read("tflite_new_ssd_mobilenet_v2_am62x.txt").replace(
        "INFO: Use xnnpack: [0]", "INFO: Use gpu: [1]\nINFO: Use NNAPI: [1]")
    assert parse_tflite_benchmark(text)["delegates_reported"] == {"gpu": True, "nnapi": True}


def test_tflite_periodic_peak_and_memory_status_block():
    # No complete public output with the periodic-monitor line was found. These five lines are quoted
    # verbatim from a public script's pasted TF 2.11 benchmark_model output (the line's format is
    # benchmark_model.cc's "Overall peak memory footprint (MB) via periodic monitoring: " << peak_mem_mb);
    # here they are appended to the TI sample to check that the peak is read and the block is ignored.
    tail = ("INFO: Overall peak memory footprint (MB) via periodic monitoring: 13.1797\n"
            "INFO: Memory status at the end of exeution: \n"
            "INFO: - VmRSS              : 13 MB\n"
            "INFO: + RssAnnon           : 7 MB\n"
            "INFO: + RssFile + RssShmem : 6 MB\n")
    r = parse_tflite_benchmark(_read("tflite_new_ssd_mobilenet_v2_am62x.txt") + tail)
    assert r["peak_memory_bytes"] == 13_819_917  # 13.1797 MiB
    assert r["overall_memory_delta_bytes"] == 115_167_199
    assert r["avg_ms"] == pytest.approx(1240.27)


def test_tflite_windows_line_endings():
    text = _read("tflite_new_ssd_mobilenet_v2_am62x.txt").replace("\n", "\r\n")
    r = parse_tflite_benchmark(text)
    assert r["avg_ms"] == pytest.approx(1240.27) and r["p50_ms"] == pytest.approx(1239.807)


def _cut_before(text: str, marker: str) -> str:
    i = text.index(marker)
    return text[:text.rindex("\n", 0, i) + 1]


@pytest.mark.parametrize("name", ["tflite_old_mobilenet_v1_riscv.txt", "tflite_new_ssd_mobilenet_v2_am62x.txt"])
def test_tflite_crash_before_timings_names_the_last_line(name):
    text = _cut_before(_read(name), "Running benchmark for at least") + "ERROR: Failed to allocate tensors!\n"
    with pytest.raises(BenchError) as e:
        parse_tflite_benchmark(text)
    assert str(e.value) == ("benchmark_model: no inference timings in its output; "
                            "last line: 'ERROR: Failed to allocate tensors!'")


def test_tflite_crash_after_warmup_is_not_taken_for_a_result():
    # the warm-up phase's stat line printed, then the tool died: its count= line must not pass as
    # the timed runs
    text = _cut_before(_read("tflite_new_ssd_mobilenet_v2_am62x.txt"), "INFO: Running benchmark for at least 50")
    text += "ERROR: Benchmarking failed.\n\n"
    with pytest.raises(BenchError, match=r"last line: 'ERROR: Benchmarking failed\.'$"):
        parse_tflite_benchmark(text)


def test_tflite_empty_output():
    with pytest.raises(BenchError, match=r"^benchmark_model: no inference timings in its output; last line: ''$"):
        parse_tflite_benchmark("\n \n")


# --------------------------------------------------------------------------- onnxruntime_perf_test


def test_ort_old_output():
    r = parse_ort_perf_test(_read("ort_old_v1.3.1_acl_squeezenet.txt"))
    assert r["tool"] == "onnxruntime_perf_test"
    assert r["format"] == "old"
    assert r["init_ms"] == pytest.approx(127.918)
    assert r["avg_ms"] == pytest.approx(144.871)
    assert r["runs"] == 10
    assert r["peak_memory_bytes"] == 158_171_136
    for key in ("first_inference_ms", "warmup_avg_ms", "std_ms", "min_ms", "max_ms", "p50_ms", "p90_ms",
                "p95_ms", "p99_ms", "init_memory_delta_bytes", "overall_memory_delta_bytes", "model_size_bytes"):
        assert r[key] is None, key


def test_ort_2020_output_without_spaces():
    r = parse_ort_perf_test(_read("ort_2020_pr2798_resnet50.txt"))
    assert r["format"] == "old"
    assert r["init_ms"] == pytest.approx(1841.49)
    assert r["avg_ms"] == pytest.approx(734.606)
    assert r["runs"] == 1
    assert r["peak_memory_bytes"] is None


def test_ort_new_output_with_latency_block():
    r = parse_ort_perf_test(_read("ort_new_kleidiai_resnet50v2.txt"))
    assert r["format"] == "new"
    assert r["init_ms"] == pytest.approx(217.932)
    assert r["first_inference_ms"] == pytest.approx(196.0)
    assert r["avg_ms"] == pytest.approx(98.961997)
    assert r["runs"] == 5
    assert r["peak_memory_bytes"] == 271_122_432
    assert r["min_ms"] == pytest.approx(95.8204)
    assert r["max_ms"] == pytest.approx(101.519)
    assert r["p50_ms"] == pytest.approx(99.5086)
    assert r["p90_ms"] == pytest.approx(101.519)
    assert r["p95_ms"] == pytest.approx(101.519)
    assert r["p99_ms"] == pytest.approx(101.519)
    assert r["std_ms"] is None and r["warmup_avg_ms"] is None and r["model_size_bytes"] is None


def test_ort_old_latency_wording():
    # the "P50 Latency is X sec" form of older builds (format string from ORT's performance_runner.h;
    # values from the output quoted in https://github.com/microsoft/onnxruntime/issues/17313)
    text = _read("ort_old_v1.3.1_acl_squeezenet.txt") + "P50 Latency is 0.0587108 sec\nP90 Latency is 0.0599845sec\n"
    r = parse_ort_perf_test(text)
    assert r["p50_ms"] == pytest.approx(58.7108)
    assert r["p90_ms"] == pytest.approx(59.9845)


def test_ort_crash_names_the_last_line():
    text = _cut_before(_read("ort_new_kleidiai_resnet50v2.txt"), "First inference time cost")
    text += "ERROR: Failed to allocate tensors!\n"
    with pytest.raises(BenchError) as e:
        parse_ort_perf_test(text)
    assert str(e.value) == ("onnxruntime_perf_test: no inference timings in its output; "
                            "last line: 'ERROR: Failed to allocate tensors!'")
