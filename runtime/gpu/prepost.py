"""Pre- and postprocessing on the GPU, shared by the TensorRT and ONNX Runtime CUDA backends.

The frame crosses PCIe once, as uint8 (65 KB for 256x256 grey, instead of 256 KB of float32), and
one fused kernel does what :class:`medstream.runtime.preprocess.Preprocessor` does on the CPU:
colour conversion, resize (area when shrinking, bilinear when enlarging, as OpenCV does there),
normalisation and the NCHW/NHWC layout, writing straight into the inference engine's input buffer.
After inference one kernel takes the argmax over the class axis and only the uint8 class map comes
back. Contours and areas are then traced on the host exactly as on the CPU path.

Results equal the CPU path's up to OpenCV's fixed-point rounding (a pixel value may differ by 1
before normalisation), so class maps agree on all but a handful of boundary pixels; the device
check (``benchmarks/gpu_device_check.py``) measures that agreement on the reference models.

Implemented with CuPy (``cupy.RawKernel``, compiled once by NVRTC and cached), imported lazily: a
machine without CuPy falls back to the CPU stages, which every GPU backend also accepts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ContractError, require
from medstream.runtime.postprocess import Postprocessor
from medstream.runtime.preprocess import FrameMismatch, infer_color_order

# Colour operations (source colour order -> model colour order), per output channel c:
COLOR_IDENTITY = 0      # same order: read channel c
COLOR_BGR_TO_GRAY = 1   # from bgr/bgra: OpenCV's fixed-point luma
COLOR_RGB_TO_GRAY = 2   # from rgb/rgba
COLOR_GRAY_TO_3 = 3     # grey replicated into 3 channels
COLOR_SWAP = 4          # bgr<->rgb (also bgra->rgb, rgba->bgr): read channel 2-c
COLOR_DROP_ALPHA = 5    # bgra->bgr, rgba->rgb: read channel c of 4

RESIZE_NONE, RESIZE_LINEAR, RESIZE_AREA = 0, 1, 2
OUT_FLOAT32, OUT_FLOAT16, OUT_UINT8 = 0, 1, 2

# One source file, compiled by NVRTC through CuPy on the GPU. It uses no CUDA headers and only plain
# C++ otherwise, so the test suite also compiles it with the host C++ compiler (with a small prelude
# that defines __global__/__device__ and the thread indices) and checks it against the CPU path.
KERNEL_SOURCE = r"""
__device__ __forceinline__ int ms_min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int ms_max(int a, int b) { return a > b ? a : b; }

// One source pixel converted to model channel c, as OpenCV's cvtColor would produce it (uint8 value).
// Luma coefficients (B, G, R) and shift: OpenCV's fixed-point set, probed at start (they differ by version).
struct ms_luma { int b, g, r, shift; };

__device__ __forceinline__ float ms_src(const unsigned char* src, int pitch, int sc, int x, int y,
                                        int op, int c, ms_luma l) {
    const unsigned char* p = src + (long long)y * pitch + (long long)x * sc;
    if (op == 1 || op == 2) {
        int b = op == 1 ? p[0] : p[2];
        int g = p[1];
        int r = op == 1 ? p[2] : p[0];
        return (float)((b * l.b + g * l.g + r * l.r + (1 << (l.shift - 1))) >> l.shift);
    }
    if (op == 3) return (float)p[0];
    if (op == 4) return (float)p[2 - c];
    return (float)p[c];
}

__device__ __forceinline__ unsigned short ms_half_bits(float f) {
    // float32 -> float16 bits, round to nearest even (no cuda_fp16.h needed).
    unsigned int x = __float_as_uint(f);
    unsigned int sign = (x >> 16) & 0x8000u;
    int exp = (int)((x >> 23) & 0xFF) - 127 + 15;
    unsigned int mant = x & 0x7FFFFFu;
    if (((x >> 23) & 0xFF) == 0xFF) return (unsigned short)(sign | 0x7C00u | (mant ? 0x200u : 0u));
    if (exp >= 31) return (unsigned short)(sign | 0x7C00u);
    if (exp <= 0) {
        if (exp < -10) return (unsigned short)sign;
        mant |= 0x800000u;
        int shift = 14 - exp;
        unsigned int half = mant >> shift;
        unsigned int rem = mant & ((1u << shift) - 1u);
        unsigned int mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (unsigned short)(sign | half);
    }
    unsigned int half = sign | ((unsigned int)exp << 10) | (mant >> 13);
    unsigned int rem = mant & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
    return (unsigned short)half;
}

// Bilinear sample as OpenCV's INTER_LINEAR does it for uint8: half-pixel centres computed in double,
// replicated border, 11-bit weights (1-f rounded first), and the rounding of its SIMD vertical pass.
__device__ float ms_linear(const unsigned char* src, int pitch, int sc, int sw, int sh, int ox, int oy,
                           double scale_x, double scale_y, int op, int c, ms_luma l) {
    double dx = (ox + 0.5) * scale_x - 0.5;
    double dy = (oy + 0.5) * scale_y - 0.5;
    int x0 = (int)floor(dx);
    int y0 = (int)floor(dy);
    float fx = (float)(dx - x0);
    float fy = (float)(dy - y0);
    if (x0 < 0) { x0 = 0; fx = 0.f; }
    if (y0 < 0) { y0 = 0; fy = 0.f; }
    if (x0 >= sw - 1) { x0 = sw - 1; fx = 0.f; }
    if (y0 >= sh - 1) { y0 = sh - 1; fy = 0.f; }
    int x1 = ms_min(x0 + 1, sw - 1);
    int y1 = ms_min(y0 + 1, sh - 1);
    int cx0 = (int)rintf((1.f - fx) * 2048.f), cx1 = 2048 - cx0;
    int cy0 = (int)rintf((1.f - fy) * 2048.f), cy1 = 2048 - cy0;
    int top = (int)ms_src(src, pitch, sc, x0, y0, op, c, l) * cx0 + (int)ms_src(src, pitch, sc, x1, y0, op, c, l) * cx1;
    int bot = (int)ms_src(src, pitch, sc, x0, y1, op, c, l) * cx0 + (int)ms_src(src, pitch, sc, x1, y1, op, c, l) * cx1;
    return (float)(((((top >> 4) * cy0) >> 16) + (((bot >> 4) * cy1) >> 16) + 2) >> 2);
}

// Area average (OpenCV INTER_AREA when shrinking): each output pixel is the mean of the source area
// it covers, partial source pixels weighted by their overlap.
__device__ float ms_area(const unsigned char* src, int pitch, int sc, int sw, int sh, int ox, int oy,
                         float scale_x, float scale_y, int integer_scale, int op, int c, ms_luma l) {
    float fx1 = ox * scale_x, fx2 = fx1 + scale_x;
    float fy1 = oy * scale_y, fy2 = fy1 + scale_y;
    int xa = (int)floorf(fx1), xb = ms_min((int)ceilf(fx2), sw);
    int ya = (int)floorf(fy1), yb = ms_min((int)ceilf(fy2), sh);
    float sum = 0.f, wsum = 0.f;
    for (int y = ya; y < yb; ++y) {
        float wy = fminf((float)(y + 1), fy2) - fmaxf((float)y, fy1);
        if (wy <= 1e-3f) continue;
        float row = 0.f, rw = 0.f;
        for (int x = xa; x < xb; ++x) {
            float wx = fminf((float)(x + 1), fx2) - fmaxf((float)x, fx1);
            if (wx <= 1e-3f) continue;
            row += wx * ms_src(src, pitch, sc, x, y, op, c, l);
            rw += wx;
        }
        sum += wy * row;
        wsum += wy * rw;
    }
    float v = sum / wsum;
    // OpenCV rounds its integer-factor fast path half up, the general path to nearest even.
    return integer_scale ? floorf(v + 0.5f) : rintf(v);
}

extern "C" __global__ void medstream_preprocess(
        const unsigned char* src, int pitch, int src_c, int roi_x, int roi_y, int roi_w, int roi_h,
        int out_h, int out_w, int out_c, int color_op, int mode, int integer_scale,
        const float* a, const float* b, int clip, int nchw, int out_dtype, void* out,
        int luma_b, int luma_g, int luma_r, int luma_shift) {
    ms_luma l = {luma_b, luma_g, luma_r, luma_shift};
    int ox = blockIdx.x * blockDim.x + threadIdx.x;
    int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= out_w || oy >= out_h) return;
    const unsigned char* base = src + (long long)roi_y * pitch + (long long)roi_x * src_c;
    float sx = (float)roi_w / out_w, sy = (float)roi_h / out_h;
    double dsx = (double)roi_w / out_w, dsy = (double)roi_h / out_h;
    for (int c = 0; c < out_c; ++c) {
        float v;
        if (mode == 0) v = ms_src(base, pitch, src_c, ox, oy, color_op, c, l);
        else if (mode == 1) v = ms_linear(base, pitch, src_c, roi_w, roi_h, ox, oy, dsx, dsy, color_op, c, l);
        else v = ms_area(base, pitch, src_c, roi_w, roi_h, ox, oy, sx, sy, integer_scale, color_op, c, l);
        long long idx = nchw ? ((long long)c * out_h + oy) * out_w + ox
                             : ((long long)oy * out_w + ox) * out_c + c;
        if (out_dtype == 2) { ((unsigned char*)out)[idx] = (unsigned char)v; continue; }
        float y = v * a[c] + b[c];
        if (clip) y = fminf(fmaxf(y, 0.f), 1.f);
        if (out_dtype == 0) ((float*)out)[idx] = y;
        else ((unsigned short*)out)[idx] = ms_half_bits(y);
    }
}

// float16 bits -> a key whose unsigned order is the numeric order (so no half arithmetic is needed).
__device__ __forceinline__ unsigned int ms_half_key(unsigned short h) {
    return (h & 0x8000u) ? (unsigned int)(~h & 0xFFFFu) : (unsigned int)(h | 0x8000u);
}

// Class map = argmax over the class axis (first maximum wins, like numpy.argmax).
// channel_stride/pixel_stride in elements: NCHW -> (H*W, 1), NHWC -> (1, C).
extern "C" __global__ void medstream_argmax(const void* logits, int n_classes, int n_pixels,
                                            int channel_stride, int pixel_stride, int in_dtype,
                                            unsigned char* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_pixels) return;
    long long p = (long long)i * pixel_stride;
    int best = 0;
    if (in_dtype == 0) {
        const float* x = (const float*)logits;
        float m = x[p];
        for (int k = 1; k < n_classes; ++k) {
            float v = x[p + (long long)k * channel_stride];
            if (v > m) { m = v; best = k; }
        }
    } else {
        const unsigned short* x = (const unsigned short*)logits;
        unsigned int m = ms_half_key(x[p]);
        for (int k = 1; k < n_classes; ++k) {
            unsigned int v = ms_half_key(x[p + (long long)k * channel_stride]);
            if (v > m) { m = v; best = k; }
        }
    }
    out[i] = (unsigned char)best;
}
"""

_KERNELS: dict[str, Any] = {}


def cupy() -> Any:
    """The ``cupy`` module, or :class:`MissingDependencyError` naming the extra to install."""
    return require("cupy", "gpu", "GPU pre/postprocessing (install the CuPy wheel for your CUDA, e.g. cupy-cuda13x)")


def cupy_available() -> bool:
    try:
        cp = cupy()
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _kernel(name: str) -> Any:
    if name not in _KERNELS:
        cp = cupy()
        module = cp.RawModule(code=KERNEL_SOURCE, options=("--std=c++14",))
        _KERNELS["medstream_preprocess"] = module.get_function("medstream_preprocess")
        _KERNELS["medstream_argmax"] = module.get_function("medstream_argmax")
    return _KERNELS[name]


LUMA_CANDIDATES = ((3735, 19235, 9798, 15),   # OpenCV 5
                   (1868, 9617, 4899, 14))    # OpenCV 4
_LUMA: list[tuple[int, int, int, int]] = []


def luma_coefficients() -> tuple[int, int, int, int]:
    """``(b, g, r, shift)`` with which this OpenCV's ``cvtColor(BGR2GRAY)`` is exactly reproduced.

    OpenCV changed its fixed-point luma between versions; probing it once keeps the GPU path equal
    to the CPU path whichever is installed.
    """
    if not _LUMA:
        import cv2

        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        ref = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.int64)
        b, g, r = (img[..., i].astype(np.int64) for i in range(3))
        chosen = LUMA_CANDIDATES[0]
        for cand in LUMA_CANDIDATES:
            cb, cg, cr, sh = cand
            if np.array_equal((b * cb + g * cg + r * cr + (1 << (sh - 1))) >> sh, ref):
                chosen = cand
                break
        _LUMA.append(chosen)
    return _LUMA[0]


def color_op(have: str, want: str) -> int:
    """Which colour operation turns ``have`` (frame) into ``want`` (model), mirroring ``Preprocessor``."""
    if have == want:
        return COLOR_IDENTITY
    if want == "gray":
        return COLOR_BGR_TO_GRAY if have in ("bgr", "bgra") else COLOR_RGB_TO_GRAY
    if have == "gray":
        return COLOR_GRAY_TO_3
    if (have, want) in (("bgra", "bgr"), ("rgba", "rgb")):
        return COLOR_DROP_ALPHA
    return COLOR_SWAP


def resize_mode(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
    """``(mode, integer_scale)``, chosen as the CPU ``Preprocessor`` chooses OpenCV's interpolation."""
    (sh, sw), (h, w) = src_hw, dst_hw
    if (sh, sw) == (h, w):
        return RESIZE_NONE, 0
    if sh > h and sw >= w:  # INTER_AREA; OpenCV's area mode enlarging an axis is rare and falls to linear here
        return RESIZE_AREA, int(sh % h == 0 and sw % w == 0)
    return RESIZE_LINEAR, 0


def check_gpu_support(contract: ModelContract, backend: str) -> None:
    """Refuse, at load, a contract the GPU pre/postprocessing does not mirror (issue 13), naming each reason.

    The device path does: segmentation by softmax/argmax (or a class map), stretch resize, the
    ``scale_mean_std``, ``window`` and ``range`` normalisations. Not (yet): sigmoid segmentation,
    classification, detection and keypoint decoding (their decoders run on host arrays), letterbox and centre
    crop (the kernel resizes the whole ROI), per-image standardisation (needs a reduction over the frame first).
    """
    problems = []
    out = contract.primary_output
    if contract.task != "segmentation":
        problems.append(f"task {contract.task} (the device path decodes segmentation only)")
    elif out.kind != "mask" and out.activation not in ("softmax", "auto"):
        problems.append(f"output activation {out.activation} (the device kernel takes an argmax)")
    if contract.input.resize != "stretch":
        problems.append(f"input.resize {contract.input.resize} (the device kernel stretches the ROI)")
    if contract.input.normalization.kind == "per_image":
        problems.append("input.normalization per_image (the device kernel applies fixed coefficients)")
    if problems:
        raise ContractError(f"model {contract.model_id} cannot run on the {backend} backend's GPU pre/postprocessing: "
                            + "; ".join(problems),
                            "run it with --backend onnxruntime (the CPU path supports every contract), or change "
                            "those contract fields")


def normalization_coefficients(contract: ModelContract) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(a, b, clip)`` with model input ``= pixel * a[c] + b[c]``: the same fold as ``Preprocessor``."""
    spec = contract.input
    norm, c = spec.normalization, spec.channels
    if norm.kind == "scale_mean_std":
        mean = np.resize(np.asarray(norm.mean, np.float32), c)
        std = np.resize(np.asarray(norm.std, np.float32), c)
        return (norm.scale / std).astype(np.float32), (-mean / std).astype(np.float32), False
    if norm.kind == "range":
        lo, hi = norm.value_range
        return np.full(c, (hi - lo) / 255.0, np.float32), np.full(c, lo, np.float32), False
    span = norm.high - norm.low
    return np.full(c, 1.0 / span, np.float32), np.full(c, -norm.low / span, np.float32), True


class GpuPreprocessor:
    """Frame (host, uint8/uint16) to model input (device), one upload and one kernel.

    Parameters
    ----------
    contract
        As for :class:`~medstream.runtime.preprocess.Preprocessor`.
    out
        Device array to write into (a CuPy view of the engine's bound input buffer, so the engine
        reads it in place); allocated here when ``None``.
    stream
        CuPy stream to work on: the backend's own stream, so pre-, inference and postprocessing run
        in order without host synchronisation.
    roi
        ``(x, y, w, h)`` crop in frame pixels, applied first.
    """

    def __init__(self, contract: ModelContract, out: Any = None, stream: Any = None,
                 roi: tuple[int, int, int, int] | None = None) -> None:
        cp = cupy()
        self.contract = contract
        spec = contract.input
        self.roi = roi
        self.stream = stream if stream is not None else cp.cuda.Stream(non_blocking=True)
        out_dtype = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[spec.dtype]
        shape = (1, spec.channels, spec.height, spec.width) if spec.layout == "NCHW" \
            else (1, spec.height, spec.width, spec.channels)
        if out is None:
            with self.stream:
                out = cp.empty(shape, out_dtype)
        if tuple(out.shape) != shape or out.dtype != out_dtype:
            raise ValueError(f"preprocess output buffer is {out.shape} {out.dtype}, the contract needs {shape} "
                             f"{np.dtype(out_dtype)}")
        self.output = out
        a, b, self._clip = normalization_coefficients(contract)
        self._a, self._b = cp.asarray(a), cp.asarray(b)
        self._dtype_code = {np.dtype(np.float32): OUT_FLOAT32, np.dtype(np.float16): OUT_FLOAT16,
                            np.dtype(np.uint8): OUT_UINT8}[np.dtype(out_dtype)]
        self._pinned: np.ndarray | None = None
        self._frame: Any = None
        self._luma = luma_coefficients()

    def _staging(self, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        cp = cupy()
        if self._pinned is None or self._pinned.shape != shape:
            nbytes = int(np.prod(shape))
            mem = cp.cuda.alloc_pinned_memory(max(1, nbytes))
            self._pinned = np.frombuffer(mem, np.uint8, nbytes).reshape(shape)
            self._pinned_mem = mem  # keeps the pinned allocation alive as long as the view
            with self.stream:
                self._frame = cp.empty(shape, np.uint8)
        return self._pinned, self._frame

    def __call__(self, image: np.ndarray, color_order: str = "gray") -> Any:
        """Enqueue upload + preprocessing of ``image``; returns the device input (reused buffer)."""
        if image.ndim not in (2, 3) or image.dtype not in (np.uint8, np.uint16):
            raise FrameMismatch(f"frame of shape {image.shape} and dtype {image.dtype} cannot be preprocessed",
                                "send HxW or HxWxC uint8/uint16 frames")
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        if image.ndim == 2:
            image = image[:, :, None]
        fh, fw, src_c = image.shape
        x, y, w, h = self.roi if self.roi is not None else (0, 0, fw, fh)
        if x + w > fw or y + h > fh:
            raise FrameMismatch(f"roi {self.roi} does not fit a {fw}x{fh} frame",
                                "fix 'roi' in the config to lie inside the frame")
        spec = self.contract.input
        have = infer_color_order(image, color_order)
        op = color_op(have, spec.color_order)
        mode, integer_scale = resize_mode((h, w), (spec.height, spec.width))
        pinned, frame = self._staging(image.shape)
        np.copyto(pinned, image)
        frame.set(pinned, stream=self.stream)  # async: the source is pinned
        i32 = np.int32
        block = (16, 16, 1)
        grid = ((spec.width + 15) // 16, (spec.height + 15) // 16, 1)
        with self.stream:
            _kernel("medstream_preprocess")(grid, block, (
                frame, i32(fw * src_c), i32(src_c), i32(x), i32(y), i32(w), i32(h),
                i32(spec.height), i32(spec.width), i32(spec.channels), i32(op), i32(mode), i32(integer_scale),
                self._a, self._b, i32(self._clip), i32(spec.layout == "NCHW"), i32(self._dtype_code), self.output,
                *(i32(v) for v in self._luma)))
        return self.output


class GpuPostprocessor(Postprocessor):
    """Argmax on the device; only the uint8 class map is downloaded. Contours and areas as on the CPU.

    Accepts host outputs too (then it is exactly the CPU :class:`Postprocessor`).
    """

    def __init__(self, contract: ModelContract, stream: Any = None, contour_epsilon_px: float = 1.0,
                 max_contours_per_class: int = 16) -> None:
        super().__init__(contract, contour_epsilon_px, max_contours_per_class)
        cp = cupy()
        self.stream = stream if stream is not None else cp.cuda.Stream(non_blocking=True)
        self._d_mask: Any = None
        self._pinned_mask: np.ndarray | None = None

    def _buffers(self, hw: tuple[int, int]) -> tuple[Any, np.ndarray]:
        cp = cupy()
        if self._d_mask is None or tuple(self._d_mask.shape) != hw:
            with self.stream:
                self._d_mask = cp.empty(hw, np.uint8)
            n = hw[0] * hw[1]
            mem = cp.cuda.alloc_pinned_memory(max(1, n))
            self._pinned_mem = mem
            self._pinned_mask = np.frombuffer(mem, np.uint8, n).reshape(hw)
        return self._d_mask, self._pinned_mask

    def class_map(self, outputs: dict[str, Any]) -> np.ndarray:
        """The uint8 class map on the host (a reused pinned buffer: copy to keep)."""
        y = outputs[self.output_name]
        if isinstance(y, np.ndarray):
            return super().class_map(outputs)
        cp = cupy()
        y = y[0] if y.ndim == 4 else y
        nchw = self.class_axis == 1
        hw = tuple(int(s) for s in (y.shape[-2:] if nchw else y.shape[:2]))
        d_mask, host_mask = self._buffers(hw)
        with self.stream:
            if self.kind == "mask":
                d_mask[...] = y.reshape(hw).astype(cp.uint8)
            else:
                if y.dtype not in (np.float32, np.float16):
                    y = y.astype(cp.float32)
                y = cp.ascontiguousarray(y)
                n_classes = int(y.shape[0] if nchw else y.shape[-1])
                n = hw[0] * hw[1]
                strides = (n, 1) if nchw else (1, n_classes)
                i32 = np.int32
                _kernel("medstream_argmax")(((n + 255) // 256,), (256,), (
                    y, i32(n_classes), i32(n), i32(strides[0]), i32(strides[1]),
                    i32(0 if y.dtype == np.float32 else 1), d_mask))
            d_mask.get(stream=self.stream, out=host_mask)
        self.stream.synchronize()
        self.mask = host_mask
        return host_mask


def device_view(ptr: int, shape: tuple[int, ...], dtype: Any, owner: Any = None) -> Any:
    """A CuPy array over device memory owned by someone else (a TensorRT binding, an ORT OrtValue)."""
    cp = cupy()
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    mem = cp.cuda.UnownedMemory(int(ptr), nbytes, owner)
    return cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(mem, 0))


def external_stream(ptr: int) -> Any:
    """A CuPy stream object for a ``cudaStream_t`` created elsewhere (the TensorRT backend's)."""
    return cupy().cuda.ExternalStream(int(ptr))
