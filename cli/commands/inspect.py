"""Show what is inside an ONNX file and propose a medstream contract for it, every guess marked.

Prints the inputs and outputs (names, dtypes, shapes with dynamic axes shown as ``name?``), the opsets,
the op types with counts, the activation in front of each output, any embedded medstream contract, and a
proposed contract as YAML. The task is guessed from the output shapes; every inferred value carries a
``# GUESS: ...`` comment: confirm or correct each one, then run the model with ``--contract FILE.yaml`` or
embed it once with ``medstream contract embed``.

Examples::

    medstream inspect their_model.onnx
    medstream inspect their_model.onnx --out contract.yaml     # edit the GUESS lines, then:
    medstream contract embed their_model.onnx --contract contract.yaml --out their_model.medstream.onnx
    medstream run --model their_model.medstream.onnx --source clip.mp4

With an embedded contract, ``--out`` writes that contract (to edit and embed again) instead of a proposal.
"""

from __future__ import annotations

import json
from pathlib import Path

HELP = "show an ONNX model's inputs, outputs, ops and contract; propose a contract (guesses marked)"


def add_arguments(p) -> None:
    p.add_argument("model", help="the .onnx file (or a bundled model name: ultrasound, fluoroscopy)")
    p.add_argument("--out", default=None, metavar="FILE.yaml",
                   help="write the proposed contract here (the embedded one when the model has one)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists (it may hold your edits)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args) -> int:
    from medstream.runtime.errors import ConfigError
    from medstream.runtime.files import write_text_atomic
    from medstream.runtime.models import bundled_model_path
    from medstream.runtime.models.inspect import format_report, inspect_model, proposal_yaml

    report = inspect_model(bundled_model_path(args.model))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report, show_proposal=report.contract is None))
    if args.out is None:
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists (it may hold your edits); inspect did not overwrite it",
                          "give another --out, or add --force to replace it")
    if report.contract is not None:
        text = _embedded_yaml(report.contract, report.path)
    elif report.proposal is not None:
        text = proposal_yaml(report.proposal, report.path)
    else:
        raise ConfigError(f"no contract can be proposed for {report.path}: {report.proposal_error}",
                          "write the contract by hand (docs/MODEL_CONTRACT.md)")
    write_text_atomic(out, text)
    what = "its embedded contract" if report.contract is not None else (
        f"the proposed contract; confirm the {len(report.proposal.guesses)} lines marked '# GUESS:'")
    print(f"wrote {out}: {what}")
    return 0


def _embedded_yaml(contract, model: Path) -> str:
    import yaml

    body = yaml.safe_dump(contract.model_dump(mode="json"), sort_keys=False, width=120)
    return f"# medstream contract embedded in {model.name} (written by 'medstream inspect')\n{body}"
