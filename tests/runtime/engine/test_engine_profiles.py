"""Optimization profile shapes derived from the model contract."""

from __future__ import annotations

import pytest

from medstream.runtime.engine.profiles import profile_from_contract
from medstream.runtime.errors import ContractError
from tests.fixtures.gpu_models import conv_contract


def test_static_contract_gives_a_single_point_profile():
    p = profile_from_contract(conv_contract(256))
    assert p.name == "input" and p.min == p.opt == p.max == (1, 1, 256, 256)


def test_dynamic_batch_and_spatial_from_contract_flags():
    p = profile_from_contract(conv_contract(256, dynamic=True), max_batch=8)
    assert p.opt == (1, 1, 256, 256)
    assert p.min == (1, 1, 128, 128) and p.max == (8, 1, 512, 512)
    assert p.contains((4, 1, 256, 384)) and not p.contains((9, 1, 256, 256))


def test_network_dims_decide_which_axes_are_dynamic():
    p = profile_from_contract(conv_contract(256), (-1, 1, 256, 256), max_batch=2)
    assert p.min == (1, 1, 256, 256) and p.max == (2, 1, 256, 256)
    q = profile_from_contract(conv_contract(200), (1, 1, -1, -1), spatial_multiple=32)
    assert q.opt == (1, 1, 200, 200)
    assert q.min[2] % 32 == 0 and q.min[2] <= 200 <= q.max[2] and q.max[2] % 32 == 0


def test_nhwc_layout_uses_the_right_axes():
    data = conv_contract(128, dynamic=True).model_dump()
    data["input"]["layout"] = "NHWC"
    from medstream.runtime.contract import ModelContract

    p = profile_from_contract(ModelContract.model_validate(data))
    assert p.opt == (1, 128, 128, 1) and p.max == (4, 256, 256, 1) and p.min[3] == 1


def test_fixed_network_dimension_contradicting_the_contract_is_refused():
    with pytest.raises(ContractError, match="dimension 2 = 512, the contract says 256"):
        profile_from_contract(conv_contract(256), (1, 1, 512, -1))
    with pytest.raises(ContractError, match="rank 3"):
        profile_from_contract(conv_contract(256), (1, 256, 256))
