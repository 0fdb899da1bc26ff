"""Hypothesis over the policy surface: YAML documents and ``--set`` strings.

Whatever the input, ``load_policy`` either returns a Policy that is valid by its own schema (every
number finite, ``pool.min_images <= pool.max_images``, version 1, a hash that serialises) or
raises InputError naming the file or the ``--set`` item. Any other exception would be exit 3 (or,
before exit 3 existed, exit 1: "backdoor"), so it is a failure here.

The default run tries a few hundred examples per property; ``-m bench`` runs each at 10,000.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from ci_gate.errors import InputError
from ci_gate.policy import Policy, load_policy
from ci_gate.resources import policies_dir

DEFAULT_TEXT = (policies_dir() / "default.yaml").read_text(encoding="utf-8")

# Real keys (so many documents get past "unknown key" to the values) and a few near misses.
SECTIONS = {name: list(field.annotation.model_fields) for name, field in Policy.model_fields.items()
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")}
TOP = [name for name in Policy.model_fields if name not in SECTIONS]
NEAR = ["Version", "detections", "kk", "pool_", "<<", "", "k.k", "1"]

FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, 4 / 255, 0.5, 1.0, 2.0]),
)
INTS = st.one_of(st.integers(-3, 2000), st.integers(), st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**40]))
STRINGS = st.one_of(
    st.sampled_from(["4/255", "1/0", "1e999/1", "inf", "nan", "-inf", "auto", "margin", "fp16", "json", "backdoor", "true", "1/3", "0/1"]),
    st.text(max_size=20),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, STRINGS)
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=6)


@st.composite
def policy_documents(draw) -> dict:
    doc: dict = {}
    if draw(st.booleans()) or draw(st.booleans()):
        doc["version"] = draw(st.one_of(st.just(1), SCALARS))
    for key in draw(st.lists(st.sampled_from(TOP + NEAR), max_size=3, unique=True)):
        doc[key] = draw(VALUES)
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        fields = SECTIONS[section] + NEAR
        body = {k: draw(VALUES) for k in draw(st.lists(st.sampled_from(fields), max_size=4, unique=True))}
        doc[section] = body if draw(st.integers(0, 9)) else draw(VALUES)
    return doc


@st.composite
def mutated_default(draw) -> str:
    """The bundled default policy with a few characters replaced, inserted or cut."""
    text = DEFAULT_TEXT
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(["", " ", "\n", ":", "-", "[", "{", "&a", "*a", "!!", ".inf", ".nan", "#", "'", "\t", "k: 1\n", "version: 1\n", "9" * 30]))
        cut = draw(st.integers(0, 8))
        text = text[:at] + piece + text[at + cut:]
    return text


SAFE_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)  # no lone surrogates: not encodable
YAML_TEXT = st.one_of(
    SAFE_TEXT,
    policy_documents().map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    policy_documents().map(lambda d: "version: 1\n" + yaml.safe_dump(d, allow_unicode=True)),
    mutated_default(),
)
DOTTED = st.one_of(
    st.sampled_from(TOP + [f"{s}.{f}" for s, fs in SECTIONS.items() for f in fs]),
    st.builds(lambda s, f: f"{s}.{f}", st.sampled_from(sorted(SECTIONS) + NEAR), st.sampled_from(NEAR + ["k", "x.y"])),
    st.text(max_size=15),
)
RAW_VALUES = st.one_of(
    STRINGS, st.sampled_from([".inf", "-.inf", ".nan", "[1", "{a: 1", "!!python/object:os.system x", "&a [*a]", "", "null", "1e400", "0x10", "1_0", "a: b: c"]),
    VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)
# values a user would plausibly write, so that many --set lists are accepted and the property
# also checks what gets through
PLAUSIBLE = st.sampled_from(["1", "2", "3", "10", "100", "1000", "0.5", "0.25", "4/255", "8/255", "auto", "margin", "fp32",
                             "cpu", "backdoor", "never", "[json, md]", "true", "false", "null", "error", "note", "strict"])
REAL_KEYS = st.sampled_from([k for k in TOP if k != "version"] + [f"{s}.{f}" for s, fs in SECTIONS.items() for f in fs])
SET_ITEMS = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", DOTTED, RAW_VALUES),
    st.builds(lambda k, v: f"{k}={v}", REAL_KEYS, PLAUSIBLE),
    st.builds(lambda k, v: f"{k}={v}", REAL_KEYS, PLAUSIBLE),
    st.text(max_size=30),
)


def _finite_numbers(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return True


def _event(name: str) -> None:  # outcome counts for --hypothesis-show-statistics
    if currently_in_test_context():
        event(name)


def _check(path: Path, text: str | None, overrides: list[str]) -> None:
    spec = None
    if text is not None:
        path.write_text(text, encoding="utf-8")
        spec = str(path)
    try:
        policy, _ = load_policy(spec, overrides)
    except InputError as err:
        _event("rejected: " + err.problem.split(":")[0].split("'")[0][:30])
        assert err.exit_code == 2 and err.problem.strip()
        assert err.path == str(path) or (err.path or "").startswith("--set"), str(err)
        return
    _event("accepted")
    dumped = policy.model_dump()
    assert _finite_numbers(dumped), dumped
    assert policy.version == 1 and policy.pool.min_images <= policy.pool.max_images
    assert Policy.model_validate(dumped) == policy
    json.dumps(policy.model_dump(mode="json"), allow_nan=False)
    assert len(policy.sha256()) == 64


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-policy") / "policy.yaml"


def _properties(examples: int):
    common = settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

    @common
    @given(text=YAML_TEXT)
    def documents(policy_file, text):
        _check(policy_file, text, [])

    @common
    @given(overrides=st.lists(SET_ITEMS, min_size=1, max_size=4))
    def set_items_on_defaults(policy_file, overrides):
        _check(policy_file, None, overrides)

    @common
    @given(text=st.one_of(YAML_TEXT, st.just(DEFAULT_TEXT)), overrides=st.lists(SET_ITEMS, max_size=3))
    def documents_with_set_items(policy_file, text, overrides):
        _check(policy_file, text, overrides)

    return documents, set_items_on_defaults, documents_with_set_items


test_documents, test_set_items_on_defaults, test_documents_with_set_items = _properties(200)
_bench = _properties(10_000)
test_documents_bench, test_set_items_on_defaults_bench, test_documents_with_set_items_bench = (pytest.mark.bench(t) for t in _bench)


def test_the_fuzzer_reaches_both_outcomes(policy_file):
    """The strategies are not all rejected at the YAML or version stage: a property that only
    ever sees InputError would test nothing about accepted policies."""
    _check(policy_file, DEFAULT_TEXT, ["detection.k=3.5"])
    assert load_policy(str(policy_file), ["detection.k=3.5"])[0].detection.k == 3.5
    with pytest.raises(InputError, match="finite"):
        load_policy(str(policy_file), ["detection.k=.inf"])
