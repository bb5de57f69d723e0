"""Optimization profile shapes (min/opt/max) for TensorRT, derived from the model contract.

TensorRT compiles kernels for a range of input shapes per profile; a shape outside the range makes
``set_input_shape`` fail at run time, which is how other tools end up rebuilding engines mid-stream.
medstream decides the range once, from the contract: the contract's own size is the optimum, a
dynamic batch spans ``1..max_batch``, and a dynamic spatial size spans ``min_scale..max_scale`` of the
contract's height and width, rounded to multiples the network's down-sampling can take.
"""

from __future__ import annotations

from dataclasses import dataclass

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ContractError


@dataclass(frozen=True)
class ProfileShapes:
    """One input's shape range for one optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.opt) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max,
                                                                                     strict=True))

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _round_down(v: int, m: int) -> int:
    return max(m, (v // m) * m)


def _round_up(v: int, m: int) -> int:
    return ((v + m - 1) // m) * m


def contract_shape(contract: ModelContract, batch: int = 1) -> tuple[int, int, int, int]:
    """The contract's input shape with batch ``batch``, in the contract's layout."""
    spec = contract.input
    if spec.layout == "NCHW":
        return (batch, spec.channels, spec.height, spec.width)
    return (batch, spec.height, spec.width, spec.channels)


def profile_from_contract(contract: ModelContract, network_dims: tuple[int, ...] | None = None, *,
                          max_batch: int = 4, min_scale: float = 0.5, max_scale: float = 2.0,
                          spatial_multiple: int = 32) -> ProfileShapes:
    """Profile shapes for the contract's input.

    Parameters
    ----------
    network_dims
        The input dims as the parsed network reports them (``-1`` for dynamic axes). When given, only
        those axes get a range (others are fixed by the network; a fixed axis that disagrees with
        the contract is refused); when ``None``, the contract's ``dynamic_batch`` and
        ``dynamic_spatial`` flags decide.
    max_batch, min_scale, max_scale, spatial_multiple
        Range of a dynamic batch and of dynamic height/width (relative to the contract's size,
        rounded to ``spatial_multiple``; the contract's own size is always inside).

    Raises
    ------
    ContractError
        The network's rank or a fixed dimension contradicts the contract.
    """
    spec = contract.input
    opt = contract_shape(contract)
    nchw = spec.layout == "NCHW"
    h_axis, w_axis, c_axis = (2, 3, 1) if nchw else (1, 2, 3)
    if network_dims is None:
        dynamic = {0: spec.dynamic_batch, h_axis: spec.dynamic_spatial, w_axis: spec.dynamic_spatial, c_axis: False}
    else:
        dims = tuple(int(d) for d in network_dims)
        if len(dims) != 4:
            raise ContractError(f"network input {spec.name!r} has rank {len(dims)} ({dims}); the contract expects 4 "
                                f"({spec.layout})", "check contract.input.layout or re-export the model")
        for axis, (got, want) in enumerate(zip(dims, opt, strict=True)):
            if got >= 0 and axis != 0 and got != want:
                raise ContractError(
                    f"network input {spec.name!r} has dimension {axis} = {got}, the contract says {want} "
                    f"(shape {dims} vs {opt}, layout {spec.layout})",
                    "fix contract.input (height/width/channels/layout) or re-export the model")
        dynamic = {axis: d < 0 for axis, d in enumerate(dims)}
        if dynamic[c_axis]:
            dynamic[c_axis] = False  # channels are never a range: fixed at the contract's value
    lo, hi = list(opt), list(opt)
    if dynamic[0]:
        lo[0], hi[0] = 1, max(1, int(max_batch))
    elif network_dims is not None and network_dims[0] > 0:
        lo[0] = hi[0] = int(network_dims[0])
        opt = (lo[0],) + tuple(opt[1:])
    for axis in (h_axis, w_axis):
        if dynamic[axis]:
            size = opt[axis]
            lo[axis] = min(size, _round_down(int(size * min_scale), spatial_multiple))
            hi[axis] = min(8192, max(size, _round_up(int(size * max_scale), spatial_multiple)))
    return ProfileShapes(spec.name, tuple(lo), tuple(opt), tuple(hi))


def is_dynamic(network_dims: tuple[int, ...]) -> bool:
    return any(int(d) < 0 for d in network_dims)
