"""ci-gate: a pre-deployment backdoor gate for prompt-tuned CLIP models (CLIP-Inspector)."""

__version__ = "0.1.0"
