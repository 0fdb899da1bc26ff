"""How many candidate classes to optimise in one batch without running out of memory.

One class in the class batch adds ``batch_size`` perturbed images to every optimisation step, and
autograd keeps their activations until the backward pass: the image tower's for every image and,
for CoCoOp, the text tower's for every (image, class) prompt. The estimate below counts those
saved tensors per transformer block; ``choose_class_batch`` divides the device's free memory by it.
It is deliberately an over-estimate (see _SAVED_WIDTHS): running out of memory costs a whole scan,
a smaller class batch only a little speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ci_gate.model.classifier import PromptedClassifier

# Per token and block, the tensors a pre-LN transformer block keeps for backward, in units of
# the width: LayerNorm input and output (2), q, k, v (3), attention output (1), out-projection
# output (1), the second LayerNorm input and output (2), MLP hidden before and after the
# activation (2 x 4) = 17, rounded up to 18 for the residual adds and dropout-free copies.
_SAVED_WIDTHS = 18
_GPU_FRACTION = 0.6  # of the free memory: room for the allocator's fragmentation and the eval pass
DEFAULT_CPU_BUDGET = 4 << 30
# On a CPU, batching classes buys no matmul efficiency (32 images x C prompts already fill the
# cores) and bigger activations spill the caches. Measured with 1 thread, tiny-32 CoCoOp, 50
# classes, 64 images: class batch 50 took 24-26 s, 17 took 19-20 s, 1 to 5 took 11-18 s.
CPU_CLASS_BATCH_CAP = 4


@dataclass(frozen=True)
class Tower:
    """A transformer stack as the estimate sees it."""

    width: int
    layers: int
    heads: int


def block_bytes(tower: Tower, tokens: int, keys: int, bytes_per_element: int) -> int:
    """Saved activations of ``tokens`` query positions attending to ``keys`` positions, all blocks."""
    per_token = _SAVED_WIDTHS * tower.width + tower.heads * keys  # + the attention probabilities
    return tokens * tower.layers * per_token * bytes_per_element


def _tower(stack, width: int) -> Tower:
    blocks = list(stack.resblocks)
    heads = getattr(blocks[0].attn, "num_heads", max(1, width // 64))
    return Tower(width=width, layers=len(blocks), heads=heads)


def image_tower(classifier: PromptedClassifier) -> tuple[Tower, int]:
    """The image tower and its token count; non-ViT towers are costed as ViT-B/16 (an upper bound
    for the ResNet CLIPs ci-gate loads)."""
    visual = classifier.visual
    if hasattr(visual, "transformer") and hasattr(visual, "conv1"):
        width = visual.conv1.out_channels
        patch = visual.conv1.kernel_size[0]
        grid = (classifier.image_size // patch) ** 2 + 1
        return _tower(visual.transformer, width), grid
    return Tower(width=768, layers=12, heads=12), (224 // 16) ** 2 + 1


def text_tokens_per_image(classifier: PromptedClassifier) -> tuple[int, int]:
    """(query tokens, longest key span) the text tower runs per image and step; 0 for cached text."""
    if not classifier.conditional:
        return 0, 0  # CoOp and zero-shot text features are cached or computed once per step
    prompts = classifier.prompts
    if classifier.shares_prefix:
        prefix = 1 + prompts.n_ctx
        suffix = sum((b - a) * s for a, b, s in prompts.groups)
        return prefix + suffix, prefix + max(s for _, _, s in prompts.groups)
    length = classifier.text_length()
    return classifier.n_classes * length, length


def activation_bytes_per_class(classifier: PromptedClassifier, batch_size: int, bytes_per_element: int | None = None) -> int:
    """Upper bound of the autograd memory one class adds to an optimisation step."""
    if bytes_per_element is None:
        bytes_per_element = 4 if classifier.autocast_dtype is None else 2
    vis, grid = image_tower(classifier)
    per_image = block_bytes(vis, grid, grid, bytes_per_element)
    tokens, keys = text_tokens_per_image(classifier)
    if tokens:
        text = _tower(classifier.text.transformer, classifier.text.positional_embedding.shape[1])
        per_image += block_bytes(text, tokens, keys, bytes_per_element)
    return batch_size * per_image


def class_batch_for_budget(per_class_bytes: int, budget_bytes: int, n_classes: int) -> int:
    """Pure: a class batch within the budget, at least 1 and at most ``n_classes``.

    Uses as few groups as the budget allows, then evens them out (50 classes at most 23 per
    group: 17 + 17 + 16 rather than 23 + 23 + 4, whose small last group would underuse the device).
    """
    largest = int(max(1, min(n_classes, budget_bytes // max(1, per_class_bytes))))
    groups = -(-n_classes // largest)
    return -(-n_classes // groups)


def memory_budget(device: torch.device, cpu_budget_bytes: int = DEFAULT_CPU_BUDGET) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * _GPU_FRACTION)
    return cpu_budget_bytes


def choose_class_batch(
    classifier: PromptedClassifier,
    batch_size: int,
    n_classes: int,
    device: torch.device,
    cpu_budget_bytes: int = DEFAULT_CPU_BUDGET,
) -> int:
    per_class = activation_bytes_per_class(classifier, batch_size)
    budget = memory_budget(device, cpu_budget_bytes)
    if device.type != "cuda":
        budget = min(budget, CPU_CLASS_BATCH_CAP * per_class)
    return class_batch_for_budget(per_class, budget, n_classes)
