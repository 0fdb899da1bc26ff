"""ci_gate.baselines: Neural Cleanse and Pixel Backdoor on the PromptedClassifier (tiny, random)."""

import pytest
import torch

from ci_gate.baselines import BaselineSettings, neural_cleanse, pixel_backdoor
from ci_gate.baselines.common import lower_tail_anomaly
from test_attacks import _tiny_classifier


pytestmark = pytest.mark.usefixtures("one_thread")


def test_lower_tail_anomaly_flags_the_small_trigger():
    a = lower_tail_anomaly([10.0, 11.0, 9.0, 10.5, 2.0])
    assert max(range(5), key=lambda i: a[i]) == 4
    assert a[4] > 2 and all(x < 2 for x in a[:4])


@pytest.mark.parametrize("method", [neural_cleanse, pixel_backdoor])
def test_baseline_runs_per_class(method):
    clf = _tiny_classifier("cocoop")
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = method(clf, images, BaselineSettings(epochs=2, batch_size=4, windows_per_epoch=1))
    assert [c.index for c in res.classes] == [0, 1, 2]
    assert all(0 <= c.asr <= 1 and c.size >= 0 for c in res.classes)
    assert len(res.anomaly) == 3 and res.score == max(res.anomaly)
    assert (res.target is None) == (not res.flagged)
