import numpy as np
import pytest

import edgert
from edgert.errors import EdgertError, InputError, ShapeError
from edgert.profiler import (BenchConfig, LatencyStats, ModelResult, bench_models, disagreement_warning,
                             total_iterations)
from edgert.synth import parse_shape_overrides, synthesize_inputs

from conftest import make_embedding_model, make_tiny_model


def test_latency_stats_in_milliseconds():
    stats = LatencyStats.from_seconds([0.001 * i for i in range(1, 101)])
    assert stats.min == pytest.approx(1.0) and stats.max == pytest.approx(100.0)
    assert stats.mean == pytest.approx(50.5)
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.std == pytest.approx(np.std(np.arange(1, 101)), rel=1e-9)
    with pytest.raises(EdgertError):
        LatencyStats.from_seconds([])


def test_inputs_follow_the_signature(tiny_model):
    feeds = synthesize_inputs(edgert.load(tiny_model), batch=3, seq=7)
    assert feeds["x"].shape == (3, 4) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (3, 7) and feeds["ids"].dtype == np.int64


def test_unresolvable_dims_name_the_fix(tmp_path):
    path = make_tiny_model(tmp_path / "odd.onnx", dims=("n_images", 4), with_ids=False)
    session = edgert.load(path)
    with pytest.raises(ShapeError, match=r"cannot resolve dimension 'n_images'.*--shape x:Nx4"):
        synthesize_inputs(session, batch=1, seq=8)
    feeds = synthesize_inputs(session, batch=1, seq=8, overrides=parse_shape_overrides(["x:5x4"]))
    assert feeds["x"].shape == (5, 4)
    with pytest.raises(ShapeError, match="rank 3"):
        synthesize_inputs(session, batch=1, seq=8, overrides={"x": (1, 2, 3)})


@pytest.mark.parametrize("text", ["x", "x:", ":3x4", "x:3xa", "x:0x4", 5])
def test_bad_shape_overrides(text):
    with pytest.raises(ShapeError, match="bad --shape"):
        parse_shape_overrides([text])
    with pytest.raises(ShapeError, match="must be a list of NAME:DIMxDIM strings, got str"):
        parse_shape_overrides("x:1x4")


def test_bench_one_model_alone(tiny_model):
    seen = []
    config = BenchConfig(batch=2, seq=4, warmup=2, iters=5)
    report = bench_models([str(tiny_model)], config, progress=seen.append)
    assert sum(seen) == total_iterations(1, config) == 7
    (result,) = report.models
    assert not report.interleaved
    assert result.latency_ms == result.alone_latency_ms
    assert result.latency_ms.min <= result.latency_ms.p50 <= result.latency_ms.max
    assert result.items_per_s == pytest.approx(2 * result.throughput_per_s)
    assert result.peak_rss_mb > 0 and result.session_s > 0 and result.first_ms > 0


@pytest.mark.slow
def test_bench_several_models_interleaved(tiny_model, tmp_path):
    other = make_tiny_model(tmp_path / "other.onnx")
    seen = []
    config = BenchConfig(warmup=1, iters=7, block=3, threads=1, spin=False)
    report = bench_models([str(tiny_model), str(other)], config, progress=seen.append)
    assert report.interleaved and sum(seen) == total_iterations(2, config)
    first, second = report.models
    assert first.speedup_vs_first == 1.0
    assert second.speedup_vs_first == pytest.approx(first.latency_ms.p50 / second.latency_ms.p50)
    data = report.to_dict()
    assert set(data["models"][0]["latency_ms"]) == {"min", "mean", "p50", "p90", "p95", "p99",
                                                    "max", "std"}


@pytest.mark.parametrize("fields, message", [
    ({"iters": 0}, r"iters must lie in 1\.\.100000, got 0"),
    ({"iters": 10**12}, r"iters must lie in 1\.\.100000, got 1000000000000"),
    ({"warmup": -1}, r"warmup must lie in 0\.\.100000, got -1"),
    ({"batch": 0}, r"batch must lie in 1\.\.65536, got 0"),
    ({"batch": 10**11}, r"batch must lie in 1\.\.65536"),
    ({"seq": 0}, "seq must be >= 1, got 0"),
    ({"block": 0}, "block must be >= 1, got 0"),
    ({"iters": 2.5}, "iters must be a whole number, got float"),
    ({"batch": "8"}, "batch must be a whole number, got str"),
    ({"seq": True}, "seq must be a whole number, got bool"),
    ({"threads": 100_000}, r"threads must lie in 1\.\.\d+ \(2 per core"),
    ({"threads": "2"}, "threads must be a whole number"),
    ({"device": "tpu"}, "device must be one of cpu, cuda, tensorrt, auto, got 'tpu'"),
    ({"spin": "no"}, "spin must be True or False"),
    ({"shapes": {"x": (0, 4)}}, "shapes must map input names to tuples of sizes >= 1"),
])
def test_bench_config_is_checked(tiny_model, fields, message):
    with pytest.raises(EdgertError, match=message):
        bench_models([str(tiny_model)], BenchConfig(**fields))


@pytest.mark.parametrize("paths, config, progress, message", [
    ("m.onnx", BenchConfig(), None, "paths must be a list of model paths, not one path"),
    ([], BenchConfig(), None, "non-empty list"),
    ([3], BenchConfig(), None, "a model path must be a str or os.PathLike, got int"),
    (["m.onnx"], {"iters": 3}, None, "config must be a BenchConfig, got dict"),
    (["m.onnx"], BenchConfig(), 5, "progress must be callable, got int"),
])
def test_bench_models_arguments_are_checked(paths, config, progress, message):
    with pytest.raises(EdgertError, match=message):
        bench_models(paths, config, progress=progress)


@pytest.mark.slow
def test_bench_sequence_and_memory_are_checked_per_model(tmp_path, monkeypatch):
    model = make_embedding_model(tmp_path / "m.onnx", max_length=16)
    with pytest.raises(InputError, match="sequence length 17 .* longer than the model's max_length 16"):
        bench_models([str(model)], BenchConfig(seq=17, iters=1, warmup=0))
    monkeypatch.setattr("edgert.session.available_memory_bytes", lambda: 10**6)
    # batch 4096 x seq 16: inputs 2 x 512 KiB, output and one hidden state 1 MiB each
    with pytest.raises(InputError, match=r"batch 4096 x sequence 16 needs about 4\.0 MiB \(inputs 1\.0 MiB, "
                                         r"outputs 1\.0 MiB, activations at least 2\.0 MiB\), more than "
                                         r"the 976\.6 KiB of memory available"):
        bench_models([str(model)], BenchConfig(batch=4096, seq=16, iters=1, warmup=0))


@pytest.mark.parametrize("batch, seq", [(0, 8), (1, -1), ("2", 8), (True, 8)])
def test_synthesize_inputs_checks_its_sizes(tiny_model, batch, seq):
    with pytest.raises(EdgertError, match="must be a whole number >= 1"):
        synthesize_inputs(edgert.load(tiny_model), batch=batch, seq=seq)


def result_with_medians(alone: float, interleaved: float) -> ModelResult:
    def stats(p50):
        return LatencyStats(p50, p50, p50, p50, p50, p50, p50, 0.0)
    return ModelResult(path="/models/b.int8.onnx", latency_ms=stats(interleaved), alone_latency_ms=stats(alone),
                       throughput_per_s=0, items_per_s=0, peak_rss_mb=0, rss_increase_mb=0, session_s=0,
                       first_ms=0)


def test_disagreement_warning_says_what_it_means_and_what_to_try():
    slower = disagreement_warning(2, result_with_medians(10.0, 12.3), BenchConfig())
    assert slower == (
        "model 2 (b.int8.onnx) ran 23% slower interleaved with the others than alone (median "
        "10.000 ms alone, 12.300 ms interleaved): the sessions disturb each other (ONNX Runtime's "
        "idle threads spin between runs), so the speedup column is unreliable; rerun with "
        "--no-spin, fewer --threads or more --iters")
    quiet = disagreement_warning(2, result_with_medians(10.0, 12.3), BenchConfig(spin=False, threads=1))
    assert "compete for the same cores" in quiet and quiet.endswith("rerun with more --iters")
    faster = disagreement_warning(1, result_with_medians(10.0, 8.0), BenchConfig())
    assert "ran 20% faster interleaved" in faster and "more --warmup and --iters" in faster
