"""ci-gate: a pre-deployment backdoor gate for prompt-tuned CLIP models (CLIP-Inspector).

The Python API (see ci_gate/api.py): ``ci_gate.verify(checkpoint, policy=..., pool=..., **overrides)``
returns a :class:`Result`; ``ci_gate.api.repair`` and ``ci_gate.api.canary`` return their summaries
(they are not re-exported here: ``ci_gate.repair`` and ``ci_gate.canary`` are the modules that
implement them, and importing a submodule rebinds its name on the package). The names below load on
first use (PEP 562), so ``import ci_gate`` and the CLI's ``--help`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Where ci-gate is documented: the GitHub repository that publishes the action
#: (``uses: <owner>/ci-gate@v1``), whose README describes the tool. The one place the address is
#: written; SARIF's ``tool.driver.informationUri`` comes from here. It must be an absolute https
#: URL (GitHub's SARIF validation rejects a relative one). None until the repository is published:
#: reports then leave the optional link out rather than point at an address nobody has checked.
PROJECT_URL: str | None = None

# public name -> module that defines it
_LAZY = {
    "verify": "ci_gate.api",
    "gate_passes": "ci_gate.api",
    "Result": "ci_gate.result",
    "load_result": "ci_gate.result",
    "Policy": "ci_gate.policy",
    "load_policy": "ci_gate.policy",
    "CiGateError": "ci_gate.errors",
    "InputError": "ci_gate.errors",
    "GateFailure": "ci_gate.errors",
    "InternalError": "ci_gate.errors",
}

__all__ = ["CiGateError", "GateFailure", "InputError", "InternalError", "Policy", "Result", "__version__",
           "gate_passes", "load_policy", "load_result", "verify"]

if TYPE_CHECKING:
    from ci_gate.api import gate_passes, verify
    from ci_gate.errors import CiGateError, GateFailure, InputError, InternalError
    from ci_gate.policy import Policy, load_policy
    from ci_gate.result import Result, load_result


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ci_gate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
