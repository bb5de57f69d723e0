"""The GPU pre/postprocessing kernels, run on the CPU.

No GPU here, so the exact kernel source (``prepost.KERNEL_SOURCE``) is compiled with the host C++
compiler behind a small prelude that defines ``__global__``/``__device__``, the thread indices and
``__float_as_uint``, and a driver loop over blocks and threads stands in for the launch. The results
are compared with the CPU path (:class:`Preprocessor` / ``numpy.argmax``), which is what the device
check does with the real kernels on the lent GPU. Where nvcc exists the source is also compiled for
the GPU (PTX) to catch device-only compile errors.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from medstream.runtime.contract import ModelContract
from medstream.runtime.gpu import prepost
from medstream.runtime.preprocess import Preprocessor, infer_color_order
from tests.fixtures.models import tiny_contract

PRELUDE = r"""
#include <math.h>
#include <string.h>
#define __device__
#define __forceinline__ inline
#define __global__
struct ms_dim3 { int x, y, z; };
static ms_dim3 blockIdx, threadIdx, blockDim;
static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
"""

DRIVER = r"""
extern "C" void run_preprocess(int gx, int gy, int bx, int by,
        const unsigned char* src, int pitch, int src_c, int roi_x, int roi_y, int roi_w, int roi_h,
        int out_h, int out_w, int out_c, int color_op, int mode, int integer_scale,
        const float* a, const float* b, int clip, int nchw, int out_dtype, void* out,
        int lb, int lg, int lr, int ls) {
    blockDim.x = bx; blockDim.y = by; blockDim.z = 1;
    for (int j = 0; j < gy; ++j) for (int i = 0; i < gx; ++i)
    for (int ty = 0; ty < by; ++ty) for (int tx = 0; tx < bx; ++tx) {
        blockIdx.x = i; blockIdx.y = j; threadIdx.x = tx; threadIdx.y = ty;
        medstream_preprocess(src, pitch, src_c, roi_x, roi_y, roi_w, roi_h, out_h, out_w, out_c, color_op,
                             mode, integer_scale, a, b, clip, nchw, out_dtype, out, lb, lg, lr, ls);
    }
}
extern "C" void run_argmax(int n_blocks, int block, const void* logits, int n_classes, int n_pixels,
                           int cs, int ps, int dt, unsigned char* out) {
    blockDim.x = block; blockDim.y = 1;
    for (int i = 0; i < n_blocks; ++i) for (int t = 0; t < block; ++t) {
        blockIdx.x = i; threadIdx.x = t;
        medstream_argmax(logits, n_classes, n_pixels, cs, ps, dt, out);
    }
}
"""


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler to emulate the CUDA kernels")
    d = tmp_path_factory.mktemp("kernels")
    src = d / "kernels.cpp"
    src.write_text(PRELUDE + prepost.KERNEL_SOURCE + DRIVER)
    lib = d / "libkernels.so"
    subprocess.run([cxx, "-O1", "-std=c++14", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True,
                   capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def gpu_like_preprocess(lib, contract: ModelContract, image: np.ndarray, color_order: str = "gray",
                        roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Mirror of GpuPreprocessor.__call__ with the kernel run on the CPU."""
    spec = contract.input
    if image.ndim == 2:
        image = image[:, :, None]
    image = np.ascontiguousarray(image)
    fh, fw, src_c = image.shape
    x, y, w, h = roi or (0, 0, fw, fh)
    op = prepost.color_op(infer_color_order(image, color_order), spec.color_order)
    mode, integer = prepost.resize_mode((h, w), (spec.height, spec.width))
    a, b, clip = prepost.normalization_coefficients(contract)
    dtype = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[spec.dtype]
    code = {"float32": prepost.OUT_FLOAT32, "float16": prepost.OUT_FLOAT16, "uint8": prepost.OUT_UINT8}[spec.dtype]
    shape = (1, spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width,
                                                                                       spec.channels)
    out = np.full(shape, 77, dtype)
    i = ctypes.c_int
    lib.run_preprocess(i((spec.width + 15) // 16), i((spec.height + 15) // 16), i(16), i(16),
                       _ptr(image), i(fw * src_c), i(src_c), i(x), i(y), i(w), i(h), i(spec.height), i(spec.width),
                       i(spec.channels), i(op), i(mode), i(integer), _ptr(a), _ptr(b), i(int(clip)),
                       i(int(spec.layout == "NCHW")), i(code), _ptr(out), *(i(v) for v in prepost.luma_coefficients()))
    return out


def _contract(**inp) -> ModelContract:
    data = tiny_contract(64).model_dump()
    data["input"].update(inp)
    return ModelContract.model_validate(data)


def _frame(h: int, w: int, c: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float32)
    img = np.clip(smooth + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)
    if c:
        img = np.stack([img, np.roll(img, 5, 1), 255 - img, np.full_like(img, 200)][:c], axis=-1)
    return img


def _pixel_step(contract: ModelContract) -> float:
    a, _, _ = prepost.normalization_coefficients(contract)
    return float(np.max(np.abs(a)))


CASES = [
    # (name, contract overrides, frame (h, w, channels), colour order of the frame, roi)
    ("same size grey", {}, (64, 64, 0), "gray", None),
    ("area 2x grey", {}, (128, 128, 0), "gray", None),
    ("area non-integer", {}, (150, 100, 0), "gray", None),
    ("linear upscale", {}, (40, 50, 0), "gray", None),
    ("bgr to grey, area", {}, (128, 96, 3), "bgr", None),
    ("rgb to grey, same size", {}, (64, 64, 3), "rgb", None),
    ("bgra to grey", {}, (64, 64, 4), "bgra", None),
    ("grey to rgb NHWC", {"channels": 3, "color_order": "rgb", "layout": "NHWC"}, (128, 128, 0), "gray", None),
    ("bgr to rgb NCHW imagenet", {"channels": 3, "color_order": "rgb",
                                  "normalization": {"kind": "scale_mean_std", "scale": 1 / 255,
                                                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
     (96, 96, 3), "bgr", None),
    ("rgba to rgb", {"channels": 3, "color_order": "rgb"}, (64, 64, 4), "rgba", None),
    ("window with clip", {"normalization": {"kind": "window", "low": 60, "high": 180}}, (128, 128, 0), "gray", None),
    ("uint8 input", {"dtype": "uint8"}, (128, 128, 0), "gray", None),
    ("fp16 input", {"dtype": "float16"}, (100, 80, 0), "gray", None),
    ("roi then area", {}, (200, 240, 0), "gray", (20, 30, 128, 128)),
]


@pytest.mark.parametrize("name,overrides,frame_shape,order,roi", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_cpu_preprocessor(kernels, name, overrides, frame_shape, order, roi):
    contract = _contract(**overrides)
    h, w, c = frame_shape
    image = _frame(h, w, c)
    cpu = Preprocessor(contract, roi=roi)(image, order).copy()
    gpu = gpu_like_preprocess(kernels, contract, image, order, roi)
    assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    diff = np.abs(gpu.astype(np.float64) - cpu.astype(np.float64))
    step = 1.0 if contract.input.dtype == "uint8" else _pixel_step(contract)
    tol = step * 1.0001 + (2e-3 if contract.input.dtype == "float16" else 1e-6)
    # OpenCV's fixed-point rounding may move a pixel by one grey level; nothing more, and rarely.
    assert diff.max() <= tol, f"{name}: max diff {diff.max()} > one grey level ({step})"
    assert (diff > (2e-3 if contract.input.dtype == "float16" else 1e-6)).mean() < 0.02, f"{name}: too many pixels differ"
    if frame_shape[:2] == (contract.input.height, contract.input.width) and contract.input.dtype == "float32":
        np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-6)  # no resize: bit-for-bit the same arithmetic


def test_kernel_fills_every_output_element(kernels):
    contract = _contract(height=37, width=53)  # not multiples of the 16x16 block
    out = gpu_like_preprocess(kernels, contract, _frame(80, 100))
    assert not np.any(out == 77)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_argmax_kernel_equals_numpy(kernels, dtype, layout):
    rng = np.random.default_rng(1)
    n_classes, h, w = 3, 33, 47
    logits = rng.normal(size=(n_classes, h, w)).astype(dtype)
    logits[:, 0, :5] = 0.5  # ties: the first maximum wins, as in numpy
    logits[1, 1, :4] = -0.0
    logits[0, 1, :4] = 0.0
    data = np.ascontiguousarray(logits if layout == "NCHW" else logits.transpose(1, 2, 0))
    n = h * w
    cs, ps = (n, 1) if layout == "NCHW" else (1, n_classes)
    out = np.zeros(n, np.uint8)
    i = ctypes.c_int
    kernels.run_argmax(i((n + 255) // 256), i(256), _ptr(data), i(n_classes), i(n), i(cs), i(ps),
                       i(0 if dtype == np.float32 else 1), _ptr(out))
    expected = np.argmax(logits, axis=0).astype(np.uint8).ravel()
    agree = (out == expected)
    # +0.0 vs -0.0 compare equal in float but not in the fp16 bit-key; nothing else may differ.
    tie_pixels = np.zeros((h, w), bool)
    tie_pixels[1, :4] = True
    assert agree[~tie_pixels.ravel()].all()


def test_half_conversion_matches_numpy(kernels):
    contract = _contract(dtype="float16", normalization={"kind": "scale_mean_std", "scale": 1 / 3.7,
                                                         "mean": [20.0], "std": [0.013]})
    image = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    gpu = gpu_like_preprocess(kernels, contract, image)
    a, b, _ = prepost.normalization_coefficients(contract)
    expected = (image.astype(np.float32) * a[0] + b[0]).astype(np.float16)
    np.testing.assert_array_equal(gpu[0, 0].view(np.uint16), expected.view(np.uint16))


def test_kernel_source_compiles_for_the_gpu(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed: the device check compiles the kernels with NVRTC on the GPU")
    src = tmp_path / "k.cu"
    src.write_text(prepost.KERNEL_SOURCE)
    result = subprocess.run([nvcc, "-ptx", "-std=c++14", "-arch=compute_80", str(src), "-o", str(tmp_path / "k.ptx")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    assert ".entry medstream_preprocess" in ptx and ".entry medstream_argmax" in ptx


@pytest.mark.parametrize("have,want,op", [
    ("gray", "gray", prepost.COLOR_IDENTITY), ("bgr", "gray", prepost.COLOR_BGR_TO_GRAY),
    ("rgba", "gray", prepost.COLOR_RGB_TO_GRAY), ("gray", "rgb", prepost.COLOR_GRAY_TO_3),
    ("bgr", "rgb", prepost.COLOR_SWAP), ("bgra", "rgb", prepost.COLOR_SWAP),
    ("bgra", "bgr", prepost.COLOR_DROP_ALPHA), ("rgb", "rgb", prepost.COLOR_IDENTITY),
])
def test_color_op_table(have, want, op):
    assert prepost.color_op(have, want) == op


def test_resize_mode_follows_the_cpu_choice():
    assert prepost.resize_mode((256, 256), (256, 256)) == (prepost.RESIZE_NONE, 0)
    assert prepost.resize_mode((512, 512), (256, 256)) == (prepost.RESIZE_AREA, 1)
    assert prepost.resize_mode((300, 400), (256, 256)) == (prepost.RESIZE_AREA, 0)
    assert prepost.resize_mode((128, 128), (256, 256)) == (prepost.RESIZE_LINEAR, 0)
