"""The JSON Schema of a policy file, generated from the pydantic model in ci_gate.policy.

It ships as ``policies/policy.schema.json`` (in the wheel under ``ci_gate/_data/policies``), so
editors validate policy files as they are typed, e.g. with the YAML language server's
``# yaml-language-server: $schema=<path>/policy.schema.json`` first line. A test keeps the shipped
file equal to what this module generates; ``ci-gate policy schema`` prints it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_FILE = "policy.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"  # the dialect pydantic generates


def policy_json_schema() -> dict[str, Any]:
    from ci_gate.policy import POLICY_VERSION, Policy

    generated = Policy.model_json_schema(mode="validation")
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "title": "ci-gate policy",
        "description": (
            f"A ci-gate policy file (version {POLICY_VERSION}): every knob of a scan. "
            "Unknown keys are errors; omitted keys take the defaults shown."
        ),
    }
    schema.update({k: v for k, v in generated.items() if k not in ("title", "description")})
    # the model defaults `version`, but a file must state it (ci_gate.policy refuses one without)
    schema["required"] = sorted({*schema.get("required", []), "version"})
    return schema


def policy_json_schema_text() -> str:
    """The schema as the shipped file holds it: stable key order, two-space indent, final newline."""
    return json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + "\n"


def shipped_schema_path() -> Path:
    from ci_gate.resources import policies_dir

    return policies_dir() / SCHEMA_FILE
