"""How many candidate classes to optimise in one batch without running out of memory."""

from __future__ import annotations

import torch

from ci_gate.model.classifier import PromptedClassifier

_BYTES_PER_ACT = 4  # activations kept for backward in fp32; autocast halves it, we keep the margin


def activation_bytes_per_class(classifier: PromptedClassifier, batch_size: int) -> int:
    """Rough upper bound of the autograd memory one class adds to an optimisation step."""
    text = classifier.text
    width = text.positional_embedding.shape[1]
    layers = len(text.transformer.resblocks)
    length = classifier.text_length()
    # per token and layer: qkv, attention output, two MLP activations (4x width) and norms
    per_seq = length * layers * width * 14 + layers * length * length * 2
    n_seq = batch_size * classifier.n_classes if classifier.conditional else 0
    visual = classifier.visual
    v_width = getattr(visual, "conv1", None).out_channels if hasattr(visual, "conv1") else 768
    v_layers = len(visual.transformer.resblocks) if hasattr(visual, "transformer") else 12
    grid = (classifier.image_size // max(1, getattr(visual, "patch_size", (16,))[0])) ** 2 + 1
    per_img = grid * v_layers * v_width * 14
    return (n_seq * per_seq + batch_size * per_img) * _BYTES_PER_ACT


def choose_class_batch(classifier: PromptedClassifier, batch_size: int, n_classes: int, device: torch.device, cpu_budget_bytes: int = 4 << 30) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * 0.7)
    else:
        budget = cpu_budget_bytes
    per_class = max(1, activation_bytes_per_class(classifier, batch_size))
    return int(max(1, min(n_classes, budget // per_class)))
