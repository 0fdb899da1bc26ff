"""Trigger-inversion baselines the paper compares against, adapted to prompt-tuned CLIP exactly as
CLIP-Inspector is: the same :class:`~ci_gate.model.classifier.PromptedClassifier` ([0, 1] images
in, logits over candidate classes out), the same unlabeled OOD pool and the same candidate
classes. Only the trigger model and the statistic differ:

- Neural Cleanse (Wang et al., S&P 2019): mask + pattern, x' = (1 - m) x + m p, cross-entropy to
  the candidate class + lambda |m|_1 with NC's adaptive lambda schedule; anomaly index (MAD) of the
  masks' L1 norms, lower tail (a small mask is suspicious).
- Pixel Backdoor (Tao et al., ICML 2022): a signed per-pixel pattern split in a positive and a
  negative part (each tanh-bounded), x' = clamp(x + p+ - p-), cross-entropy + lambda (|p+| + |p-|)
  with the same schedule; anomaly index of the trigger sizes (changed pixels), lower tail.
"""

from ci_gate.baselines.common import BaselineClass, BaselineResult, BaselineSettings
from ci_gate.baselines.neural_cleanse import neural_cleanse
from ci_gate.baselines.pixel import pixel_backdoor

__all__ = ["BaselineClass", "BaselineResult", "BaselineSettings", "neural_cleanse", "pixel_backdoor"]
