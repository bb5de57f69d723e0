"""The training loop: reproducible for a seed, trains on a user's folder, keeps train/serve preprocessing equal."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medstream.cli.main import main  # noqa: E402
from medstream.export.train import BatchSampler, TrainConfig, fit_geometry, phantom_frames, train  # noqa: E402
from medstream.runtime.contract import read_contract, resolve_contract  # noqa: E402
from medstream.runtime.evaluation import evaluate_model  # noqa: E402
from medstream.runtime.phantom import UltrasoundPhantom  # noqa: E402
from medstream.runtime.preprocess import Preprocessor  # noqa: E402

pytestmark = pytest.mark.torch


def tiny(**kw) -> TrainConfig:
    base = dict(kind="ultrasound", train_seeds=2, frames_per_seed=3, val_seeds=1, val_frames_per_seed=2, size=64,
                crop=32, batch=2, full_frame_batch=2, steps=6, full_frame_steps=2, eval_every=3, base=4, depth=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_same_seed_same_weights_and_log():
    a, b = train(tiny(), progress=lambda s: None), train(tiny(), progress=lambda s: None)
    for (name, ta), tb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name
    assert [e.loss for e in a.log] == [e.loss for e in b.log] and len(a.log) == 2
    c = train(tiny(seed=1), progress=lambda s: None)
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def test_training_input_equals_the_runtime_preprocessor():
    """fit_geometry + the sampler's x = pixel * a + b is exactly what Preprocessor feeds the model."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (120, 90), dtype=np.uint8)
    fitted, fitted_mask = fit_geometry(image, mask, 64, "rgb")
    assert set(np.unique(fitted_mask)) <= {0, 1, 2}
    contract = resolve_contract(None, {
        "model_id": "m", "input": {"name": "image", "height": 64, "width": 64,
                                   "normalization": {"scale": 1 / 255, "mean": [0.3], "std": [0.2]}},
        "outputs": [{"name": "logits"}], "classes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "m")
    frames = phantom_frames("ultrasound", range(1), 1, 64, rng)
    sampler = BatchSampler(frames, 3, 1 / 255, 0.3, 0.2, rng, vflip=False, fg_fraction=0.5)
    ours = fitted.astype(np.float32) * sampler.a + sampler.b
    np.testing.assert_allclose(ours, Preprocessor(contract)(image, "rgb")[0, 0], atol=1e-6)
    x, y = sampler.sample(3, 32)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32 and y.shape == (3, 32, 32) and y.dtype == np.int64


@pytest.mark.slow
def test_train_cli_on_a_user_folder_then_reexport_the_weights(tmp_path, capsys):
    data = tmp_path / "frames"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    phantom = UltrasoundPhantom(height=96, width=96, seed=3)  # not the model size: frames get resized
    for i in range(12):
        image, mask = phantom.render(40 * i)
        np.save(data / "images" / f"f{i:02d}.npy", image)
        np.save(data / "masks" / f"f{i:02d}.npy", mask)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--classes", "background,vessel,needle", "--out", str(out),
               "--steps", "4", "--size", "64", "--seed", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "proof: ONNX Runtime vs PyTorch" in printed
    contract = read_contract(out / "model.onnx")
    assert contract.class_names == ("background", "vessel", "needle") and contract.input.height == 64
    assert str(data.resolve()) in contract.provenance.training_data and contract.provenance.seed == 5
    log = json.loads((out / "model.train.json").read_text())
    assert log["steps"] == 4 and log["epochs"][-1]["step"] == 4 and log["model_sha256"]
    report = evaluate_model(out / "model.onnx", str(data), frames=3, intra_op_threads=1)
    assert report.frames == 3 and 0.0 <= report.pixel_accuracy <= 1.0
    # The printed re-export recipe works on the saved state_dict.
    rc = main(["export", "--model", "medstream.export.unet:UNet", "--model-kwargs", '{"n_classes": 3}',
               "--weights", str(out / "model.pt"), "--input-shape", "1,1,64,64", "--classes",
               "background,vessel,needle", "--proof-frames", "1", "--out", str(tmp_path / "again.onnx")])
    assert rc == 0
