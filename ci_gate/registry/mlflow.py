"""The MLflow Model Registry: fetch a version's checkpoint, write the gate's verdict back, promote.

What ``ci-gate verify models:/NAME/VERSION`` leaves on the version (model-version tags, all
strings; ``ci_gate.`` keys are ci-gate's and rewritten by every scan):

    ci_gate.verdict           clean | backdoor            (the scan's verdict)
    ci_gate.gate              pass | fail                  (exit 0 or 1 under the policy's report.fail_on)
    ci_gate.target            the suspected target class, "" when none
    ci_gate.result_sha256     SHA-256 of the result.json logged with the report
    ci_gate.checkpoint_sha256 SHA-256 of the checkpoint file that was scanned
    ci_gate.checkpoint        its path among the version's artifacts
    ci_gate.version           the ci-gate version that scanned
    ci_gate.policy            the policy's name; ci_gate.policy_sha256 its hash (Result.policy.sha256)
    ci_gate.report            runs:/RUN_ID/PATH of the logged report folder

The report folder is logged as artifacts of the version's source run (``ci-gate/version-N/<first 12
hex of the result hash>``), so it sits next to the training run that produced the model; a version
registered without a run gets a new run in the experiment ``ci-gate`` instead. Tags are written
last: a tag never names a report that is not uploaded.

``promote`` trusts nothing it cannot check again: the tags must name the same policy hash, the
logged result.json must hash to ``ci_gate.result_sha256`` and agree with the tags, the result must
pass the gate under that policy with no backdoor verdict, and the version's checkpoint must still
hash to what was scanned. Only then does the alias move.

mlflow is imported here and only here; the tracking URI is given by the caller (the CLI reads
``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` once), never taken from mlflow's global state.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ci_gate import __version__
from ci_gate.checkpoint.format import load_checkpoint
from ci_gate.encoder_check import status_contradiction
from ci_gate.errors import GateFailure, InputError
from ci_gate.io import sha256_file
from ci_gate.policy import Policy
from ci_gate.registry import ModelRef
from ci_gate.result import Result, load_result

PREFIX = "ci_gate."
VERDICT = PREFIX + "verdict"
EXPERIMENT = "ci-gate"
REPORT_ROOT = "ci-gate"  # the run's artifact folder for reports
CHECKPOINT_SUFFIX = ".safetensors"
# weights in other formats: a version that holds one beside the checkpoint ships weights the gate
# did not scan (a server may well load model.pt rather than model.safetensors)
OTHER_WEIGHTS = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".h5", ".keras", ".onnx", ".gguf", ".npz", ".npy",
                 ".msgpack", ".pb", ".tflite", ".mar")


def shown_uri(uri: str) -> str:
    """A tracking URI fit for a message: ``https://user:token@host`` loses its credentials."""
    try:
        parts = urllib.parse.urlsplit(uri)
        if parts.username is None and parts.password is None:
            return uri
        parts.port  # noqa: B018  (a bad port raises only when read)
    except ValueError:
        return "<the tracking URI>"
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _mlflow_errors(what: str, tracking_uri: str) -> Iterator[None]:
    """MLflow's refusals (no such model, no permission, a server that does not answer) are bad
    input: exit 2 naming what was asked for, in one line, without the URI's credentials (MLflow's
    message quotes the request URL)."""
    try:
        yield
    except MlflowException as exc:
        message = " ".join(str(getattr(exc, "message", exc)).split()).replace(tracking_uri, shown_uri(tracking_uri))
        raise InputError(what, f"MLflow: {message[:300]}") from None


@dataclass(frozen=True)
class Recorded:
    tags: dict[str, str]
    report_uri: str


class MlflowRegistry:
    """One tracking server (and its model registry, at the same URI)."""

    def __init__(self, tracking_uri: str | None):
        if not tracking_uri:
            raise InputError("--tracking-uri", "no MLflow tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
        self.tracking_uri = tracking_uri
        # an unsupported scheme or a path (mlflow's file store) is refused here, by MlflowException
        with _mlflow_errors("--tracking-uri", tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # --- reading -------------------------------------------------------------------------
    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version a reference names now; an alias is resolved once, so the scan, the tags
        and the report all concern the same version even if the alias moves meanwhile."""
        with _mlflow_errors(ref.uri, self.tracking_uri):
            if ref.version is not None:
                return self.client.get_model_version(ref.name, ref.version)
            return self.client.get_model_version_by_alias(ref.name, ref.alias)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        if "'" in name or "\\" in name:
            raise InputError("NAME", f"{name!r}: a model name with a quote or backslash cannot be searched for")
        found: list[ModelVersion] = []
        token = None
        with _mlflow_errors(f"models:/{name}", self.tracking_uri):
            self.client.get_registered_model(name)  # a typo is an error, not "nothing new"
            while True:
                page = self.client.search_model_versions(f"name='{name}'", page_token=token)
                found.extend(page)
                token = page.token
                if not token:
                    break
        return sorted(found, key=lambda mv: int(mv.version))

    def download_checkpoint(self, mv: ModelVersion, dst: Path) -> tuple[Path, str]:
        """(local checkpoint, its path among the version's artifacts): the one .safetensors file
        the version holds. None or several is bad input: the gate scans exactly what ships."""
        uri = version_uri(mv)
        with _mlflow_errors(uri, self.tracking_uri):
            # the storage location itself (file:, s3:, mlflow-artifacts:, runs:...): a models:/
            # URI handed to download_artifacts would be resolved against mlflow's default
            # registry (a new ./mlflow.db), not this server
            source = self.client.get_model_version_download_uri(mv.name, mv.version)
            local = Path(download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=self.tracking_uri))
        root = local if local.is_dir() else local.parent
        # ci-gate/ holds reports ci-gate logged (trigger tensors are .safetensors too) when a
        # version's source is the whole run
        shipped = sorted(p for p in root.rglob("*") if p.relative_to(root).parts[0] != REPORT_ROOT)
        links = [p.relative_to(root).as_posix() for p in shipped if p.is_symlink()]
        if links:  # what a link points at is not among the bytes the gate hashes and scans
            raise InputError(uri, f"a symbolic link among the version's artifacts ({links[0]}); a version must hold its files themselves")
        # the suffix in any case: MODEL.SAFETENSORS would otherwise be a second, unscanned checkpoint
        found = [p for p in shipped if p.is_file() and p.suffix.lower() == CHECKPOINT_SUFFIX]
        if not found:
            raise InputError(uri, f"no {CHECKPOINT_SUFFIX} checkpoint among the version's artifacts (convert one with ci-gate convert)")
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(root)) for p in found[:4]) + (", ..." if len(found) > 4 else "")
            raise InputError(uri, f"{len(found)} {CHECKPOINT_SUFFIX} files among the version's artifacts ({names}); a version must hold exactly one checkpoint")
        others = [p.relative_to(root).as_posix() for p in shipped if p.suffix.lower() in OTHER_WEIGHTS]
        if others:
            names = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
            raise InputError(uri, f"weights in another format beside the checkpoint ({names}): the gate scans the {CHECKPOINT_SUFFIX} "
                                  "file only, so a version must not ship weights it did not scan")
        return found[0], found[0].relative_to(root).as_posix()

    # --- writing -------------------------------------------------------------------------
    def record(self, mv: ModelVersion, report_dir: Path, checkpoint_path: str) -> Recorded:
        """Log ``report_dir`` (a finished verify folder) and tag the version with its result."""
        result_json = report_dir / "result.json"
        result = load_result(result_json)
        result_sha = sha256_file(result_json)
        uri = version_uri(mv)
        with _mlflow_errors(uri, self.tracking_uri):
            run_id = mv.run_id or self._new_run(mv)
            path = f"{REPORT_ROOT}/version-{mv.version}/{result_sha[:12]}"
            self.client.log_artifacts(run_id, str(report_dir), artifact_path=path)
            tags = verdict_tags(result, result_sha, checkpoint_path, f"runs:/{run_id}/{path}")
            for key, value in tags.items():
                self.client.set_model_version_tag(mv.name, mv.version, key, value)
        return Recorded(tags, tags[PREFIX + "report"])

    def _new_run(self, mv: ModelVersion) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(EXPERIMENT)
        run = self.client.create_run(experiment_id, run_name=f"ci-gate {mv.name} v{mv.version}",
                                     tags={PREFIX + "model": version_uri(mv)})
        # mlflow writes "View run <url>" to stdout here; stdout is ci-gate's (a JSON result may
        # be going there), and the URL is the tracking URI, which may carry credentials
        with contextlib.redirect_stdout(io.StringIO()):
            self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def promote(self, mv: ModelVersion, alias: str, policy: Policy) -> Result:
        """Move ``alias`` to ``mv`` if it verified clean under ``policy``; GateFailure (exit 1)
        with the reason otherwise. Returns the verified result."""
        uri = version_uri(mv)
        result = self.check_verified(mv, policy)
        with _mlflow_errors(uri, self.tracking_uri):
            self.client.set_registered_model_alias(mv.name, alias, mv.version)
        return result

    def check_verified(self, mv: ModelVersion, policy: Policy) -> Result:
        uri = version_uri(mv)
        tags = dict(mv.tags or {})
        if VERDICT not in tags:
            raise GateFailure(f"{uri} was never verified by ci-gate (no {VERDICT} tag); run ci-gate verify {uri} first")
        wanted = policy.sha256()
        if tags.get(PREFIX + "policy_sha256") != wanted:
            raise GateFailure(f"{uri} was verified under policy {tags.get(PREFIX + 'policy')!r} (sha256 {str(tags.get(PREFIX + 'policy_sha256'))[:12]}), "
                              f"not under policy {policy.name!r} (sha256 {wanted[:12]}); verify it under this policy first")
        with tempfile.TemporaryDirectory(prefix="ci-gate-promote-") as tmp:
            result = self._logged_result(uri, tags, Path(tmp))
            if result.policy.sha256 != wanted:
                raise GateFailure(f"{uri}: the logged result was made under another policy than its tags say")
            if result.verdict != tags[VERDICT] or (result.target_class or "") != tags.get(PREFIX + "target", ""):
                raise GateFailure(f"{uri}: the {PREFIX}verdict/target tags do not match the logged result")
            if result.verdict == "backdoor":
                raise GateFailure(f"{uri} verified as BACKDOOR (target {result.target_class!r}) under policy {policy.name!r}; not promoted")
            # a modified tower is refused whatever fail_on: 'never' keeps a CI job green, it does
            # not make the delivered towers the published ones (as export and attest)
            if result.encoder.modified or result.unverified_fails or result.gate_fails(policy.report.fail_on):
                why = (
                    "its encoder differs from the published weights" if result.encoder.modified
                    else "its encoder could not be checked against published weights" if result.unverified_fails
                    else f"report.fail_on={policy.report.fail_on}"
                )
                raise GateFailure(f"{uri} fails the gate under policy {policy.name!r} ({why}); not promoted")
            # the version's bytes now are the bytes that were scanned: a re-logged artifact is
            # a different model, however the tags read
            ckpt, _ = self.download_checkpoint(mv, Path(tmp) / "checkpoint")
            if sha256_file(ckpt) != result.model.sha256:
                raise GateFailure(f"{uri}: the checkpoint changed since it was verified (sha256 {result.model.sha256[:12]} was scanned); verify it again")
            # whoever registers a version can log its result: the one field that would let an embedded tower pass unchecked
            contradiction = status_contradiction(result.encoder.status, load_checkpoint(ckpt).meta.backbone.embedded)
            if contradiction:
                raise GateFailure(f"{uri}: the logged result {contradiction}; verify it again")
        return result

    def _logged_result(self, uri: str, tags: dict[str, str], dst: Path) -> Result:
        report = tags.get(PREFIX + "report", "")
        if not report.startswith("runs:/"):
            raise GateFailure(f"{uri}: no logged report ({PREFIX}report tag missing); verify it again")
        with _mlflow_errors(uri, self.tracking_uri):
            try:
                local = Path(download_artifacts(artifact_uri=f"{report}/result.json", dst_path=str(dst / "report"), tracking_uri=self.tracking_uri))
            except MlflowException as exc:
                raise GateFailure(f"{uri}: the logged report {report} cannot be read ({' '.join(str(exc).split())[:200]}); verify it again") from None
        if sha256_file(local) != tags.get(PREFIX + "result_sha256"):
            raise GateFailure(f"{uri}: the logged result.json does not hash to the {PREFIX}result_sha256 tag; verify it again")
        try:
            return load_result(local)
        except InputError as exc:
            raise GateFailure(f"{uri}: the logged result.json is not a ci-gate result ({exc.problem})") from None


# every tag record() writes: a version carrying only some of them was not tagged by a scan
RECORD_KEYS = frozenset(PREFIX + k for k in ("verdict", "gate", "target", "result_sha256", "checkpoint_sha256", "checkpoint",
                                             "version", "policy", "policy_sha256", "report"))


def recorded(mv: ModelVersion) -> bool:
    """Whether the version carries a whole ci-gate record. Tags are writable by whoever registers
    the version, so this is no proof of a scan (promote checks the record again); it only keeps
    a hand-set ``ci_gate.verdict`` from passing for one."""
    return RECORD_KEYS <= set(mv.tags or {})


def version_uri(mv: ModelVersion) -> str:
    return f"models:/{mv.name}/{mv.version}"


def verdict_tags(result: Result, result_sha256: str, checkpoint_path: str, report_uri: str) -> dict[str, str]:
    fail_on = (result.policy.settings.get("report") or {}).get("fail_on", "backdoor")
    return {
        VERDICT: result.verdict,
        PREFIX + "gate": "fail" if result.gate_fails(fail_on) else "pass",
        PREFIX + "target": result.target_class or "",
        PREFIX + "result_sha256": result_sha256,
        PREFIX + "checkpoint_sha256": result.model.sha256,
        PREFIX + "checkpoint": checkpoint_path,
        PREFIX + "version": __version__,
        PREFIX + "policy": result.policy.name,
        PREFIX + "policy_sha256": result.policy.sha256,
        PREFIX + "report": report_uri,
    }


def summary_line(uri: str, recorded: Recorded) -> str:
    tags = recorded.tags
    target = f" target={json.dumps(tags[PREFIX + 'target'])}" if tags[PREFIX + "target"] else ""
    return f"recorded on {uri}: {VERDICT}={tags[VERDICT]} gate={tags[PREFIX + 'gate']}{target} report={recorded.report_uri}"
