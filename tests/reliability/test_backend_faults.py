"""Fault matrix, engine side: one failing or hanging inference costs that frame, not the stream.

A hang longer than the watchdog period ends in a restart by systemd; that end-to-end path is tested by
the service layer (tests/runtime/service/test_notify_e2e.py::test_ready_watchdog_hang_and_stopping).
Here: a hang stops the proof-of-life pings the watchdog observer relies on, and frames resume after it.
"""

from __future__ import annotations

from tests.reliability._helpers import Outcomes, assert_accounting, make_pipeline


def test_backend_error_drops_that_frame_and_the_next_one_runs(tiny_model, endpoint):
    obs = Outcomes()
    pipe = make_pipeline(tiny_model, endpoint, "synthetic://ultrasound?fps=40&width=64&height=64&frames=24",
                         observers=[obs], inject={"error_every": 3})
    summary = pipe.run()
    pipe.publisher.close()
    outcomes = [o for _, o, _ in obs.outcomes]
    failures = [i for i, o in enumerate(outcomes) if o == "backend_error"]
    assert len(failures) >= 6
    assert all(outcomes[i + 1] == "processed" for i in failures if i + 1 < len(outcomes))
    assert summary["counters"]["dropped"]["backend_error"] == len(failures)
    assert_accounting(summary)


def test_a_hung_inference_stops_progress_pings_then_the_stream_continues(tiny_model, endpoint):
    obs = Outcomes()
    pipe = make_pipeline(tiny_model, endpoint, "synthetic://ultrasound?fps=50&width=64&height=64",
                         observers=[obs], inject={"hang_at_seq": 20, "hang_s": 1.2})
    summary = pipe.run(duration_s=3.0)
    pipe.publisher.close()
    gaps = [(b - a, a) for a, b in zip(obs.progress, obs.progress[1:], strict=False)]
    long_gaps = [g for g in gaps if g[0] > 0.5]
    assert len(long_gaps) == 1 and long_gaps[0][0] >= 1.1, "exactly one silence: the hung frame"
    t_hang_end = long_gaps[0][1] + long_gaps[0][0]
    after = [o for t, o, _ in obs.outcomes if t > t_hang_end + 0.05]
    assert after.count("processed") > 20, "frames flow again after the hang without a restart"
    # Frames that arrived during the hang were superseded by newer ones, each counted.
    assert summary["counters"]["dropped"].get("superseded", 0) >= 40
    assert_accounting(summary)
