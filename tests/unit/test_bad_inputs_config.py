"""Bad config values and inputs are refused before any task starts, by `validate` and `run --local` alike.

The config half of issue 12's bad-input table: each row is a value a user can write in a run config
(or pass with ``--set``), or a model/data input the validate-first step reads. Each must end with exit
status 2 and one message naming the field, the value and the fix, with no traceback, from
``vxdeploy validate`` and from ``vxdeploy run --local`` (which must not have started a task or left
a workdir behind).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vxdeploy.pipelines.cli import main

Inputs = Callable[[Path, Path], list[str]]  # (scratch dir, digits dir) -> extra arguments


@dataclass(frozen=True)
class Case:
    """One bad input: the arguments that carry it and the fragments the message must contain."""

    id: str
    args: Inputs
    fragments: tuple[str, ...]


def _set(*pairs: str) -> Inputs:
    def args(tmp: Path, digits: Path) -> list[str]:
        out: list[str] = []
        for pair in pairs:
            out += ["--set", pair]
        return out

    return args


def _deploy(*pairs: str) -> Inputs:
    """``--set`` pairs on top of a deployment section that is valid but for them."""
    return _set("deployment.project=my-project-123", *pairs)


def _eval_labels(labels: Callable[[np.ndarray], np.ndarray]) -> Inputs:
    """The digits evaluation data with its labels replaced by ``labels(original)``."""

    def args(tmp: Path, digits: Path) -> list[str]:
        with np.load(digits / "digits_eval.npz") as npz:
            x, y = npz["input"], npz["labels"]
        path = tmp / "in" / "eval.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, input=x, labels=labels(y))
        return ["--eval-data", str(path)]

    return args


def _calibration(n: int) -> Inputs:
    def args(tmp: Path, digits: Path) -> list[str]:
        with np.load(digits / "digits_calibration.npz") as npz:
            x = npz["input"][:n]
        path = tmp / "in" / "calibration.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, input=x)
        return ["--calibration-data", str(path)]

    return args


def _model(uri: str) -> Inputs:
    def args(tmp: Path, digits: Path) -> list[str]:
        return ["--model", uri.format(tmp=tmp)]

    return args


def _config(text: str) -> Inputs:
    def args(tmp: Path, digits: Path) -> list[str]:
        path = tmp / "in" / "run.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return ["--config", str(path)]

    return args


_PART = "{name: enc, uri: builtin://digits-cnn}"

# The values issue 12 lists as accepted (or caught late) before the validate-first step.
ISSUE_CASES: tuple[Case, ...] = (
    Case(
        "project_id_syntax",
        _deploy("deployment.project=My_Project!!"),
        ("deployment.project", "My_Project!!", "project id"),
    ),
    Case(
        "unknown_location",
        _deploy("deployment.location=mars-central9"),
        ("deployment.location", "mars-central9", "us-central1"),
    ),
    Case(
        "machine_type_syntax",
        _deploy("deployment.machine_type=not a machine"),
        ("machine_type", "not a machine", "n1-standard-4"),
    ),
    Case(
        "h100_on_n1",
        _deploy("deployment.machine_type=n1-standard-4", "deployment.accelerator_type=NVIDIA_H100_80GB"),
        ("NVIDIA_H100_80GB", "n1-standard-4", "a3-highgpu"),
    ),
    Case(
        "l4_with_count_0",
        _deploy("deployment.accelerator_count=0"),
        ("NVIDIA_L4", "accelerator_count 0", "count >= 1"),
    ),
    Case("empty_endpoint", _deploy("deployment.endpoint=''"), ("deployment.endpoint", "''", "display name")),
    Case("infinite_canary_interval", _set("canary.interval_s=.inf"), ("canary.interval_s", "inf", "finite")),
    # YAML 1.1 reads 1e11 as a string and 1.0e+11 as a float: both are refused.
    Case(
        "max_batch_size_1e11",
        _set("triton.max_batch_size=1e11"),
        ("triton.max_batch_size", "1e11", "integer"),
    ),
    Case(
        "max_batch_size_1_0e_11",
        _set("triton.max_batch_size=1.0e+11"),
        ("triton.max_batch_size", "100000000000", "65536"),
    ),
    Case(
        "batch_sizes_above_triton_max",
        _set("selection.batch_sizes=[1, 8, 64]"),
        ("selection.batch_sizes", "[64]", "triton.max_batch_size 32"),
    ),
    Case(
        "batch_sizes_above_tensorrt_profile",
        _set("triton.max_batch_size=0", "compilation.batch_profile={min: 1, opt: 8, max: 16}"),
        ("selection.batch_sizes", "[32]", "compilation.batch_profile.max 16"),
    ),
    Case(
        "part_named_parent_dirs",
        _set("model.parts=[{name: '../../..', uri: builtin://digits-cnn}]"),
        ("model.parts.0.name", "../../..", "folder"),
    ),
    Case("empty_model_uri", _set("model.uri=''"), ("model.uri", "empty", "builtin://digits-cnn")),
    Case(
        "nonexistent_model_file",
        _model("{tmp}/missing/model.pt2"),
        ("model.uri", "model.pt2", "no such file"),
    ),
    Case(
        "too_few_calibration_samples",
        _calibration(10),
        ("data.calibration_uri", "10 calibration samples", "min_calibration_samples=64"),
    ),
    Case(
        "float_labels",
        _eval_labels(lambda y: y.astype(np.float32) + 0.5),
        ("data.eval_uri", "floats", "astype('int64')"),
    ),
    Case(
        "string_labels",
        _eval_labels(lambda y: np.array([f"class-{v}" for v in y])),
        ("data.eval_uri", "strings", "class name to its index"),
    ),
    Case(
        "two_d_one_hot_labels",
        _eval_labels(lambda y: np.eye(10, dtype=np.int64)[y]),
        ("data.eval_uri", "shape (500, 10)", "argmax(axis=1)"),
    ),
    Case(
        "monitoring_email",
        _set("monitoring.notification_emails=[oncall-at-example.com]"),
        ("monitoring.notification_emails", "oncall-at-example.com", "oncall@example.com"),
    ),
)

# Our own rows beyond the issue's list.
OWN_CASES: tuple[Case, ...] = (
    # -- deployment: resource names --------------------------------------------------------
    Case("project_too_short", _deploy("deployment.project=abc"), ("deployment.project", "'abc'", "6-30")),
    Case(
        "project_ends_with_hyphen",
        _deploy("deployment.project=my-project-"),
        ("deployment.project", "my-project-", "not ending with a hyphen"),
    ),
    Case(
        "project_upper_case",
        _deploy("deployment.project=MyProject123"),
        ("deployment.project", "MyProject123", "lowercase"),
    ),
    Case(
        "location_upper_case",
        _deploy("deployment.location=US-CENTRAL1"),
        ("deployment.location", "US-CENTRAL1", "us-central1"),
    ),
    Case(
        "location_without_number",
        _deploy("deployment.location=us-central"),
        ("deployment.location", "us-central", "us-central1"),
    ),
    Case(
        "location_global",
        _deploy("deployment.location=global"),
        ("deployment.location", "global", "Vertex AI region"),
    ),
    Case(
        "endpoint_with_slash",
        _deploy("deployment.endpoint=team/prod"),
        ("deployment.endpoint", "team/prod", "no '/'"),
    ),
    Case(
        "endpoint_too_long",
        _deploy("deployment.endpoint=" + "e" * 200),
        ("deployment.endpoint", "at most 128"),
    ),
    Case("endpoint_blank", _deploy("deployment.endpoint='   '"), ("deployment.endpoint", "display name")),
    Case(
        "service_account_not_an_email",
        _deploy("deployment.service_account=deployer"),
        ("deployment.service_account", "deployer", "iam.gserviceaccount.com"),
    ),
    Case(
        "api_endpoint_without_host",
        _deploy("deployment.api_endpoint=http://"),
        ("deployment.api_endpoint", "http://", "host"),
    ),
    Case(
        "staging_bucket_not_gcs",
        _deploy("deployment.staging_bucket=s3://bucket/x"),
        ("staging_bucket", "s3://bucket/x", "gs://"),
    ),
    Case(
        "enabled_without_project",
        _set("deployment.enabled=true"),
        ("deployment.enabled", "deployment.project"),
    ),
    # -- deployment: machine and accelerator ----------------------------------------------
    Case(
        "g2_size_that_does_not_exist",
        _deploy("deployment.machine_type=g2-standard-7"),
        ("g2-standard-7", "does not exist", "g2-standard-"),
    ),
    Case(
        "a3_with_an_l4",
        _deploy("deployment.machine_type=a3-highgpu-1g"),
        ("a3-highgpu-1g", "NVIDIA_H100_80GB", "g2-standard"),
    ),
    Case(
        "a2_without_accelerator",
        _deploy(
            "deployment.machine_type=a2-highgpu-1g",
            "deployment.accelerator_type=''",
            "deployment.accelerator_count=0",
        ),
        ("a2-highgpu-1g", "NVIDIA_TESLA_A100", "accelerator_count 1"),
    ),
    Case(
        "t4_count_3",
        _deploy(
            "deployment.machine_type=n1-standard-8",
            "deployment.accelerator_type=NVIDIA_TESLA_T4",
            "deployment.accelerator_count=3",
        ),
        ("accelerator_count 3", "NVIDIA_TESLA_T4", "1, 2, 4"),
    ),
    Case(
        "l4_on_n1",
        _deploy("deployment.machine_type=n1-standard-8"),
        ("NVIDIA_L4", "n1-standard-8", "g2-standard"),
    ),
    Case(
        "a100_on_n1",
        _deploy("deployment.machine_type=n1-standard-8", "deployment.accelerator_type=NVIDIA_TESLA_A100"),
        ("NVIDIA_TESLA_A100", "n1-standard-8", "a2-highgpu"),
    ),
    Case(
        "t4_on_e2",
        _deploy("deployment.machine_type=e2-standard-4", "deployment.accelerator_type=NVIDIA_TESLA_T4"),
        ("NVIDIA_TESLA_T4", "e2-standard-4", "n1-"),
    ),
    Case(
        "g2_with_two_l4",
        _deploy("deployment.accelerator_count=2"),
        ("g2-standard-8", "1 x NVIDIA_L4", "accelerator_count 1"),
    ),
    Case(
        "count_without_accelerator",
        _deploy(
            "deployment.machine_type=n1-standard-4",
            "deployment.accelerator_type=''",
            "deployment.accelerator_count=2",
        ),
        ("accelerator_count 2", "accelerator_type"),
    ),
    Case(
        "unknown_machine_series",
        _deploy(
            "deployment.machine_type=x9-standard-4",
            "deployment.accelerator_type=''",
            "deployment.accelerator_count=0",
        ),
        ("x9-standard-4", "series", "n1"),
    ),
    Case(
        "unknown_accelerator",
        _deploy("deployment.accelerator_type=NVIDIA_TESLA_K80"),
        ("NVIDIA_TESLA_K80", "NVIDIA_L4"),
    ),
    Case(
        "min_above_max_replicas", _deploy("deployment.min_replicas=3"), ("min_replicas 3", "max_replicas 2")
    ),
    Case(
        "infinite_operation_timeout",
        _deploy("deployment.operation_timeout_s=.inf"),
        ("deployment.operation_timeout_s", "finite"),
    ),
    Case(
        "nan_retry_timeout",
        _deploy("deployment.retry_timeout_s=.nan"),
        ("deployment.retry_timeout_s", "finite"),
    ),
    # -- triton ------------------------------------------------------------------------------
    Case(
        "negative_max_batch_size",
        _set("triton.max_batch_size=-1"),
        ("triton.max_batch_size", "-1", "greater than or equal to 0"),
    ),
    Case(
        "max_batch_size_1e5",
        _set("triton.max_batch_size=100000"),
        ("triton.max_batch_size", "100000", "65536"),
    ),
    Case(
        "triton_max_above_tensorrt_profile",
        _set("triton.max_batch_size=64"),
        ("triton.max_batch_size 64", "compilation.batch_profile.max 32"),
    ),
    Case(
        "preferred_batch_above_max",
        _set("triton.dynamic_batching={preferred_batch_sizes: [64]}"),
        ("preferred_batch_sizes", "[64]", "max_batch_size 32"),
    ),
    Case(
        "serving_image_not_a_reference",
        _set("triton.serving_image=not an image"),
        ("triton.serving_image", "not an image", "REGISTRY/REPOSITORY/IMAGE:TAG"),
    ),
    Case(
        "serving_image_upper_case",
        _set("triton.serving_image=Registry.example.com/Team/serving:1"),
        ("triton.serving_image", "Registry.example.com", "image reference"),
    ),
    Case(
        "serving_image_without_tag",
        _set("triton.serving_image=us-docker.pkg.dev/p/r/serving"),
        ("triton.serving_image", "serving", ":TAG"),
    ),
    Case(
        "shared_memory_too_small", _set("triton.shared_memory_mb=10"), ("triton.shared_memory_mb", "10", "64")
    ),
    Case("zero_instances", _set("triton.instance_count=0"), ("triton.instance_count", "0", "1")),
    Case(
        "serve_check_cosine_above_one",
        _set("triton.serve_check_min_cosine=1.5"),
        ("triton.serve_check_min_cosine", "1.5", "1"),
    ),
    Case(
        "infinite_serve_check_timeout",
        _set("triton.serve_check_startup_timeout_s=.inf"),
        ("triton.serve_check_startup_timeout_s", "finite"),
    ),
    # -- monitoring ----------------------------------------------------------------------
    Case(
        "email_without_domain_dot",
        _set("monitoring.notification_emails=[oncall@localhost]"),
        ("monitoring.notification_emails", "oncall@localhost", "e-mail"),
    ),
    Case(
        "alignment_not_whole_minutes",
        _set("monitoring.alignment_period_s=90"),
        ("monitoring.alignment_period_s", "90", "multiple of 60"),
    ),
    Case(
        "negative_alert_duration",
        _set("monitoring.alert_duration_s=-60"),
        ("monitoring.alert_duration_s", "-60", "0"),
    ),
    Case(
        "bad_notification_channel",
        _set("monitoring.notification_channels=['projects/p/notificationChannels/a b']"),
        ("monitoring.notification_channels", "notificationChannels/ID"),
    ),
    Case(
        "infinite_p99_alert", _set("monitoring.p99_latency_ms=.inf"), ("monitoring.p99_latency_ms", "finite")
    ),
    Case("error_rate_above_one", _set("monitoring.error_rate=2"), ("monitoring.error_rate", "2", "1")),
    Case(
        "loopback_monitoring_without_dashboards",
        _set("monitoring.monitoring_endpoint=127.0.0.1:9"),
        ("monitoring.monitoring_endpoint", "127.0.0.1:9", "dashboards_endpoint"),
    ),
    # -- service levels ------------------------------------------------------------------
    Case(
        "cpu_machine_type_syntax",
        _set("service_levels.cpu_machine_type=big machine"),
        ("service_levels.cpu_machine_type", "big machine", "n1-standard-4"),
    ),
    Case(
        "price_override_bad_key",
        _set("service_levels.price_overrides={'gpu:x': 1}"),
        ("price_overrides", "gpu:x", "machine:TYPE"),
    ),
    Case(
        "price_override_zero",
        _set("service_levels.price_overrides={'machine:n1-standard-4': 0}"),
        ("price_overrides", "machine:n1-standard-4", "> 0"),
    ),
    Case(
        "infinite_request_rate",
        _set("service_levels.requests_per_second=.inf"),
        ("service_levels.requests_per_second", "finite"),
    ),
    # -- other sections: non-finite numbers ---------------------------------------------------
    Case("nan_canary_error_rate", _set("canary.max_error_rate=.nan"), ("canary.max_error_rate", "finite")),
    Case(
        "infinite_latency_budget",
        _set("selection.latency_budget_ms=.inf"),
        ("selection.latency_budget_ms", "finite"),
    ),
    # -- model and data: names and URIs --------------------------------------------------
    Case(
        "part_named_dotdot",
        _set("model.parts=[{name: '..', uri: builtin://digits-cnn}]"),
        ("model.parts.0.name", "'..'", "folder"),
    ),
    Case(
        "part_name_with_slash",
        _set("model.parts=[{name: enc/x, uri: builtin://digits-cnn}]"),
        ("model.parts.0.name", "enc/x", "letters, digits"),
    ),
    Case("duplicate_part_names", _set(f"model.parts=[{_PART}, {_PART}]"), ("model", "['enc']", "own name")),
    Case("part_with_empty_uri", _set("model.parts=[{name: enc, uri: ''}]"), ("model.parts.0.uri", "empty")),
    Case("model_name_escapes", _set("model.name=../x"), ("model.name", "../x", "letters, digits")),
    Case("empty_calibration_uri", _set("data.calibration_uri=''"), ("data.calibration_uri", "empty", ".npz")),
    Case("empty_labels_key", _set("data.labels_key=''"), ("data.labels_key", "empty", "labels")),
    Case(
        "nonexistent_part_file",
        _set("model.parts=[{name: enc, uri: /nonexistent/enc.pt2}]"),
        ("model.parts[0].uri", "/nonexistent/enc.pt2", "no such file"),
    ),
    # -- model and data: contents --------------------------------------------------------
    Case("labels_out_of_range", _eval_labels(lambda y: y + 5), ("data.eval_uri", "from 5 to 14", "[0, 9]")),
    Case("negative_labels", _eval_labels(lambda y: y - 1), ("data.eval_uri", "from -1", "label encoding")),
    Case(
        "column_labels",
        _eval_labels(lambda y: y.reshape(-1, 1)),
        ("data.eval_uri", "shape (500, 1)", "reshape(-1)"),
    ),
    Case("boolean_labels", _eval_labels(lambda y: y > 4), ("data.eval_uri", "booleans", "astype('int64')")),
    Case(
        "min_samples_above_the_data",
        _set("data.min_calibration_samples=600", "data.max_calibration_samples=1024"),
        ("data.calibration_uri", "512 calibration samples", "min_calibration_samples=600"),
    ),
    Case(
        "config_file_with_two_bad_sections",
        _config("deployment: {location: mars-central9}\ntriton: {max_batch_size: -1}\n"),
        ("deployment.location", "mars-central9", "triton.max_batch_size"),
    ),
)

CASES = ISSUE_CASES + OWN_CASES


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch dir holding this case's inputs; temp folders go under it, to count leftovers."""
    scratch = tmp_path / "case"
    (scratch / "tmp").mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(scratch / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.chdir(scratch)
    return scratch


def _digits_args(digits: Path, given: list[str]) -> list[str]:
    """Use the digits model and data (on disk, fast to read) wherever the case does not replace them."""
    base = {
        "--model": str(digits / "digits_cnn.pt2"),
        "--calibration-data": str(digits / "digits_calibration.npz"),
        "--eval-data": str(digits / "digits_eval.npz"),
    }
    out = []
    for flag, value in base.items():
        if flag not in given:
            out += [flag, value]
    return out + given


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_refused_before_any_task_with_one_clear_message(
    case: Case,
    command: str,
    isolated: Path,
    digits_dir: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # given the bad input on the command line a user would type
    given = case.args(isolated, digits_dir)
    if "--config" not in given and not any(a.startswith("model.uri=") for a in given):
        given = _digits_args(digits_dir, given)
    argv = ["validate", *given] if command == "validate" else ["run", "--local", "--workdir", "work", *given]

    # when vxdeploy runs it
    code = main(argv)

    # then it exits 2 with one message naming the field, the value and the fix, and started nothing
    out, err = capfd.readouterr()
    assert code == 2, out + err
    assert "traceback" not in (out + err).lower(), out + err
    for fragment in case.fragments:
        assert fragment.lower() in err.lower(), (fragment, err)
    assert "pipeline_root" not in out + err, "a task started"
    assert not (isolated / "work").exists(), "a refused run left its workdir"
    left = [p for p in os.listdir(isolated / "tmp") if not p.startswith("torchinductor_")]  # torch's cache
    assert not left, f"temp folders left: {left}"


def test_the_table_holds_the_issue_rows_and_at_least_40_more() -> None:
    assert len(ISSUE_CASES) >= 18
    assert len(OWN_CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
