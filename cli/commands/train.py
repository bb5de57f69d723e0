"""Train a small U-Net segmenter on the phantom or on your own frames + masks, then export it with proof.

Examples::

    medstream train --kind ultrasound --out runs/us              # phantom, the reference recipe's settings
    medstream train --kind fluoroscopy --out runs/fl --minutes 5  # pick a step count that fits 5 minutes
    medstream train --data my_frames/ --classes background,vessel,needle --out runs/mine

``--data`` takes a folder of frames with truth masks (``images/`` + ``masks/``, ``NAME.npy`` +
``NAME_mask.npy``, ``.npz`` with ``image``/``mask``, or a ``medstream record`` folder); every 10th frame
is held out for validation. Writes ``DIR/model.onnx`` (proven, contract embedded), ``DIR/model.pt``
(state_dict of :class:`medstream.export.unet.UNet`) and ``DIR/model.train.json`` (the log).
The bundled reference models come from ``python -m medstream.export.reference_models``.
"""

from __future__ import annotations

from pathlib import Path

HELP = "train a U-Net segmenter (phantom or your frames + masks) and export it with proof"


def add_arguments(p) -> None:
    p.add_argument("--kind", default="ultrasound", choices=["ultrasound", "fluoroscopy"],
                   help="phantom to train on, and the modality written into the contract (default ultrasound)")
    p.add_argument("--data", default=None, help="folder of frames + masks to train on instead of the phantom")
    p.add_argument("--classes", default=None, help="class names for --data, background first (default: the phantom's)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="model", help="file name stem inside --out (default model)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the reference recipe's)")
    p.add_argument("--minutes", type=float, default=None,
                   help="choose the step count to fit this many minutes on this machine (recorded in the log)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    p.add_argument("--size", type=int, default=256, help="model input height and width (multiple of 16, default 256)")


def main(args) -> int:
    from medstream.export.reference_models import recipe
    from medstream.export.train import export_trained, save_weights, train, wall_clock_text
    from medstream.runtime.errors import ConfigError

    if args.size % 16:
        raise ConfigError(f"--size {args.size} is not a multiple of 16", "the U-Net halves the size four times; use e.g. 256")
    config = recipe(args.kind)
    config.seed, config.threads, config.size, config.data, config.minutes = args.seed, args.threads, args.size, \
        args.data, args.minutes
    if args.classes:
        config.classes = tuple(n.strip() for n in args.classes.split(",") if n.strip())
    if args.steps:
        config.steps = args.steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = train(config, progress=print)
    save_weights(result, out / f"{args.name}.pt")
    export_trained(result, out / f"{args.name}.onnx", model_id=args.name, progress=print)
    print(f"trained {result.steps_run} steps in {wall_clock_text(result.train_seconds)}; wrote "
          f"{out / (args.name + '.onnx')}, {out / (args.name + '.pt')} and {out / (args.name + '.train.json')}")
    print(f"re-export the weights: medstream export --model medstream.export.unet:UNet "
          f"--model-kwargs '{{\"n_classes\": {len(result.contract_fields['classes'])}}}' "
          f"--weights {out / (args.name + '.pt')} --input-shape 1,1,{args.size},{args.size} ...")
    return 0
