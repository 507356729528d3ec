import numpy as np
import pytest

import edgert
from edgert.errors import EdgertError, ShapeError
from edgert.profiler import BenchConfig, LatencyStats, bench_models, total_iterations
from edgert.synth import parse_shape_overrides, synthesize_inputs

from conftest import make_tiny_model


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


@pytest.mark.parametrize("text", ["x", "x:", ":3x4", "x:3xa", "x:0x4"])
def test_bad_shape_overrides(text):
    with pytest.raises(ShapeError, match="bad --shape"):
        parse_shape_overrides([text])


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


def test_bench_config_is_checked(tiny_model):
    with pytest.raises(EdgertError, match="iters must be >= 1"):
        bench_models([str(tiny_model)], BenchConfig(iters=0))
