"""The statistics pass: streaming histograms, and the three methods' thresholds computed from them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from medstream.calibration.stats import (
    N_BINS,
    ActivationStats,
    TensorStats,
    collect_statistics,
    float_tensors,
)


def test_histogram_grows_by_merging_bins_and_keeps_every_count():
    rng = np.random.default_rng(0)
    s = TensorStats()
    a, b = rng.random(10_000, dtype=np.float32), 10 * rng.random(10_000, dtype=np.float32) - 5
    s.update(a)
    top_before = s.top
    s.update(b)
    assert s.hist.sum() == 20_000 and s.hist.size == N_BINS
    assert s.top >= 5 > top_before and s.top / top_before in (2, 4, 8, 16)
    assert s.lo == pytest.approx(float(b.min())) and s.hi == pytest.approx(float(max(a.max(), b.max())))


def test_methods_differ_on_outliers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    x[:5] = 60.0  # five outliers in a million
    s = TensorStats()
    for chunk in np.split(x, 10):
        s.update(chunk)
    assert s.threshold("minmax") == pytest.approx(60.0)
    assert 3.5 < s.threshold("percentile") < 6.0  # 99.99% of |x| lies below ~3.9
    assert 2.0 < s.threshold("entropy") < 30.0
    lo, hi = s.range("percentile")
    assert lo == pytest.approx(-s.threshold("percentile")) and hi == pytest.approx(s.threshold("percentile"))


def test_all_zero_tensor_has_zero_range():
    s = TensorStats()
    s.update(np.zeros(100, np.float32))
    assert s.range("entropy") == (0.0, 0.0) and s.hist[0] == 100


def test_statistics_round_trip_through_npz(tmp_path):
    s = TensorStats()
    s.update(np.linspace(-1, 3, 1000, dtype=np.float32))
    stats = ActivationStats(tensors={"t": s}, frames=7, order=["t"])
    stats.save(tmp_path / "s.npz")
    back = ActivationStats.load(tmp_path / "s.npz")
    assert back.frames == 7 and back.order == ["t"]
    np.testing.assert_array_equal(back.tensors["t"].hist, s.hist)
    assert back.ranges("percentile") == stats.ranges("percentile")


def test_statistics_pass_sees_activations_but_not_weights(tmp_path):
    """Identity over an initializer (as exporters emit) is a weight, not an activation."""
    w = numpy_helper.from_array(np.full((2, 1, 1, 1), 2.0, np.float32), "w")
    nodes = [helper.make_node("Identity", ["w"], ["w_id"], name="id"),
             helper.make_node("Conv", ["x", "w_id"], ["y"], name="conv"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 2, 2])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert float_tensors(model) == ["x", "y", "z"]
    frames = [np.full((1, 1, 2, 2), v, np.float32) for v in (-1.0, 0.5, 1.0)]
    stats = collect_statistics(tmp_path / "m.onnx", "x", iter(frames), progress=False)
    assert stats.frames == 3 and stats.order == ["x", "y", "z"]
    assert stats.ranges("minmax") == {"x": (-1.0, 1.0), "y": (-2.0, 2.0), "z": (0.0, 2.0)}
