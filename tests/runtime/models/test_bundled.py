"""The bundled reference models: present, small, self-describing, and accurate on held-out phantom seeds.

Runs without torch. The accuracy thresholds are the issue's (ultrasound mean foreground Dice >= 0.85,
fluoroscopy wire Dice >= 0.80), checked here on 60 held-out frames spread over 3 unseen scenes
(seeds >= 10000, never used in training) to keep the test short; runtime/models/README.md gives the
300-frame numbers and the command that measures them.
"""

from __future__ import annotations

import pytest

from medstream.runtime.contract import read_contract
from medstream.runtime.errors import ConfigError
from medstream.runtime.evaluation import evaluate_model
from medstream.runtime.models import BUNDLED, bundled_model_path
from medstream.runtime.phantom import FluoroscopyPhantom, UltrasoundPhantom

PHANTOMS = {"ultrasound": UltrasoundPhantom, "fluoroscopy": FluoroscopyPhantom}


@pytest.mark.parametrize("name", sorted(PHANTOMS))  # the segmenters; the classifier and detector: tests/export
def test_bundled_model_is_small_and_carries_its_contract(name):
    assert name in BUNDLED
    path = bundled_model_path(name)
    assert path.is_file() and path.stat().st_size < 5_000_000
    contract = read_contract(path)
    assert contract is not None and contract.modality == name and contract.task == "segmentation"
    assert contract.class_names == PHANTOMS[name].CLASSES
    assert (contract.input.height, contract.input.width, contract.input.channels) == (256, 256, 1)
    assert not contract.input.dynamic_batch and not contract.input.dynamic_spatial  # static: TensorRT's best case
    prov = contract.provenance
    assert "phantom seeds 0-" in prov.training_data and prov.seed is not None and "reference_models" in prov.recipe
    assert (path.parent / f"{path.stem}.train.json").is_file()


def test_names_paths_and_unknown_names():
    assert bundled_model_path("Ultrasound") == bundled_model_path("ultrasound")
    path = bundled_model_path("fluoroscopy")
    assert bundled_model_path(str(path)) == path
    with pytest.raises(ConfigError) as err:
        bundled_model_path("cardiac")
    assert "fluoroscopy" in str(err.value) and "ultrasound" in str(err.value)


@pytest.mark.slow
def test_ultrasound_model_meets_the_dice_target_on_held_out_seeds():
    report = evaluate_model(bundled_model_path("ultrasound"), "synthetic://ultrasound?seed=10000&scenes=3", 60)
    assert report.frames == 60
    assert report.mean_foreground_dice >= 0.85, report.to_table()


@pytest.mark.slow
def test_fluoroscopy_model_meets_the_wire_dice_target_on_held_out_seeds():
    report = evaluate_model(bundled_model_path("fluoroscopy"), "synthetic://fluoroscopy?seed=10000&scenes=3", 60)
    assert report.frames == 60
    assert report.dice("wire") >= 0.80, report.to_table()
