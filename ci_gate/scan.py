"""One scan, end to end: policy + checkpoint + pool -> model -> inversion -> scoring -> Result.

This is the only module that knows the order of the stages; each stage is called through its
own small interface. The scan reads its inputs and writes nothing: it returns a
:class:`~ci_gate.scan_output.ScanOutput` (the Result and the trigger and example tensors its image
paths name), and writing the report folder is a separate step (ci_gate.report.folder).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ci_gate import __version__
from ci_gate.artifacts import example_paths, trigger_paths
from ci_gate.device import pick_device
from ci_gate.distributed import SINGLE, Shard, gather_triggers, process_group, rank_device, shard_classes
from ci_gate.errors import InputError
from ci_gate.inversion import InversionSettings, base_rates, invert
from ci_gate.inversion.memory import choose_class_batch
from ci_gate.model import load_classifier
from ci_gate.policy import Policy
from ci_gate.pool import load_pool
from ci_gate.rng import global_rng
from ci_gate.result import (
    BackboneInfo,
    ClassResult,
    Detection,
    Example,
    ModelInfo,
    PolicyInfo,
    PoolInfo,
    Result,
    RungResult,
    Timings,
    ToolInfo,
)
from ci_gate.encoder_check import encoder_info
from ci_gate.model.architecture import CONFIG_FILE, check_architecture, published_config
from ci_gate.inversion.patch import PatchSettings, invert_patch
from ci_gate.reference import reference_backbone, reference_patch_stats, reference_stats
from ci_gate.rescore import PATCH_SKIPPED
from ci_gate.scan_inputs import ScanInputs
from ci_gate.scan_output import ExampleImages, ScanOutput, TriggerImage
from ci_gate.scoring import STATISTICS, ClassStats, LadderDecision, decide_ladder, named_target

Progress = Callable[[int, int, int], None]  # see ci_gate.inversion.optimize.Progress
N_EXAMPLES = 4
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}




def inversion_settings(policy: Policy) -> InversionSettings:
    inv = policy.inversion
    return InversionSettings(
        epsilon=inv.max_epsilon, ladder=tuple(inv.epsilon), eval_images=inv.eval_images,
        lr=inv.lr, batch_size=inv.batch_size, epochs=inv.epochs, loss=inv.loss, seed=policy.seed,
    )


def scan(req: ScanInputs, progress: Progress | None = None, shard: Shard = SINGLE) -> ScanOutput | None:
    """What the scan found, in memory, on rank 0 (and in a single-process scan); None on the other
    ranks of a sharded scan (``shard``: this process's share of the candidate classes under
    torchrun), which only invert their classes. Writes no file."""
    device = rank_device(shard, pick_device(req.policy.device))
    # every draw of the scan takes a seeded generator; building the model draws from the global
    # one (module constructors, weights then overwritten), on a fork: the caller's is untouched
    with process_group(shard, device), global_rng():
        return _scan(req, shard, device, progress)


def _scan(req: ScanInputs, shard: Shard, device: torch.device, progress: Progress | None) -> ScanOutput | None:
    policy = req.policy
    t0 = time.perf_counter()
    loaded = load_classifier(
        req.checkpoint, extra_classes=policy.candidates.extra_classes, weights=req.backbone_weights, autocast_dtype=_AUTOCAST[policy.inversion.precision]
    )
    clf = loaded.classifier
    if clf.n_classes > policy.candidates.max_classes:
        raise InputError(req.checkpoint, f"{clf.n_classes} candidate classes exceed the policy's max_classes={policy.candidates.max_classes}")
    clf.to(device).tune_for(device)
    meta = loaded.checkpoint.meta
    warnings = list(loaded.notes)
    t_load = time.perf_counter()

    pool = load_pool(
        req.pool,
        loaded.preprocessing.image_size,
        policy.pool.min_images,
        policy.pool.max_images,
        loaded.preprocessing.interpolation,
        seed=policy.seed,
    )
    t_pool = time.perf_counter()

    inv = policy.inversion
    settings = inversion_settings(policy)
    clf.freeze()
    mine = shard_classes(clf.n_classes, shard.rank, shard.world_size)
    class_batch = inv.class_batch if inv.class_batch != "auto" else choose_class_batch(clf, inv.batch_size, max(1, len(mine)), device)
    local = invert(clf, pool.images, settings, classes=mine, class_batch=class_batch, progress=progress if shard.is_main else None)
    triggers = gather_triggers(local, shard, pool.images.shape[-1], device, settings.rungs)
    if triggers is None:  # not rank 0: rank 0 scores
        return None
    rates, clean_losses = base_rates(clf, pool.images)
    users_weights = req.reference_weights or req.backbone_weights
    trusted_architecture = published_config(loaded.checkpoint.meta.backbone, users_weights)
    published = reference_backbone(loaded, req.reference_weights, trusted_architecture)
    encoder = encoder_info(
        loaded.backbone.verified,
        loaded.backbone.clip.state_dict(),
        None if published is None else published.clip.state_dict(),
        None if req.reference_weights is None else str(req.reference_weights),
        check_architecture(loaded.checkpoint.meta.backbone, loaded.backbone, trusted_architecture, published),
    )
    if encoder.modified:
        worst = f" (largest: {encoder.changed[0].name}, relative change {encoder.changed[0].rel_l2:.3g})" if encoder.changed else ""
        warnings.append(
            f"the checkpoint's backbone differs from the published weights in {users_weights}: {encoder.changes_text}{worst}; "
            "prompt tuning never changes the encoders, so this fails the gate on its own"
        )
    elif encoder.status == "unverified" and users_weights is not None:
        warnings.append(
            f"the checkpoint spells its backbone's architecture inline and nothing beside {users_weights} says what the published one is: "
            f"the published tensors in another architecture (attention heads, activation) are another function, so the towers are unverified; "
            f"put the published model's {CONFIG_FILE} (open_clip's hub layout) beside the weights file"
        )
    det = policy.detection
    # the only tower at hand may be the delivered one: a reference built on it would carry an
    # encoder-level backdoor and cancel it, so an unverified tower is scored without a reference
    trusted = encoder.status != "unverified"
    statistic, k = det.rule(trusted_reference=trusted)
    ref = None
    if not trusted:
        if users_weights is None:
            # what this means for the gate (detection.unverified_towers) is the reporters' to say: a
            # re-decision may answer it differently (ci_gate.report.alerts.headline_warnings)
            scored = f"the reference-free '{statistic}' against detection.absolute_k = {k:g}" if statistic != det.statistic else f"'{statistic}'"
            warnings.append(
                f"the checkpoint's backbone is not a published one it can be checked against (it embeds its tower, or names a weights file "
                f"instead of a pretrained tag) and no published weights were given: the towers are unverified, so an encoder-level backdoor "
                f"cannot be ruled out, and classes were scored with {scored}; pass --reference-weights with the published backbone"
            )
    elif STATISTICS[det.statistic].needs_reference:
        ref = reference_stats(loaded, clf.class_names, pool.images, settings, device, backbone=published, delivered=triggers)
    gain = det.min_asr_gain if ref is not None else None

    def decide() -> tuple[list[list[ClassStats]], LadderDecision]:
        stats = _rung_stats(triggers, rates, clean_losses, ref)
        _refuse_non_finite(req.checkpoint, stats, statistic)
        families = [r.family for r in triggers[0].rungs]
        return stats, decide_ladder(stats, statistic, k, det.min_asr, det.mad_floor, det.extreme, gain, families)

    rung_stats, decision = decide()
    patch = None
    if encoder.modified and ref is not None and decision.target is not None:
        warnings.append(
            f"the checkpoint's towers are modified and the L-inf ladder already flagged class '{clf.class_names[decision.target]}': "
            f"the mask-and-pattern (patch) inversion, which runs to name a modified tower's target, {PATCH_SKIPPED}"
        )
    elif encoder.modified and ref is not None:
        # a modified tower fails the gate already; the patch family (what an L-inf ball cannot
        # reach: BadNets-like patches, strong blends) is what can still name the target. A tower
        # whose logits break only on patched images loses the family, not its failing verdict
        # the same memory-bound class batch as the L-inf ladder's (the mask adds one image-sized tensor per class)
        patch = PatchSettings(batch_size=inv.batch_size, eval_images=inv.eval_images, seed=policy.seed, class_batch=class_batch)
        found = {t.index: t for t in invert_patch(clf, pool.images, patch)}
        patch_ref = reference_patch_stats(loaded, clf.class_names, pool.images, patch, device, backbone=published, delivered=list(found.values()))
        values = [v for t in found.values() for r in t.rungs for v in (r.asr, r.final_loss)] + [v for rs in patch_ref for r in rs for v in (r.asr, r.final_loss)]
        if all(math.isfinite(v) for v in values):
            for t in triggers:
                t.rungs.extend(found[t.index].rungs)
                ref[t.index] = ref[t.index] + patch_ref[t.index]
            warnings.append(
                f"because the checkpoint's towers are modified and the L-inf ladder flagged no class, a mask-and-pattern (patch) inversion "
                f"also ran, at mask areas {', '.join(f'{a:.0%}' for a in patch.areas)} of the image; its rungs follow the L-inf ones in every class's rungs"
            )
            rung_stats, decision = decide()
        else:
            patch = None
            warnings.append("the checkpoint's towers are modified and give non-finite logits on patched images: the patch family was dropped")
    t_inv = time.perf_counter()
    target = named_target(decision, encoder.modified)

    n_ckpt = len(meta.learner.class_names)
    classes: list[ClassResult] = []
    examples: list[Example] = []
    trigger_images: list[TriggerImage] = []
    example_images: list[ExampleImages] = []
    for c, trig in enumerate(triggers):
        name = clf.class_names[trig.index]
        best = decision.rung[c]
        rung = trig.rungs[best]
        status = decision.status[c]
        png, tensor = trigger_paths(trig.index, name)
        # a patch rung's picture is its change to a mid-grey image, in [-0.5, 0.5]: shown unamplified
        shown_eps = rung.epsilon if rung.family == "linf" else 0.5
        trigger_images.append(TriggerImage(trig.index, name, rung.delta.detach().cpu(), shown_eps, png, tensor, rung.mask, rung.pattern))
        classes.append(
            ClassResult(
                index=trig.index,
                name=name,
                from_checkpoint=trig.index < n_ckpt,
                asr=rung.asr,
                base_rate=float(rates[trig.index]),
                final_loss=rung.final_loss,
                clean_loss=float(clean_losses[trig.index]),
                statistic=decision.statistic[best][c],
                anomaly=decision.score[c],
                status=status,
                trigger_linf=float(rung.delta.abs().max()),
                trigger_png=png,
                trigger_tensor=tensor,
                epsilon=rung.epsilon,
                family=rung.family,
                ref_clean_loss=None if ref is None else ref[trig.index][0].clean_loss,
                rungs=[
                    RungResult(
                        epsilon=tr.epsilon, family=tr.family, asr=tr.asr, final_loss=tr.final_loss,
                        ref_asr=rung_stats[r][c].ref_asr, ref_final_loss=rung_stats[r][c].ref_final_loss, ref_cross_loss=rung_stats[r][c].ref_cross_loss,
                        statistic=decision.statistic[r][c], anomaly=decision.anomaly[r][c],
                    )
                    for r, tr in enumerate(trig.rungs)
                ],
            )
        )
        if status != "ok" or c == target:
            rows, images = _examples(clf, pool.images[:N_EXAMPLES], rung, trig.index, name, device)
            examples.extend(rows)
            example_images.extend(images)

    shown = decision.rung[target] if target is not None else len(settings.rungs) - 1
    total = time.perf_counter() - t0
    result = Result(
        tool=ToolInfo(version=__version__),
        verdict=decision.verdict,
        target_class=None if target is None else clf.class_names[target],
        target_index=target,
        model=ModelInfo(
            path=req.shown_path,
            sha256=loaded.checkpoint.sha256,
            format_version=meta.format_version,
            learner=meta.learner.kind,
            learner_options=meta.learner.options,
            class_names=list(meta.learner.class_names),
            n_ctx=meta.learner.n_ctx,
            backbone=BackboneInfo(
                architecture=meta.backbone.architecture or "inline",
                pretrained=loaded.backbone.reference,
                sha256=loaded.backbone.sha256,
                quick_gelu=loaded.backbone.quick_gelu,
            ),
        ),
        pool=PoolInfo(
            source=str(req.pool),
            sha256=pool.sha256,
            n_images=len(pool),
            n_skipped=len(pool.skipped),
            skipped=[f"{n}: {why}" for n, why in pool.skipped[:20]],
        ),
        policy=PolicyInfo(name=policy.name, path=None if req.policy_path is None else str(req.policy_path), sha256=policy.sha256(), settings=policy.model_dump(mode="json")),
        detection=Detection(
            statistic=statistic, k=k, min_asr=det.min_asr, min_asr_gain=gain, extreme=det.extreme,
            median=decision.median[shown], mad=decision.mad[shown], epsilons=list(settings.rungs), patch_areas=[] if patch is None else list(patch.areas),
            reference="none" if ref is None else "published", unverified_towers=det.unverified_towers,
        ),
        classes=classes,
        encoder=encoder,
        examples=examples,
        timings=Timings(load_s=t_load - t0, pool_s=t_pool - t_load, inversion_s=t_inv - t_pool, total_s=total),
        device=str(device) if not shard.distributed else f"{device.type} x{shard.world_size} processes",
        seed=policy.seed,
        warnings=warnings,
    )
    return ScanOutput(result, tuple(trigger_images), tuple(example_images))


def _rung_stats(triggers, rates: torch.Tensor, clean_losses: torch.Tensor, ref) -> list[list[ClassStats]]:
    """[rung][class] inputs of the statistics: the inversion's, the clean pool's, the reference's."""
    return [
        [
            ClassStats(
                asr=t.rungs[r].asr, base_rate=float(rates[t.index]), final_loss=t.rungs[r].final_loss, clean_loss=float(clean_losses[t.index]),
                ref_asr=None if ref is None else ref[t.index][r].asr,
                ref_final_loss=None if ref is None else ref[t.index][r].final_loss,
                ref_clean_loss=None if ref is None else ref[t.index][r].clean_loss,
                ref_cross_loss=None if ref is None else ref[t.index][r].cross_loss,
            )
            for t in triggers
        ]
        for r in range(len(triggers[0].rungs))
    ]


def _refuse_non_finite(path: Path, rung_stats: list[list[ClassStats]], statistic: str) -> None:
    """A NaN or infinite statistic compares false against every threshold, which would read as
    CLEAN; the inputs that produce one (a degenerate model or pool) are refused instead."""
    for stats in rung_stats:
        for s in stats:
            values = [s.asr, s.final_loss, s.clean_loss, s.ref_asr, s.ref_final_loss, s.ref_clean_loss, s.ref_cross_loss]
            if not all(v is None or math.isfinite(v) for v in values) or not math.isfinite(STATISTICS[statistic].fn(s)):
                raise InputError(path, f"the scan produced a non-finite '{statistic}' statistic (the model's logits are NaN or infinite on the pool); refusing to give a verdict")


def _examples(clf, images: torch.Tensor, rung, index: int, name: str, device: torch.device) -> tuple[list[Example], list[ExampleImages]]:
    triggered = rung.apply(images)
    with torch.no_grad():
        pred_clean = clf(images.to(device)).argmax(1).tolist()
        pred_trig = clf(triggered.to(device)).argmax(1).tolist()
    rows, pairs = [], []
    for i in range(images.shape[0]):
        clean_png, triggered_png = example_paths(index, name, i)
        # a copy: a view would keep the whole pool alive as long as the output
        pairs.append(ExampleImages(index, images[i].clone(), triggered[i], clean_png, triggered_png))
        rows.append(
            Example(
                class_name=name,
                clean_png=clean_png,
                triggered_png=triggered_png,
                predicted_clean=clf.class_names[pred_clean[i]],
                predicted_triggered=clf.class_names[pred_trig[i]],
            )
        )
    return rows, pairs
