"""Model registries: where MLOps teams keep the models the gate has to pass.

``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` are MLflow Model Registry URIs (the syntax
MLflow itself uses). Parsing one is cheap and lives here; everything that talks to a server is in
:mod:`ci_gate.registry.mlflow`, which imports mlflow (seconds) only when a registry URI is used,
so a local ``ci-gate verify model.safetensors`` never pays for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ci_gate.errors import InputError

SCHEME = "models:/"
# MLflow's own rules: a version is a positive integer; an alias is a letter, digits, _ or -, and
# not of the form v<digits> (which MLflow reserves for versions)
_VERSION = re.compile(r"[1-9][0-9]*")
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")


def is_models_uri(text: str) -> bool:
    return str(text).startswith("models:")


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, by number or by alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.name}/{self.version}" if self.version is not None else f"{SCHEME}{self.name}@{self.alias}"


def parse_models_uri(text: str, what: str = "checkpoint") -> ModelRef:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``; InputError naming ``what`` otherwise.
    (``models:/NAME/latest`` and stages are MLflow's deprecated forms: a gate pins a version.)"""
    text = str(text)
    if not text.startswith(SCHEME) or text.startswith(SCHEME + "/"):
        raise InputError(what, f"{text!r} is not a registry URI; expected models:/NAME/VERSION or models:/NAME@ALIAS")
    rest = text[len(SCHEME):]
    if "/" in rest:
        name, _, version = rest.rpartition("/")
        if not name or not _VERSION.fullmatch(version):
            raise InputError(what, f"{text!r}: the version must be a number (models:/NAME/VERSION), or use models:/NAME@ALIAS")
        return ModelRef(name=name, version=version)
    name, at, alias = rest.rpartition("@")
    if not at or not name:
        raise InputError(what, f"{text!r}: give a version or an alias, models:/NAME/VERSION or models:/NAME@ALIAS")
    if not _ALIAS.fullmatch(alias) or re.fullmatch(r"[vV][0-9]+", alias):
        raise InputError(what, f"{text!r}: {alias!r} is not an MLflow alias (letters, digits, _ and -; not v<number>)")
    return ModelRef(name=name, alias=alias)
