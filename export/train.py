"""Train a segmentation U-Net on frames + masks (the phantom, or your own folder), then export it with proof.

The same loop trains the bundled reference models (:mod:`medstream.export.reference_models`) and a
user's model on their own recordings (``medstream train --data DIR``); only the frame provider differs.

Design choices, and why
-----------------------
* **Train/serve parity.** Frames are brought to the model's geometry with the runtime's own
  :class:`~medstream.runtime.preprocess.Preprocessor` rules (colour conversion, INTER_AREA when
  shrinking) and normalised with the contract's ``scale/mean/std``; the contract written into the
  ONNX file is the one training used, so the runtime feeds the model what it was trained on.
* **Fixed steps, not wall time.** The schedule is a step count; with a fixed seed, thread count and
  torch version a run is bit-for-bit repeatable on the same machine. ``--minutes`` only *chooses* a
  step count from the measured speed of the first steps, and the log records it.
* **Crops first, full frames last.** Most steps use random 128x128 crops (4x cheaper than full
  frames, centred on a foreground class 60 % of the time so thin needles and wires are seen often);
  the last steps use full 256x256 frames so BatchNorm statistics and border context match inference.
* **Loss: cross-entropy + soft Dice.** Needles and wires cover under 1 % of the pixels; cross-entropy
  alone learns to ignore them, the Dice term weights each class by its own size.
* **Light augmentation**: horizontal flips (and vertical for fluoroscopy, which has no up/down
  anatomy convention in the phantom), gain/offset/gamma jitter. The phantom already varies anatomy,
  gain, dynamic range, dose and probe per seed.
* **Seeds.** Phantom training frames come from seeds ``0 .. train_seeds-1``, validation during
  training from seeds 9000+, and held-out evaluation (``medstream evaluate``) uses seeds >= 10000,
  which training never touches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ConfigError, require
from medstream.runtime.evaluation import (
    confusion_from_masks,
    dice_iou_from_confusion,
    find_image_mask_pairs,
    load_pair,
)

log = logging.getLogger("medstream.train")

VALIDATION_SEED0 = 9000
HELD_OUT_SEED0 = 10000


# ------------------------------------------------------------------------------------------ config
@dataclass
class TrainConfig:
    """Everything that determines a training run (recorded in the ``.train.json`` log)."""

    kind: str = "ultrasound"  # "ultrasound" | "fluoroscopy": the phantom, or the preset for --data
    data: str | None = None  # folder of frames + masks; None trains on the phantom
    classes: tuple[str, ...] | None = None  # default: the phantom's classes
    colors: tuple[tuple[int, int, int], ...] | None = None
    seed: int = 0
    size: int = 256  # model input height and width
    train_seeds: int = 160  # phantom scenes 0 .. train_seeds-1
    frames_per_seed: int = 12
    probes: tuple[str, ...] = ("convex", "convex", "convex", "linear")  # ultrasound: cycled over seeds
    val_seeds: int = 4  # phantom validation scenes 9000 .. 9000+val_seeds-1
    val_frames_per_seed: int = 8
    steps: int = 1500
    full_frame_steps: int = 150  # the last steps use whole frames
    crop: int = 128
    batch: int = 8
    full_frame_batch: int = 4
    foreground_crop_fraction: float = 0.6
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    eval_every: int = 250
    threads: int = 2
    base: int = 16
    depth: int = 4
    max_width: int | None = 128
    upsample: str = "bilinear"
    minutes: float | None = None  # choose `steps` to fit this budget (measured); None: use `steps`

    def resolved_classes(self) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
        from medstream.runtime.phantom import KINDS

        if self.classes:
            names = tuple(self.classes)
        elif self.kind in KINDS:
            names = tuple(KINDS[self.kind].CLASSES)
        else:
            raise ConfigError(f"no class list for kind {self.kind!r}", "give --classes background,...")
        if self.colors:
            colors = tuple(tuple(c) for c in self.colors)
        elif not self.classes and self.kind in KINDS:
            colors = tuple(tuple(c) for c in KINDS[self.kind].COLORS)
        else:
            colors = default_palette(len(names))
        if len(colors) != len(names):
            raise ConfigError(f"{len(names)} classes but {len(colors)} colours", "give one colour per class")
        return names, colors  # type: ignore[return-value]


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct overlay colours: black background, then saturated hues."""
    base = [(0, 0, 0), (220, 40, 40), (40, 220, 40), (255, 200, 0), (40, 120, 255), (220, 40, 220), (0, 220, 220)]
    return tuple(base[i] if i < len(base) else ((37 * i) % 256, (91 * i) % 256, (173 * i) % 256) for i in range(n))


# ------------------------------------------------------------------------------------------ data
@dataclass
class FrameSet:
    """Frames at the model's geometry (uint8 ``N x H x W``) with their masks and a description."""

    images: np.ndarray
    masks: np.ndarray
    description: str

    def __len__(self) -> int:
        return len(self.images)


def fit_geometry(image: np.ndarray, mask: np.ndarray, size: int, color_order: str = "gray") -> tuple[np.ndarray, np.ndarray]:
    """Grey ``size x size`` frame and mask, resized exactly as the runtime Preprocessor resizes frames."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        code = {"rgb": cv2.COLOR_RGB2GRAY, "bgr": cv2.COLOR_BGR2GRAY}.get(color_order, cv2.COLOR_BGR2GRAY)
        image = cv2.cvtColor(image[:, :, :3], code)
    if image.shape != (size, size):
        interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


def phantom_frames(kind: str, seeds: range, frames_per_seed: int, size: int, rng: np.random.Generator,
                   probes: tuple[str, ...] = ("convex",)) -> FrameSet:
    """Render ``frames_per_seed`` frames from each phantom scene, at random times in its first minute."""
    from medstream.runtime.phantom import make_phantom

    n = len(seeds) * frames_per_seed
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty_like(images)
    k = 0
    for j, seed in enumerate(seeds):
        extra = {"probe": probes[j % len(probes)]} if kind == "ultrasound" else {}
        phantom = make_phantom(kind, height=size, width=size, seed=seed, **extra)
        fps = phantom.fps
        for index in np.sort(rng.choice(int(60 * fps), frames_per_seed, replace=False)):
            phantom.render_into(int(index), images[k], masks[k])
            k += 1
    probe_text = f", probes {'/'.join(sorted(set(probes)))}" if kind == "ultrasound" else ""
    return FrameSet(images, masks, f"{kind} phantom seeds {seeds.start}-{seeds.stop - 1} x {frames_per_seed} "
                                   f"frames (random times in the first minute){probe_text}, {size}x{size}")


def folder_frames(folder: str | Path, size: int, n_classes: int) -> FrameSet:
    """Load every frame/mask pair of a folder (see :func:`find_image_mask_pairs`) at the model's size."""
    pairs = find_image_mask_pairs(folder)
    images = np.empty((len(pairs), size, size), np.uint8)
    masks = np.empty_like(images)
    for i, (img_path, mask_path) in enumerate(pairs):
        image, mask, color = load_pair(img_path, mask_path)
        if int(mask.max()) >= n_classes:
            raise ConfigError(f"mask {mask_path} holds class id {int(mask.max())}, but only {n_classes} classes are named",
                              "give every class name with --classes (background first)")
        images[i], masks[i] = fit_geometry(image, mask, size, color)
    return FrameSet(images, masks, f"{len(pairs)} frames from {Path(folder).resolve()}")


def split_folder(frames: FrameSet, every: int = 10) -> tuple[FrameSet, FrameSet]:
    """Every ``every``-th frame for validation (deterministic), the rest for training."""
    idx = np.arange(len(frames))
    val = idx % every == every - 1
    if val.sum() == 0:
        return frames, frames
    return (FrameSet(frames.images[~val], frames.masks[~val], frames.description),
            FrameSet(frames.images[val], frames.masks[val], f"every {every}th frame of the folder"))


# ------------------------------------------------------------------------------------------ batches
class BatchSampler:
    """Random crops (or whole frames) with light augmentation, as float32 NCHW model input + int64 targets."""

    def __init__(self, frames: FrameSet, n_classes: int, scale: float, mean: float, std: float,
                 rng: np.random.Generator, vflip: bool, fg_fraction: float) -> None:
        self.frames = frames
        self.n_classes = n_classes
        self.a = np.float32(scale / std)  # x = pixel * a + b, the Preprocessor's formula
        self.b = np.float32(-mean / std)
        self.rng = rng
        self.vflip = vflip
        self.fg_fraction = fg_fraction
        # Pixels of each foreground class per frame, for crops centred on rare classes.
        self._fg = [[np.flatnonzero(m == c) for c in range(1, n_classes)] for m in frames.masks]

    def _crop_origin(self, i: int, crop: int, size: int) -> tuple[int, int]:
        rng = self.rng
        if crop >= size:
            return 0, 0
        present = [p for p in self._fg[i] if p.size]
        if present and rng.random() < self.fg_fraction:
            pix = present[int(rng.integers(len(present)))]
            y, x = divmod(int(pix[int(rng.integers(pix.size))]), size)
            y0 = int(np.clip(y - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, size - crop))
            x0 = int(np.clip(x - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, size - crop))
            return y0, x0
        return int(rng.integers(0, size - crop + 1)), int(rng.integers(0, size - crop + 1))

    def sample(self, batch: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        size = self.frames.images.shape[1]
        crop = min(crop, size)
        x = np.empty((batch, 1, crop, crop), np.float32)
        y = np.empty((batch, crop, crop), np.int64)
        for k in range(batch):
            i = int(rng.integers(len(self.frames)))
            y0, x0 = self._crop_origin(i, crop, size)
            img = self.frames.images[i, y0:y0 + crop, x0:x0 + crop].astype(np.float32)
            msk = self.frames.masks[i, y0:y0 + crop, x0:x0 + crop]
            if rng.random() < 0.5:
                img, msk = img[:, ::-1], msk[:, ::-1]
            if self.vflip and rng.random() < 0.5:
                img, msk = img[::-1], msk[::-1]
            # Gain, offset and gamma jitter in pixel units: what another scanner setting would give.
            gamma = float(np.exp(rng.uniform(-0.2, 0.2)))
            img = 255.0 * (img / 255.0) ** gamma
            img = np.clip(img * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12), 0, 255)
            x[k, 0] = img * self.a + self.b
            y[k] = msk
        return x, y


# ------------------------------------------------------------------------------------------ training
@dataclass
class EpochLog:
    step: int
    loss: float
    val_dice: dict[str, float | None]
    val_mean_foreground_dice: float | None
    lr: float
    elapsed_s: float


@dataclass
class TrainResult:
    config: dict[str, Any]
    model: Any
    contract_fields: dict[str, Any]
    log: list[EpochLog]
    train_seconds: float
    steps_run: int
    parameters: int
    data_description: str
    environment: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int, threads: int) -> None:
    """Fixed seeds, fixed thread count, deterministic kernels where PyTorch has them (cheap on CPU)."""
    torch = require("torch", "train", "training")
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # Denormal floats (tiny gradients late in training) are ~100x slower on x86; flushing them to
    # zero changes no result that matters and keeps step time flat.
    torch.set_flush_denormal(True)
    torch.use_deterministic_algorithms(True, warn_only=True)


def dice_loss(logits: Any, target: Any, n_classes: int) -> Any:
    """1 - mean soft Dice over the foreground classes, pooled over the batch."""
    torch = require("torch", "train", "training")
    prob = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = torch.nn.functional.one_hot(target, n_classes).permute(0, 3, 1, 2).float()[:, 1:]
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


def validate(model: Any, frames: FrameSet, a: float, b: float, n_classes: int, batch: int = 8) -> np.ndarray:
    """Per-class Dice of ``model`` on whole frames (accumulated, as :mod:`medstream.runtime.evaluation`)."""
    torch = require("torch", "train", "training")
    conf = np.zeros((n_classes, n_classes), np.int64)
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(frames), batch):
            x = torch.from_numpy(frames.images[s:s + batch, None].astype(np.float32) * a + b)
            pred = model(x.contiguous(memory_format=torch.channels_last)).argmax(1).numpy().astype(np.uint8)
            for p, t in zip(pred, frames.masks[s:s + batch], strict=True):
                conf += confusion_from_masks(p, t, n_classes)
    model.train()
    return dice_iou_from_confusion(conf)[0]


def train(config: TrainConfig, progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train a U-Net per ``config`` (see :func:`_train`); restores the process-wide float state after."""
    torch = require("torch", "train", "training")
    try:
        return _train(config, progress)
    finally:
        # seed_everything flushes denormals to zero for speed; that is process-wide CPU state which
        # would otherwise leak into whatever runs next in this process (numpy, hypothesis, users' code).
        torch.set_flush_denormal(False)


def _train(config: TrainConfig, progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train a U-Net as ``config`` says; returns the model (eval mode) and the training log."""
    torch = require("torch", "train", "training")
    from medstream.export.unet import UNet, count_parameters

    say = progress or log.info
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine explains slow runs
    seed_everything(config.seed, config.threads)
    rng = np.random.default_rng(config.seed)
    names, colors = config.resolved_classes()
    n_classes = len(names)
    t0 = time.perf_counter()
    if config.data:
        train_set, val_set = split_folder(folder_frames(config.data, config.size, n_classes))
    else:
        if config.kind not in ("ultrasound", "fluoroscopy"):
            raise ConfigError(f"unknown phantom kind {config.kind!r}", "use --kind ultrasound or --kind fluoroscopy")
        train_set = phantom_frames(config.kind, range(config.train_seeds), config.frames_per_seed, config.size, rng,
                                   config.probes)
        val_set = phantom_frames(config.kind, range(VALIDATION_SEED0, VALIDATION_SEED0 + config.val_seeds),
                                 config.val_frames_per_seed, config.size, np.random.default_rng(VALIDATION_SEED0),
                                 config.probes)
    # Normalisation from the training frames, rounded so the contract reads cleanly.
    mean = round(float(train_set.images.mean()) / 255.0, 3)
    std = round(max(float(train_set.images.std()) / 255.0, 1e-3), 3)
    scale = 1.0 / 255.0
    a, b = np.float32(scale / std), np.float32(-mean / std)
    say(f"data: {train_set.description}; {len(train_set)} training / {len(val_set)} validation frames "
        f"({time.perf_counter() - t0:.1f} s); normalisation mean {mean} std {std}")
    sampler = BatchSampler(train_set, n_classes, scale, mean, std, rng, vflip=config.kind == "fluoroscopy",
                           fg_fraction=config.foreground_crop_fraction)
    model = UNet(1, n_classes, config.base, config.depth, config.max_width, config.upsample)
    model = model.to(memory_format=torch.channels_last)
    params = count_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.steps
    if config.minutes is not None:
        steps = _steps_for_budget(model, sampler, config, n_classes)
        say(f"--minutes {config.minutes}: {steps} steps fit the budget on this machine")
    full_steps = min(config.full_frame_steps, steps // 3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.1)
    history: list[EpochLog] = []
    losses: list[float] = []
    t_train = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        full = step > steps - full_steps
        xb, yb = sampler.sample(config.full_frame_batch if full else config.batch, config.size if full else config.crop)
        x = torch.from_numpy(xb).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(yb)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + config.dice_weight * dice_loss(logits, y, n_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            log.debug("step %d loss %.4f %.1f s", step, losses[-1], time.perf_counter() - t_train)
        if step % config.eval_every == 0 or step == steps:
            dice = validate(model, val_set, float(a), float(b), n_classes)
            fg = [float(d) for d in dice[1:] if np.isfinite(d)]
            entry = EpochLog(step=step, loss=float(np.mean(losses)),
                             val_dice={n: (float(d) if np.isfinite(d) else None) for n, d in zip(names, dice, strict=True)},
                             val_mean_foreground_dice=float(np.mean(fg)) if fg else None,
                             lr=float(scheduler.get_last_lr()[0]), elapsed_s=round(time.perf_counter() - t_train, 1))
            history.append(entry)
            losses = []
            say(f"step {step}/{steps} loss {entry.loss:.4f} val Dice "
                + " ".join(f"{k} {v:.3f}" for k, v in entry.val_dice.items() if v is not None and k != names[0])
                + f" ({entry.elapsed_s:.0f} s)")
    model.eval()
    train_seconds = time.perf_counter() - t_train
    contract_fields = {
        "task": "segmentation",
        "modality": config.kind,
        "classes": [{"name": n, "color": list(c)} for n, c in zip(names, colors, strict=True)],
        "input": {"color_order": "gray", "normalization": {"kind": "scale_mean_std", "scale": scale,
                                                          "mean": [mean], "std": [std]}},
        "provenance": {"training_data": train_set.description, "seed": config.seed,
                       "training_steps": steps, "validation_data": val_set.description},
    }
    env = {"torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "threads": config.threads, "load_average_at_start": load_at_start,
           "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    return TrainResult(asdict(config) | {"steps": steps}, model, contract_fields, history, train_seconds, steps,
                       params, train_set.description, env)


def _steps_for_budget(model: Any, sampler: BatchSampler, config: TrainConfig, n_classes: int) -> int:
    """Measure a few steps (on a throw-away copy of the optimiser state) and fit ``config.minutes``."""
    torch = require("torch", "train", "training")
    import copy

    probe = copy.deepcopy(model)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    state = sampler.rng.bit_generator.state
    times = []
    for _ in range(4):
        xb, yb = sampler.sample(config.batch, config.crop)
        t = time.perf_counter()
        out = probe(torch.from_numpy(xb).contiguous(memory_format=torch.channels_last))
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    sampler.rng.bit_generator.state = state  # the measurement does not change the run's data
    per_step = float(np.median(times[1:]))
    # Full-frame steps cost about twice a crop step; keep 10 % for data, validation and export.
    budget = 0.9 * 60 * float(config.minutes) - 30
    steps = int(budget / (per_step * (1 + config.full_frame_steps / max(config.steps, 1))))
    return max(50, steps)


# ------------------------------------------------------------------------------------------ export + log
def export_trained(result: TrainResult, out_path: str | Path, model_id: str, *, extra_provenance: dict[str, Any] | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[ModelContract, dict[str, Any]]:
    """Export the trained model with proof to ``out_path`` and write ``<stem>.train.json`` beside it."""
    torch = require("torch", "train", "exporting")
    from medstream.export.exporter import ExportSpec, export_model

    say = progress or log.info
    out_path = Path(out_path)
    size = result.config["size"]
    fields = json.loads(json.dumps(result.contract_fields))
    fields["model_id"] = model_id
    fields["provenance"].update(extra_provenance or {})
    model = result.model.to(memory_format=torch.contiguous_format).eval()
    spec = ExportSpec(input_shape=(1, 1, size, size), layout="NCHW", input_name="image", contract=fields)
    exported = export_model(model, out_path, spec, torch_parameters=result.parameters)
    say(exported.proof.format())
    say(exported.card.format())
    record = {
        "model": out_path.name,
        "model_sha256": exported.card.sha256,
        "parameters": result.parameters,
        "macs_per_frame": exported.card.macs,
        "file_bytes": exported.card.size_bytes,
        "train_seconds": round(result.train_seconds, 1),
        "steps": result.steps_run,
        "data": result.data_description,
        "config": result.config,
        "environment": result.environment,
        "epochs": [asdict(e) for e in result.log],
        "export_proof": exported.proof.per_output(),
    }
    log_path = out_path.with_name(out_path.stem + ".train.json")
    log_path.write_text(json.dumps(record, indent=2) + "\n")
    return exported.contract, record


def save_weights(result: TrainResult, path: str | Path) -> None:
    """The PyTorch state_dict plus the architecture, for fine-tuning or re-export (``medstream export``)."""
    torch = require("torch", "train", "saving weights")
    torch.save(result.model.state_dict(), str(path))


def wall_clock_text(seconds: float) -> str:
    return f"{int(seconds // 60)} min {math.fmod(seconds, 60):.0f} s"
