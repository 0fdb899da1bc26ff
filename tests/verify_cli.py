"""Run the real ``ci-gate verify`` CLI in a subprocess, as a user's CI job does (end-to-end tests)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from conftest import OOD, require

POOL_ARGS = ["--set", "pool.max_images=256"]


def verify(checkpoint, out, *extra):
    require(OOD)
    cmd = [sys.executable, "-m", "ci_gate", "verify", str(checkpoint), "--pool", str(OOD), "--out", str(out), "--quiet", *POOL_ARGS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()
