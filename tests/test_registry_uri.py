"""`models:/` URIs are parsed without mlflow: a version number or an alias, nothing MLflow would read otherwise."""

from __future__ import annotations

import pytest

from ci_gate.errors import InputError
from ci_gate.registry import ModelRef, is_models_uri, parse_models_uri


@pytest.mark.parametrize(("text", "ref"), [
    ("models:/clip-coop/7", ModelRef("clip-coop", version="7")),
    ("models:/team/clip coop/12", ModelRef("team/clip coop", version="12")),  # the last segment is the version
    ("models:/clip-coop@production", ModelRef("clip-coop", alias="production")),
    ("models:/clip@coop@champion_2", ModelRef("clip@coop", alias="champion_2")),
])  # fmt: skip
def test_versions_and_aliases(text, ref):
    assert parse_models_uri(text) == ref and ref.uri == text and is_models_uri(text)


@pytest.mark.parametrize(("text", "problem"), [
    ("models:/clip-coop/latest", "the version must be a number"),
    ("models:/clip-coop/0", "the version must be a number"),
    ("models:/clip-coop/Production", "the version must be a number"),  # stages are MLflow's deprecated form
    ("models:/clip-coop", "give a version or an alias"),
    ("models:/clip-coop@v3", "not an MLflow alias"),
    ("models:/clip-coop@pro duction", "not an MLflow alias"),
    ("models://host/clip/1", "not a registry URI"),
    ("models:clip/1", "not a registry URI"),
    ("models:/@prod", "give a version or an alias"),
])  # fmt: skip
def test_what_is_refused_names_the_argument(text, problem):
    with pytest.raises(InputError, match=problem) as err:
        parse_models_uri(text, "CHECKPOINT")
    assert err.value.path == "CHECKPOINT"


def test_a_local_path_is_not_a_registry_uri():
    assert not is_models_uri("models/clip.safetensors") and not is_models_uri("./models:/x")
