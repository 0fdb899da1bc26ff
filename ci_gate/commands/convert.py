"""``ci-gate convert``: Dassl prompt learner (CoOp, CoCoOp, MaPLe) -> self-describing ci-gate checkpoint."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ci_gate.errors import InputError
from ci_gate.learners import DASSL_KINDS


Kind = Enum("Kind", {k: k for k in ("auto", *DASSL_KINDS)}, type=str)


def convert_command(
    source: Path = typer.Argument(..., help="Dassl prompt_learner/model.pth.tar-N (read with torch.load weights_only=True; never modified)."),
    classes: str = typer.Option(..., "--classes", help="Class names in training order: a file with one per line, or 'a,b,c'."),
    out: str = typer.Option(..., "--out", help="Output .safetensors checkpoint (written atomically)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="open_clip architecture name, e.g. ViT-B-16."),
    config: Optional[Path] = typer.Option(None, "--config", help="Inline open_clip model config (JSON) instead of --arch."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip pretrained tag (e.g. openai) or a weights file."),
    backbone_weights: Optional[Path] = typer.Option(
        None, "--backbone-weights", help="Local backbone weights (.safetensors or a torch.save state dict; TorchScript is refused)."
    ),
    embed_backbone: bool = typer.Option(False, "--embed-backbone", help="Store the backbone tensors in the output."),
    kind: Kind = typer.Option(Kind.auto, "--kind", help="Learner kind; auto tells them apart by their tensors."),
    ctx_init: Optional[str] = typer.Option(None, "--ctx-init", help="Text the context was initialised from (recorded; must have n_ctx tokens)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="open_clip download cache for pretrained tags."),
    learner_option: Optional[List[str]] = typer.Option(
        None, "--learner-option", metavar="KEY=VALUE",
        help="A learner setting the file does not record, e.g. class_token_position=middle for CoOp (repeatable; validated by the learner, recorded in the checkpoint).",
    ),
) -> None:
    """Convert a Dassl CoOp/CoCoOp/MaPLe checkpoint after checking the class names and backbone against its stored prompt tokens."""
    # torch and open_clip load here, not at import: every other command (and --help) starts without them.
    from ci_gate.checkpoint.convert import BackboneSource, ConvertRequest, convert, load_inline_config, parse_class_names
    from ci_gate.report.folder import check_out_file, output_errors

    classes_file = classes if Path(classes).is_file() else None
    inputs = [("source", source), ("classes file", classes_file), ("config", config), ("backbone weights", backbone_weights)]
    if not str(out).strip():
        raise InputError("--out", "empty path; give the .safetensors file to write")
    # the converter names a wrong suffix first (the simplest fix for the user); every other output
    # check (under a file, read-only folder, an input through a hard or symbolic link) is here
    if Path(out).suffix == ".safetensors":
        check_out_file(out, "--out", inputs=inputs)
    out_path = Path(out)
    request = ConvertRequest(
        source=source,
        class_names=parse_class_names(classes),
        backbone=BackboneSource(
            architecture=arch,
            config=load_inline_config(config) if config is not None else None,
            config_path=config,
            pretrained=pretrained,
            weights=backbone_weights,
            cache_dir=cache_dir,
            embed=embed_backbone,
        ),
        out=out_path,
        kind=kind.value,
        ctx_init=ctx_init,
        classes_ref=classes if Path(classes).is_file() else "--classes",
        learner_options=parse_learner_options(learner_option or []),
    )
    with output_errors(out_path):
        result = convert(request)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    # sha256sum's layout, so the line can be fed to `sha256sum -c`.
    typer.echo(f"{result.sha256}  {result.out}")


def parse_learner_options(items: list[str]) -> dict[str, str]:
    """KEY=VALUE strings -> {KEY: VALUE}; the values are the learner's to parse."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError("--learner-option", f"{item!r} is not KEY=VALUE")
        if key in out:
            raise InputError("--learner-option", f"{key} given twice")
        out[key] = value.strip()
    return out


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
