"""The model stage: a frozen open_clip backbone plus a prompt learner, exposed as one classifier.

``load_classifier(checkpoint)`` is the entry point; the classifier maps images in [0, 1] pixel
space to logits over the candidate classes and normalises internally, after any perturbation.
"""

from ci_gate.model.classifier import PromptedClassifier
from ci_gate.model.factory import LoadedModel, build_classifier, load_classifier

__all__ = ["PromptedClassifier", "LoadedModel", "build_classifier", "load_classifier"]
