"""The statistics pass: one run of the FP32 model over the calibration frames, every activation observed.

One pass serves every calibration method. For each float tensor of the graph (the input and every
node output) it keeps the exact minimum and maximum and a 2048-bin histogram of ``|x|``; min-max,
percentile and entropy ranges are all computed from those afterwards (:meth:`ActivationStats.ranges`),
so ``--auto`` can try another method without touching the data again, and the cache
(:mod:`medstream.calibration.cache`) stores the statistics rather than one method's answer.

Memory stays flat whatever the number of frames: each frame's activations are folded into the
histograms and dropped (ONNX Runtime's own ``HistogramCalibrater`` keeps every frame's activations
until the end, gigabytes for a U-Net at 256x256 and 200 frames).

The histogram covers ``[0, top]``; when a frame exceeds ``top`` the range doubles and pairs of bins
merge, so bin edges stay exact and the histogram stays 2048 bins (TensorRT's calibrator also
histograms ``|x|`` with 2048 bins and searches thresholds from bin 128 up).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

N_BINS = 2048
N_QUANT_BINS = 128  # int8 magnitude levels the entropy search compares against
DEFAULT_PERCENTILE = 99.99
METHODS = ("entropy", "minmax", "percentile")
STATS_FORMAT = 1


@dataclass
class TensorStats:
    """Running statistics of one tensor."""

    lo: float = math.inf
    hi: float = -math.inf
    top: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS, np.int64))

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        x = np.asarray(x, np.float32)
        finite = x if np.isfinite(x).all() else x[np.isfinite(x)]
        if finite.size == 0:
            return
        self.lo = min(self.lo, float(finite.min()))
        self.hi = max(self.hi, float(finite.max()))
        a = np.abs(finite).ravel()
        amax = float(a.max())
        if self.top == 0.0:
            if amax == 0.0:
                self.hist[0] += a.size
                return
            self.top = amax
        while amax > self.top:
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(N_BINS // 2, np.int64)])
            self.top *= 2.0
        np.multiply(a, N_BINS / self.top, out=a)
        idx = a.astype(np.int64)
        np.minimum(idx, N_BINS - 1, out=idx)
        self.hist += np.bincount(idx, minlength=N_BINS)

    @property
    def amax(self) -> float:
        if not math.isfinite(self.lo):
            return 0.0
        return max(abs(self.lo), abs(self.hi))

    def threshold(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> float:
        """The magnitude to keep (``amax``) for ``method``; never more than the observed maximum."""
        full = self.amax
        if method == "minmax" or self.top == 0.0 or full == 0.0:
            return full
        if method == "percentile":
            cdf = np.cumsum(self.hist) / max(int(self.hist.sum()), 1)
            i = int(np.searchsorted(cdf, percentile / 100.0))
            return min(full, (i + 1) * self.top / N_BINS)
        if method == "entropy":
            return min(full, entropy_threshold(self.hist) * self.top / N_BINS)
        raise ValueError(f"unknown calibration method {method!r}; use one of {METHODS}")

    def range(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
        """``(low, high)``: the observed range clipped to ``±threshold`` (what the quantizer gets)."""
        if not math.isfinite(self.lo):
            return 0.0, 0.0
        t = self.threshold(method, percentile)
        return max(self.lo, -t), min(self.hi, t)


def entropy_threshold(hist: np.ndarray, n_quant: int = N_QUANT_BINS) -> int:
    """The bin count ``i`` (threshold ``i * bin width``) minimising KL(P || Q) for int8 magnitudes.

    For each candidate ``i`` from ``n_quant`` to ``len(hist)``: ``P`` is the histogram cut at ``i``
    with everything above folded into its last bin (what clipping does), ``Q`` is ``P``'s first
    ``i`` bins merged into ``n_quant`` levels and spread back over their non-empty bins (what
    rounding to int8 does). The smallest divergence wins: the threshold that loses least information
    between clipping error and rounding error (Migacz, "8-bit inference with TensorRT", GTC 2017).
    """
    hist = np.asarray(hist, np.float64)
    n = hist.size
    nz = np.flatnonzero(hist)
    if nz.size == 0:
        return n
    last = int(nz[-1]) + 1
    if last <= n_quant:
        return last
    total_above = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # mass in bins >= k
    best_i, best_kl = n, math.inf
    for i in range(n_quant, last + 1):
        p = hist[:i].copy()
        p[-1] += total_above[i]
        group = (np.arange(i) * n_quant) // i
        nonzero = hist[:i] > 0
        sums = np.bincount(group, weights=hist[:i], minlength=n_quant)
        counts = np.bincount(group, weights=nonzero, minlength=n_quant)
        q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        p /= p_sum
        q /= q_sum
        mask = p > 0
        q_m = np.maximum(q[mask], 1e-12)  # a clipped tail with no in-range mass: large but finite cost
        kl = float(np.sum(p[mask] * np.log(p[mask] / q_m)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


@dataclass
class ActivationStats:
    """Statistics of every calibrated tensor, plus how many frames produced them."""

    tensors: dict[str, TensorStats]
    frames: int
    order: list[str] = field(default_factory=list)

    def ranges(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> dict[str, tuple[float, float]]:
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; use one of {METHODS}")
        return {name: self.tensors[name].range(method, percentile) for name in self._names()}

    def _names(self) -> list[str]:
        return self.order or list(self.tensors)

    # ---- persistence (npz: arrays stay exact, no JSON float round-off)
    def save(self, path: Path) -> None:
        names = self._names()
        np.savez_compressed(
            path, format=np.int64(STATS_FORMAT), frames=np.int64(self.frames), names=np.array(names, dtype=str),
            lo=np.array([self.tensors[n].lo for n in names], np.float64),
            hi=np.array([self.tensors[n].hi for n in names], np.float64),
            top=np.array([self.tensors[n].top for n in names], np.float64),
            hist=np.stack([self.tensors[n].hist for n in names]) if names else np.zeros((0, N_BINS), np.int64),
        )

    @classmethod
    def load(cls, path: Path) -> ActivationStats:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != STATS_FORMAT:
                raise ValueError(f"{path}: statistics format {int(data['format'])}, expected {STATS_FORMAT}")
            names = [str(n) for n in data["names"]]
            tensors = {n: TensorStats(lo=float(data["lo"][i]), hi=float(data["hi"][i]), top=float(data["top"][i]),
                                      hist=data["hist"][i].astype(np.int64)) for i, n in enumerate(names)}
            return cls(tensors=tensors, frames=int(data["frames"]), order=names)


# ------------------------------------------------------------------------------------- the pass
def float_tensors(model: Any) -> list[str]:
    """Names of the float activations worth calibrating, in graph order: graph inputs, node outputs."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - custom ops: fall back to what the file declares
        inferred = model
    g = inferred.graph
    initializers = {i.name for i in g.initializer}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.output, *g.value_info)}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    constant = set(initializers)  # tensors computed from weights only (e.g. Identity on an initializer)
    for node in g.node:
        if node.op_type == "Constant" or (node.input and all(not i or i in constant for i in node.input)):
            constant.update(node.output)
    names: list[str] = []
    seen: set[str] = set()
    for vi in g.input:
        if vi.name not in initializers and types.get(vi.name) in floats:
            names.append(vi.name)
            seen.add(vi.name)
    for node in g.node:
        for out in node.output:
            if out and out not in seen and out not in constant and types.get(out, onnx.TensorProto.FLOAT) in floats:
                names.append(out)
                seen.add(out)
    return names


def augmented_session(model_path: Path, names: list[str], threads: int | None):
    """An ORT session on a copy of the model that also outputs every tensor in ``names``."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    existing = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="medstream-calib-") as tmp:
        path = Path(tmp) / "augmented.onnx"
        onnx.save(model, str(path))
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def collect_statistics(model_path: str | Path, input_name: str, inputs: Iterable[np.ndarray], total: int | None = None,
                       progress: bool = True, threads: int | None = None) -> ActivationStats:
    """Run the FP32 model once over ``inputs`` (batch-1 arrays) and fold every activation into statistics.

    Parameters
    ----------
    model_path
        The FP32 ONNX model.
    input_name
        The model input the arrays feed.
    inputs
        Preprocessed model inputs, one frame each; consumed once, lazily.
    total
        Expected frame count, for the progress bar.
    progress
        Show a tqdm progress bar on stderr.
    """
    import onnx
    from tqdm import tqdm

    model_path = Path(model_path)
    names = float_tensors(onnx.load(str(model_path), load_external_data=False))
    session = augmented_session(model_path, names, threads)
    out_names = [o.name for o in session.get_outputs()]
    wanted = set(names)
    stats = {n: TensorStats() for n in names}
    frames = 0
    with tqdm(total=total, desc="calibration statistics", unit="frame", disable=not progress, leave=False) as bar:
        for x in inputs:
            values = session.run(out_names, {input_name: x})
            if input_name in stats:
                stats[input_name].update(x)
            for name, value in zip(out_names, values, strict=True):
                if name in wanted and name != input_name and isinstance(value, np.ndarray) \
                        and value.dtype in (np.float32, np.float16):
                    stats[name].update(value)
            frames += 1
            bar.update(1)
    observed = [n for n in names if math.isfinite(stats[n].lo)]
    return ActivationStats(tensors={n: stats[n] for n in observed}, frames=frames, order=observed)


__all__ = ["DEFAULT_PERCENTILE", "METHODS", "N_BINS", "ActivationStats", "TensorStats", "augmented_session", "collect_statistics",
           "entropy_threshold", "float_tensors"]
