"""Action outputs ($GITHUB_OUTPUT) and the job summary ($GITHUB_STEP_SUMMARY).

Both files belong to the runner and collect lines from every step, so they are appended to, not
replaced atomically like our own outputs. The caller passes the paths (read from the environment
in the CLI command); nothing here reads environment variables.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from ci_gate.github.redact import redact
from ci_gate.report import FILE_NAMES
from ci_gate.result import Result


def format_outputs(values: Mapping[str, str]) -> str:
    """``name<<DELIM`` / value / ``DELIM`` blocks: safe for values with newlines or '=' in them."""
    blocks = []
    for name, value in values.items():
        if not name or any(ch in name for ch in "\n\r=<"):
            raise ValueError(f"invalid output name {name!r}")
        delimiter = f"ci_gate_{secrets.token_hex(8)}"
        while delimiter in value:  # practically never; a value must not be able to end its block early
            delimiter = f"ci_gate_{secrets.token_hex(8)}"
        blocks.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(blocks)


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def write_outputs(path: Path, values: Mapping[str, str]) -> None:
    # Redacted per value, before the blocks are framed: a mask never lands inside a delimiter.
    _append(path, format_outputs({name: redact(value) for name, value in values.items()}))


def append_step_summary(path: Path, markdown: str) -> None:
    markdown = redact(markdown)
    _append(path, markdown if markdown.endswith("\n") else markdown + "\n")


def result_outputs(result: Result, result_json: Path) -> dict[str, str]:
    """verdict, target-class and the report paths that exist next to result.json ('' when absent)."""
    folder = result_json.parent

    def existing(fmt: str) -> str:
        path = folder / FILE_NAMES[fmt]
        return str(path) if path.is_file() else ""

    return {
        "verdict": result.verdict,
        "target-class": result.target_class or "",
        "report-html": existing("html"),
        "report-sarif": existing("sarif"),
        "report-md": existing("md"),
        "result-json": str(result_json),
    }
