"""ci_gate.device: the one device picker (the scan's public ``pick_device``, the speed benchmark)."""

import pytest
import torch

import ci_gate.scan
from ci_gate.bench.speed_run import SpeedOptions, run_speed_bench
from ci_gate.device import pick_device
from ci_gate.errors import InputError


def test_the_scan_picks_with_it():
    assert ci_gate.scan.pick_device is pick_device


def test_auto_and_named_devices():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("setting", ["cuda", "cuda:1"])
def test_a_missing_cuda_device_is_bad_input_named_by_its_source(setting, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(InputError) as err:
        pick_device(setting)
    assert err.value.path == "policy" and f"'{setting}' requested but no CUDA device" in err.value.problem
    with pytest.raises(InputError) as err:
        run_speed_bench(SpeedOptions(device=setting))  # refused before any model is built
    assert err.value.path == "--device"
