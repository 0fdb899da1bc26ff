import pytest

from ci_gate.errors import InputError
from ci_gate.policy import Policy, load_policy


@pytest.mark.parametrize("name", ["default", "strict", "permissive"])
def test_bundled_policies_validate(name):
    policy, _ = load_policy(name)
    assert policy.name == name
    assert policy.inversion.epsilon == pytest.approx(4 / 255) or name != "default"


def test_default_policy_has_the_paper_settings():
    p, _ = load_policy("default")
    assert (p.inversion.epsilon, p.inversion.lr, p.inversion.batch_size, p.inversion.epochs) == (pytest.approx(4 / 255), 0.1, 32, 1)
    assert p.pool.max_images == 1000


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\ndetection:\n  kk: 3\n")
    with pytest.raises(InputError) as err:
        load_policy(str(f))
    assert "detection.kk" in str(err.value) and str(f) in str(err.value)
    assert err.value.exit_code == 2


def test_bad_value_is_named(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\ninversion:\n  lr: -1\n")
    with pytest.raises(InputError, match="inversion.lr"):
        load_policy(str(f))


def test_overrides_and_fractions():
    p, _ = load_policy("default", ["inversion.epsilon=8/255", "detection.k=3.5", "pool.max_images=164"])
    assert p.inversion.epsilon == pytest.approx(8 / 255)
    assert p.detection.k == 3.5 and p.pool.max_images == 164


def test_override_of_unknown_key_is_rejected():
    with pytest.raises(InputError, match="detection.nope"):
        load_policy("default", ["detection.nope=1"])


def test_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("version: [1\n")
    with pytest.raises(InputError, match="YAML"):
        load_policy(str(f))
    with pytest.raises(InputError, match="not found"):
        load_policy(str(tmp_path / "missing.yaml"))


def test_policy_hash_is_stable_and_sensitive():
    a, _ = load_policy("default")
    b, _ = load_policy("default")
    c, _ = load_policy("default", ["detection.k=2.5"])
    assert a.sha256() == b.sha256() != c.sha256()
    assert Policy().sha256() == Policy().sha256()
