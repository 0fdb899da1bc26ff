"""The Python API: the public names are pinned, `import ci_gate` stays light, and
`ci_gate.verify` is the scan the CLI runs (same verdict, same scores), without printing or exiting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ci_gate
from ci_gate.errors import InputError
from tiny_scan import SETTINGS, build

REPO = Path(__file__).resolve().parents[1]

# Changing this list changes the public API: add a name on purpose, never by accident.
PUBLIC = ["CiGateError", "GateFailure", "InputError", "InternalError", "Policy", "Result", "__version__",
          "gate_passes", "load_policy", "load_result", "verify"]
API = ["canary", "gate_passes", "repair", "set_items", "verify"]
# SETTINGS (the CLI's --set items for the one-second tiny scan) as keyword overrides
TINY = {"pool__min_images": 8, "pool__max_images": 8, "inversion__batch_size": 8, "inversion__epochs": 1, "device": "cpu"}


def test_public_names_are_pinned_and_resolve():
    import ci_gate.api
    import ci_gate.errors
    import ci_gate.policy
    import ci_gate.result

    assert ci_gate.__all__ == PUBLIC
    assert ci_gate.api.__all__ == API
    homes = {"verify": ci_gate.api, "gate_passes": ci_gate.api, "Result": ci_gate.result, "load_result": ci_gate.result,
             "Policy": ci_gate.policy, "load_policy": ci_gate.policy}
    for name in PUBLIC:
        value = getattr(ci_gate, name)
        home = homes.get(name, ci_gate.errors if name.endswith(("Error", "Failure")) else ci_gate)
        assert value is getattr(home, name), name
        assert name in dir(ci_gate)
    with pytest.raises(AttributeError, match="no attribute 'scan_model'"):
        ci_gate.scan_model  # noqa: B018
    # importing a submodule binds its name on the package, over a lazily exported one of that name
    # (why repair and canary stay in ci_gate.api): no exported name may be a submodule's
    import pkgutil

    assert not set(PUBLIC) & {m.name for m in pkgutil.iter_modules(ci_gate.__path__)}


def test_import_ci_gate_loads_nothing_heavy():
    probe = ("import json, sys, ci_gate; heavy = ('torch', 'pydantic', 'yaml', 'typer', 'ci_gate.api', 'mlflow');"
             "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_cli_loads_mlflow_only_for_registry_uris():
    # loading the verify and registry commands (what a local verify imports first) leaves mlflow out
    probe = ("import json, sys\nfrom ci_gate.cli import main\ncodes = []\n"
             "for argv in (['verify', '--help'], ['registry', 'promote', '--help'], ['registry', '--help']):\n"
             "    try:\n        main(argv)\n    except SystemExit as exc:\n        codes.append(exc.code)\n"
             "print(json.dumps([codes, 'mlflow' in sys.modules, 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [[0, 0, 0], False, False]
    assert "models:/NAME/VERSION" in done.stdout and "MLFLOW_TRACKING_URI" in done.stdout


def test_set_items_write_python_values_as_the_cli_would():
    from ci_gate.api import set_items

    items = set_items({"detection__k": 3, "inversion__epsilon": [1e-5, 4 / 255], "name": "1.5", "device": "cpu", "detection.min_asr": 0.5})
    assert items[0] == "detection.k=3" and items[3] == "device=cpu" and items[4] == "detection.min_asr=0.5"
    # a float PyYAML would read back as a string if written as Python prints it (1e-05)
    pol = ci_gate.load_policy(None, items[:3])[0]
    assert pol.detection.k == 3 and pol.inversion.epsilon == (1e-5, 4 / 255) and pol.name == "1.5"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    return build(tmp_path_factory.mktemp("api"))


def test_verify_returns_the_cli_result_without_output(tiny, tmp_path, capsys):
    from ci_gate.cli import main
    from ci_gate.result import load_result

    ckpt, pool = tiny
    seen = []
    result = ci_gate.verify(ckpt, pool=pool, progress=lambda done, total, n: seen.append((done, total, n)), **TINY)
    assert capsys.readouterr() == ("", "")  # nothing printed
    assert isinstance(result, ci_gate.Result) and seen and {n for *_, n in seen} == {len(result.classes)}
    assert [d for d, *_ in seen] == sorted({d for d, *_ in seen})  # it reports, in order
    # the tiny model embeds its tower and no published weights are given: unverified, which the
    # default policy fails whatever the classes scored
    assert result.encoder.status == "unverified" and result.unverified_fails
    assert ci_gate.gate_passes(result) is False
    assert not list(tmp_path.iterdir())  # no out=: nothing left anywhere we look

    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(ckpt), "--pool", str(pool), "--out", str(tmp_path / "cli"), "--quiet", *SETTINGS])
    cli = load_result(tmp_path / "cli" / "result.json")
    assert exit_.value.code == (0 if ci_gate.gate_passes(cli) else 1)
    assert result.policy.sha256 == cli.policy.sha256  # keyword overrides == the CLI's --set
    assert (result.verdict, [c.anomaly for c in result.classes]) == (cli.verdict, [c.anomaly for c in cli.classes])


def test_verify_out_writes_the_report_folder(tiny, tmp_path):
    ckpt, pool = tiny
    result = ci_gate.verify(ckpt, "default", pool, out=tmp_path / "r", **TINY)
    saved = ci_gate.load_result(tmp_path / "r" / "result.json")
    assert saved.model.sha256 == result.model.sha256 and saved.verdict == result.verdict
    assert {"report.html", "summary.md", "report.sarif", "triggers"} <= {p.name for p in (tmp_path / "r").iterdir()}
    assert all((tmp_path / "r" / c.trigger_png).is_file() for c in result.classes)


def test_verify_raises_input_errors_instead_of_exiting(tiny, tmp_path):
    ckpt, pool = tiny
    with pytest.raises(InputError, match="detection.k"):
        ci_gate.verify(ckpt, pool=pool, detection__k="three")
    with pytest.raises(InputError, match="unknown key 'detectoin'"):
        ci_gate.verify(ckpt, pool=pool, detectoin__k=3)
    with pytest.raises(InputError, match="no OOD pool"):
        ci_gate.verify(ckpt)
    with pytest.raises(InputError) as err:
        ci_gate.verify(tmp_path / "missing.safetensors", pool=pool, **TINY)
    assert "missing.safetensors" in str(err.value)
    # the output folder is checked before any compute, and named as the keyword
    with pytest.raises(InputError, match="^out: .*is the input checkpoint"):
        ci_gate.verify(ckpt, pool=pool, out=ckpt, **TINY)


def test_verify_takes_a_policy_object(tiny):
    ckpt, pool = tiny
    strict = ci_gate.load_policy("strict")[0]
    result = ci_gate.verify(ckpt, strict, pool, **TINY)
    assert result.policy.name == strict.name and result.policy.settings["detection"]["k"] == strict.detection.k


def test_repair_and_canary_refuse_bad_input_before_any_compute(tiny, tmp_path):
    import ci_gate.api

    ckpt, pool = tiny
    with pytest.raises(InputError, match="repair.allowed"):  # the bundled default policy does not opt in
        ci_gate.api.repair(ckpt, tmp_path / "clean", tmp_path / "repaired.safetensors", pool=pool)
    with pytest.raises(InputError, match="^out: .*is the input checkpoint"):
        ci_gate.api.repair(ckpt, tmp_path / "clean", ckpt, "permissive", pool, repair__allowed=True)
    with pytest.raises(InputError, match="unknown attack 'nope'"):
        ci_gate.api.canary(ckpt, tmp_path / "data", pool=pool, attack="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
