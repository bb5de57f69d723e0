"""`medstream run` with no model or source arguments: bundled ultrasound model on the synthetic stream,
and its overlays agree with the phantom's ground truth."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from medstream.runtime.phantom import UltrasoundPhantom
from medstream.runtime.wire import decode_overlay
from tests.cli.test_run_e2e import Sub
from tests.conftest import free_port


@pytest.mark.slow
def test_default_run_overlays_match_the_phantom_truth(bundled_ultrasound, tmp_path):
    port = free_port()
    overlays = Sub(f"tcp://127.0.0.1:{port}", b"overlay", decode_overlay)
    summary = tmp_path / "summary.json"
    # Only --publish (a free port, so parallel runs do not collide), --max-frames and --summary: the rest is
    # the built-in default (synthetic://ultrasound?fps=30, bundled model, auto backend -> CPU here).
    proc = subprocess.run([sys.executable, "-m", "medstream.cli.main", "run", "--publish", f"tcp://127.0.0.1:{port}",
                           "--max-frames", "60", "--summary", str(summary)], capture_output=True, text=True, timeout=180)
    overlays.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ultrasound_unet.onnx" in proc.stderr and "synthetic://ultrasound" in proc.stderr
    s = json.loads(summary.read_text())
    assert s["accounting_ok"] and s["counters"]["received"] == 60
    assert len(overlays.items) >= 20
    phantom = UltrasoundPhantom(seed=0, fps=30.0)
    inter, pred, true = np.zeros(3), np.zeros(3), np.zeros(3)
    for ov in overlays.items:
        assert ov.class_names == ("background", "vessel", "needle")
        truth = phantom.render(ov.seq)[1]
        for k in (1, 2):
            inter[k] += np.count_nonzero((ov.mask == k) & (truth == k))
            pred[k] += np.count_nonzero(ov.mask == k)
            true[k] += np.count_nonzero(truth == k)
    assert true[1] > 0, "the phantom always shows a vessel"
    for k, name in ((1, "vessel"), (2, "needle")):
        if true[k]:  # Dice where the class is in the picture
            dice = 2 * inter[k] / (pred[k] + true[k])
            assert dice >= 0.8, f"{name} Dice {dice:.3f}"
        else:  # the needle may be withdrawn in these two seconds: then almost no pixel may claim it
            assert pred[k] / (len(overlays.items) * 256 * 256) < 1e-3, f"{name} false positives: {pred[k]:.0f} px"
