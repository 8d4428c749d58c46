"""Validate a whole run before any heavy work: the merged config, the inputs and the cloud prerequisites.

:func:`validate_run` is the one validation. The CLI runs it before it starts any task, and the pipeline
runs it as its first task, so a console run with a bad input fails in seconds, before a GPU is
allocated. The config model (``components/common/config.py``) checks what needs no I/O; this module adds
what does: the model is readable, the data fits its signature, the labels fit the task, there are
enough calibration samples, the endpoint is not leased by another live rollout, and the images the
run needs exist in their registry. Stages still check what only they can know.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vxdeploy.components.common import images
from vxdeploy.components.common.config import ModelConfig, RunConfig
from vxdeploy.components.common.data import Dataset
from vxdeploy.components.common.errors import (
    ConfigError,
    ModelIntakeError,
    RolloutConflictError,
    UserError,
    VxdeployError,
)
from vxdeploy.components.common.signature import ModelSignature, TensorSpec
from vxdeploy.components.validate.image_registry import ImageStatus, check_image

CheckStatus = Literal["passed", "failed", "skipped"]


class RunValidationError(UserError):
    """Several inputs of the run are wrong; each one is named with its fix."""

    def __init__(self, problems: Sequence[UserError]) -> None:
        self.problems = list(problems)
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))
        super().__init__(f"{len(self.problems)} problems: {listed}")


class ImageUnavailableError(UserError):
    """An image the run needs is missing from its registry or cannot be read."""


@dataclass(frozen=True)
class Check:
    """One check of :func:`validate_run` and its outcome."""

    name: str
    status: CheckStatus
    detail: str = ""


@dataclass
class ValidationReport:
    """What :func:`validate_run` checked, and the problems it found."""

    subject: str
    checks: list[Check] = field(default_factory=list)
    problems: list[UserError] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, name: str, status: CheckStatus, detail: str = "") -> None:
        self.checks.append(Check(name, status, detail))

    def fail(self, name: str, problem: UserError) -> None:
        self.checks.append(Check(name, "failed", str(problem)))
        self.problems.append(problem)

    def raise_if_failed(self) -> None:
        """Raise the one problem found, or a :class:`RunValidationError` listing several."""
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            raise RunValidationError(self.problems)

    def summary(self) -> str:
        """One line: what was validated, the verdict, how many checks passed and which were skipped."""
        passed = sum(c.status == "passed" for c in self.checks)
        skipped = [c.name for c in self.checks if c.status == "skipped"]
        verdict = "valid" if self.ok else f"{len(self.problems)} problem(s)"
        text = f"{self.subject}: {verdict} ({passed} checks passed"
        return text + (f"; skipped: {', '.join(skipped)})" if skipped else ")")

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "ok": self.ok,
            "wall_s": round(self.wall_s, 3),
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
        }


ImageChecker = Callable[[str], ImageStatus]
LeaseReader = Callable[[Any], Any]


def validate_run(
    config: RunConfig,
    *,
    subject: str = "run config",
    run_id: str = "",
    check_task_images: bool = False,
    image_checker: ImageChecker | None = None,
    lease_reader: LeaseReader | None = None,
    now: Callable[[], float] = time.time,
) -> ValidationReport:
    """Check everything a run needs that the config model alone cannot.

    Args:
        config: The merged, already validated run config.
        subject: What is validated, for the report's first line (the config file, the model).
        run_id: This run's id: a rollout lease it holds itself (a retried task) is no conflict.
        check_task_images: Also check the pipeline's own task images (a run on Vertex AI pulls them).
        image_checker: Asks a registry about one image (default: its Docker Registry v2 API).
        lease_reader: Reads the endpoint's rollout lease for a ``DeploymentConfig`` (default: the
            Vertex AI API through ``vxdeploy.components.cloud.lease.read_endpoint_lease``).
        now: Clock for lease expiry.

    Returns:
        The report; call :meth:`ValidationReport.raise_if_failed` to stop on a problem.
    """
    start = time.perf_counter()
    report = ValidationReport(subject)
    report.add("config", "passed", "every section and the cross-section rules")
    noop = _already_serving(config, report)
    if noop:
        # A scheduled run of a version that already serves ends at intake: nothing to pull or lease.
        for name in ("model and data", "rollout lease", "images"):
            report.add(name, "skipped", noop)
        report.wall_s = time.perf_counter() - start
        return report
    with tempfile.TemporaryDirectory(prefix="vxdeploy-validate-") as tmp:
        _check_inputs(config, Path(tmp), report)
    _check_lease(config, run_id, lease_reader, now, report)
    _check_images(config, check_task_images, image_checker or check_image, report)
    report.wall_s = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------- model and data
def _already_serving(config: RunConfig, report: ValidationReport) -> str:
    from vxdeploy.components.common import registry

    try:
        return registry.already_deployed_reason(config.model, config.deployment) or ""
    except UserError as exc:
        report.fail("model registry version", exc)
        return "the Model Registry version could not be read"
    except Exception as exc:  # no credentials, no answer: the same error intake would meet
        report.fail(
            "model registry version",
            UserError(
                f"model.uri={config.model.uri!r}: cannot read the Model Registry version "
                f"({type(exc).__name__}: {_first_line(exc)}); check the credentials "
                "(`gcloud auth application-default login`) and deployment.api_endpoint"
            ),
        )
        return "the Model Registry version could not be read"


def _check_inputs(config: RunConfig, tmp: Path, report: ValidationReport) -> None:
    from vxdeploy.components.intake.intake import intake

    if config.model.task == "generation":
        _check_generation_inputs(config, tmp, report)
        return
    api_endpoint = config.deployment.api_endpoint or None
    try:
        result = intake(
            config.model,
            config.data,
            tmp,
            api_endpoint=api_endpoint,
            given_dim_profiles=config.compilation.dim_profiles,
        )
    except UserError as exc:
        report.fail("model and data", exc)
        return
    except VxdeployError:
        raise
    except Exception as exc:  # a file the readers choke on is still the user's input
        report.fail(
            "model and data",
            ModelIntakeError(
                f"model.uri={config.model.uri!r} or the data could not be read ({type(exc).__name__}: "
                f"{exc}); check that the files are complete (re-save them), then run again"
            ),
        )
        return
    report.add(
        "model and data",
        "passed",
        f"{result.model_format} model, {len(result.calibration)} calibration and "
        f"{len(result.evaluation)} evaluation samples fit its signature",
    )
    _check_parts(config, tmp, report)
    _check_batching(config, result.signature, report)
    _check_labels(config, result.evaluation, result.signature, report)
    _check_calibration_count(config, result.calibration, result.signature, report)


def _check_generation_inputs(config: RunConfig, tmp: Path, report: ValidationReport) -> None:
    """A generation model: every part read, the role contract, the data against the whole model."""
    from vxdeploy.components.generation.intake import intake_generation

    try:
        result = intake_generation(
            config.model, config.data, tmp, api_endpoint=config.deployment.api_endpoint or None
        )
    except UserError as exc:
        report.fail("model and data", exc)
        return
    report.add(
        "model and data",
        "passed",
        f"generation model of {len(result.parts)} parts ({', '.join(result.spec.part_names)}); "
        f"{len(result.calibration)} calibration and {len(result.evaluation)} evaluation samples fit "
        "the vision encoder's inputs",
    )
    _check_calibration_count(config, result.calibration, result.signature, report)


def _check_parts(config: RunConfig, tmp: Path, report: ValidationReport) -> None:
    if not config.model.parts:
        return
    from vxdeploy.components.intake.intake import detect_format, read_signature, resolve

    for i, part in enumerate(config.model.parts):
        what = f"model.parts[{i}].uri"
        try:
            path = resolve(part.uri, tmp / "parts" / part.name, what=what)
            part_cfg = ModelConfig(
                uri=part.uri, name=part.name, inputs=part.inputs, output_names=part.output_names
            )
            read_signature(path, detect_format(path, "auto"), part_cfg)
        except UserError as exc:
            report.fail(f"model part {part.name}", exc)
            continue
        except Exception as exc:
            report.fail(
                f"model part {part.name}",
                ModelIntakeError(f"{what}={part.uri!r} could not be read ({type(exc).__name__}: {exc})"),
            )
            continue
        report.add(f"model part {part.name}", "passed")


def _check_batching(config: RunConfig, signature: ModelSignature, report: ValidationReport) -> None:
    """A model exported with a fixed batch cannot be batched by Triton: say so before optimizing it."""
    from vxdeploy.components.package.model_config import check_batchable

    try:
        check_batchable(signature, config.triton.max_batch_size)
    except ConfigError as exc:
        report.fail("batching", exc)


def _check_labels(
    config: RunConfig, evaluation: Dataset, signature: ModelSignature, report: ValidationReport
) -> None:
    """Each output's targets fit the task it is judged by (class indices for a classifier)."""
    from vxdeploy.components.verify.accuracy import output_metrics, targets_for

    metrics = output_metrics(signature, config.model.task)
    targets = targets_for(metrics, evaluation.targets, evaluation.labels)
    if not targets:
        report.add("labels", "skipped", "data.eval_uri has no labels: accuracy is agreement with FP32")
        return
    specs = {spec.name: spec for spec in signature.outputs}
    problems, checked = [], []
    for name, values in targets.items():
        key = f"labels/{name}" if name in evaluation.targets else config.data.labels_key
        task = metrics[name].task
        array = np.asarray(values)
        if task == "classification":
            problem = classification_label_problem(array, specs[name], key)
        elif task == "regression" and array.dtype.kind not in "iuf":
            problem = f"{key!r} holds {array.dtype} values; regression targets must be numbers"
        else:
            problem = ""
        if problem:
            problems.append(f"data.eval_uri: {problem}")
        else:
            checked.append(f"{key} ({task} targets of output {name!r})")
    if problems:
        report.fail("labels", UserError("; ".join(problems)))
    else:
        report.add("labels", "passed", ", ".join(checked))


def classification_label_problem(labels: np.ndarray, output: TensorSpec, key: str) -> str:
    """Why ``labels`` cannot score a classifier's ``output`` (one class index per sample), or ''."""
    if labels.dtype.kind not in "iu":
        kind = {"f": "floats", "U": "strings", "S": "bytes", "O": "objects", "b": "booleans"}.get(
            labels.dtype.kind, str(labels.dtype)
        )
        fix = (
            "save class indices as integers (labels.astype('int64'))"
            if labels.dtype.kind in "fb"
            else "map each class name to its index (e.g. np.unique(labels, return_inverse=True)[1])"
        )
        return (
            f"{key!r} holds {kind} (dtype {labels.dtype}); a classifier is scored against integer "
            f"class indices, or accuracy is 0 %: {fix}"
        )
    if labels.ndim != 1:
        fix = (
            "labels.argmax(axis=1) for one-hot rows"
            if labels.ndim == 2 and labels.shape[1] > 1
            else "labels.reshape(-1)"
        )
        return (
            f"{key!r} has shape {labels.shape}: give one class index per sample, a 1-D array of "
            f"shape ({labels.shape[0]},) ({fix})"
        )
    classes = output.shape[-1] if output.shape and isinstance(output.shape[-1], int) else 0
    if len(labels) and (labels.min() < 0 or (classes and labels.max() >= classes)):
        bound = f"[0, {classes - 1}]" if classes else ">= 0"
        return (
            f"{key!r} holds class indices from {labels.min()} to {labels.max()}; output "
            f"{output.name!r} scores classes {bound}: check the label encoding"
        )
    return ""


def _check_calibration_count(
    config: RunConfig, calibration: Dataset, signature: ModelSignature, report: ValidationReport
) -> None:
    # The calibration stage runs (and counts its samples) whenever quantization is enabled.
    if not config.quantization.enabled:
        report.add("calibration samples", "skipped", "quantization.enabled is false")
        return
    from vxdeploy.components.calibrate.samples import check_calibration_samples

    data = config.data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, notes = check_calibration_samples(
                calibration,
                signature,
                min_samples=data.min_calibration_samples,
                warn_samples=data.warn_calibration_samples,
                max_samples=data.max_calibration_samples,
            )
    except UserError as exc:
        report.fail("calibration samples", exc)
        return
    report.add("calibration samples", "passed", "; ".join(notes) or f"{len(calibration)} samples")


# ----------------------------------------------------------------------------- rollout lease
def _check_lease(
    config: RunConfig,
    run_id: str,
    lease_reader: LeaseReader | None,
    now: Callable[[], float],
    report: ValidationReport,
) -> None:
    deployment = config.deployment
    if not deployment.enabled:
        report.add("rollout lease", "skipped", "deployment.enabled is false")
        return
    if lease_reader is None:
        from vxdeploy.components.cloud.lease import read_endpoint_lease

        lease_reader = read_endpoint_lease
    try:
        lease = lease_reader(deployment)
    except UserError as exc:
        report.fail("rollout lease", exc)
        return
    except Exception as exc:  # google.auth / google.api_core: no credentials, no answer
        report.fail(
            "rollout lease",
            UserError(
                f"deployment: cannot read endpoint {deployment.endpoint!r} in {deployment.project}/"
                f"{deployment.location} ({type(exc).__name__}: {_first_line(exc)}); check the project, "
                "the credentials (`gcloud auth application-default login`) and deployment.api_endpoint"
            ),
        )
        return
    if lease is None:
        report.add("rollout lease", "passed", f"endpoint {deployment.endpoint!r} is free")
        return
    t = now()
    if lease.expired(t):
        report.add("rollout lease", "passed", f"the lease of {lease.holder!r} expired; it will be taken over")
    elif run_id and lease.held_by(run_id):
        report.add("rollout lease", "passed", "held by this run (a retried task)")
    else:
        report.fail(
            "rollout lease",
            RolloutConflictError(
                f"deployment.endpoint={deployment.endpoint!r} is held by rollout {lease.holder!r} for "
                f"another {lease.expires_at - t:.0f} s; wait for it to finish, or, if that run is dead, "
                "remove the endpoint's vxdeploy-rollout-* labels (or wait for the lease to expire)"
            ),
        )


# ----------------------------------------------------------------------------- images
def images_to_check(config: RunConfig, *, task_images: bool) -> dict[str, str]:
    """The images this run pulls, by what they are for."""
    wanted: dict[str, str] = {}
    if config.deployment.enabled:
        wanted["serving image"] = config.triton.serving_image or images.serving_image()
    if task_images:
        for name, ref in images.task_images().items():
            wanted.setdefault(f"{name} task image", ref)
    return wanted


def _check_images(
    config: RunConfig, task_images: bool, checker: ImageChecker, report: ValidationReport
) -> None:
    wanted = images_to_check(config, task_images=task_images)
    if not wanted:
        report.add("images", "skipped", "no deployment and no Vertex AI tasks")
        return
    for purpose, ref in wanted.items():
        if purpose == "serving image" and _fake_vertex(config) and not _loopback(ref):
            report.add(
                purpose, "skipped", f"{ref}: deployment.api_endpoint is a loopback fake, nothing pulls it"
            )
            continue
        status = checker(ref)
        if status.state == "present":
            report.add(purpose, "passed", f"{ref} {status.detail}".strip())
        else:
            report.fail(purpose, ImageUnavailableError(_image_problem(purpose, config, status)))


def _image_problem(purpose: str, config: RunConfig, status: ImageStatus) -> str:
    own = purpose == "serving image" and bool(config.triton.serving_image)
    where = "triton.serving_image" if own else f"the {purpose}"
    fix = (
        "push it there, or name an image that exists in triton.serving_image"
        if own
        else (
            f"build and push the images to {images.registry()} (`make images REGISTRY={images.registry()}`), "
            "or compile the pipeline for the registry that holds them "
            "(`vxdeploy compile --registry REGISTRY`, or set VXDEPLOY_REGISTRY)"
        )
    )
    what = {
        "missing": "does not exist",
        "denied": "cannot be read with these credentials (grant roles/artifactregistry.reader)",
        "unreachable": "could not be checked",
    }[status.state]
    return f"{where} {status.image!r} {what} ({status.detail}): {fix}"


def _fake_vertex(config: RunConfig) -> bool:
    return config.deployment.api_endpoint.startswith("http://")


def _loopback(ref: str) -> bool:
    return ref.startswith(("127.0.0.1", "localhost", "[::1]"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
