"""Builder pieces that run without a GPU: the missing-builder message and the progress monitor."""

from __future__ import annotations

import logging

import pytest

from medstream.runtime.engine.builder import (
    BuilderUnavailable,
    ProgressLog,
    make_progress_monitor,
    require_builder,
)


def test_missing_builder_names_what_to_install():
    try:
        import tensorrt  # noqa: F401
        pytest.skip("the full tensorrt package is installed here; this checks the message when it is not")
    except ImportError:
        pass
    with pytest.raises(BuilderUnavailable) as err:
        require_builder()
    text = str(err.value)
    assert "pip install 'medstream[tensorrt]'" in text and "JetPack 6" in text
    try:
        import tensorrt_lean

        assert f"tensorrt_lean {tensorrt_lean.__version__}" in text and "cannot build" in text
    except ImportError:
        pass


def test_progress_log_reports_phases_steps_and_cancellation(caplog):
    progress = ProgressLog(logging.getLogger("test.build"), interval_s=0.0)
    with caplog.at_level(logging.INFO, "test.build"):
        progress.phase_start("Building engine", None, 3)
        progress.phase_start("Tactic search", "Building engine", 10)
        progress.phase_start("Layer fusion", "Tactic search", 2)  # depth 2: steps only
        assert progress.step_complete("Tactic search", 0) is True
        progress.phase_finish("Layer fusion")
        progress.phase_finish("Tactic search")
        progress.cancelled = True
        assert progress.step_complete("Building engine", 1) is False
        progress.phase_finish("Building engine")
    text = "\n".join(progress.lines)
    assert "Building engine: started (3 steps)" in text
    assert "  Tactic search: step 1/10" in text
    assert "Tactic search: done in" in text and "Building engine: done in" in text
    assert "Layer fusion: started" not in text
    assert all(line.startswith("[build ") for line in progress.lines)
    assert len(caplog.records) == len(progress.lines)


def test_progress_log_throttles_steps():
    progress = ProgressLog(logging.getLogger("test.build"), interval_s=3600)
    progress.phase_start("Tactic search", None, 1000)
    for step in range(1000):
        progress.step_complete("Tactic search", step)
    assert sum(": step " in line for line in progress.lines) == 1  # the first step, then nothing for an hour


def test_progress_monitor_subclasses_the_real_tensorrt_interface():
    """tensorrt_lean ships IProgressMonitor too, so the subclass is checked against real bindings here."""
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean not installed")
    monitor = make_progress_monitor(trt)
    assert isinstance(monitor, trt.IProgressMonitor)
    monitor.phase_start("Building", None, 2)
    assert monitor.step_complete("Building", 0) is True
    monitor.phase_finish("Building")
    assert any("Building: done" in line for line in monitor.progress.lines)
