"""The validate-first step: what `validate_run` checks beyond the config model, and what it tells the user."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fakes.registry import FakeRegistry
from tests.fakes.vertex import FakeVertex
from vxdeploy.components.cloud.labels import MANAGED_BY_KEY, MANAGED_BY_VALUE
from vxdeploy.components.cloud.lease import EXPIRES_KEY, HOLDER_KEY
from vxdeploy.components.common import images
from vxdeploy.components.common.config import RunConfig, parse_config
from vxdeploy.components.common.errors import ConfigError, RolloutConflictError
from vxdeploy.components.validate.checks import ImageUnavailableError, RunValidationError, validate_run
from vxdeploy.components.validate.image_registry import ImageRef, check_image
from vxdeploy.pipelines.cli import main


def _digits(digits: Path, **sections: dict[str, Any]) -> RunConfig:
    data = {
        "calibration_uri": str(digits / "digits_calibration.npz"),
        "eval_uri": str(digits / "digits_eval.npz"),
    }
    return parse_config({"model": {"uri": str(digits / "digits_cnn.pt2")}, "data": data, **sections})


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    with FakeRegistry() as fake:
        monkeypatch.setenv("VXDEPLOY_REGISTRY", fake.prefix())
        yield fake


@pytest.fixture()
def vertex(registry: FakeRegistry) -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        yield fake


def _deployment(vertex: FakeVertex) -> dict[str, Any]:
    return {
        "enabled": True,
        "project": vertex.project,
        "api_endpoint": vertex.address,
        "machine_type": "n1-standard-4",
        "accelerator_type": "",
        "accelerator_count": 0,
        "retry_timeout_s": 2,
    }


# ----------------------------------------------------------------------------- inputs
def test_the_default_run_validates_and_says_what_it_checked(digits_dir: Path) -> None:
    report = validate_run(_digits(digits_dir), subject="digits")

    assert report.ok
    assert [c.name for c in report.checks if c.status == "passed"] == [
        "config",
        "model and data",
        "labels",
        "calibration samples",
    ]
    assert report.summary().startswith("digits: valid (4 checks passed; skipped: rollout lease, images")


def test_several_problems_are_reported_together(digits_dir: Path, tmp_path: Path) -> None:
    # given evaluation labels that are floats and too few calibration samples
    with np.load(digits_dir / "digits_eval.npz") as npz:
        np.savez(tmp_path / "eval.npz", input=npz["input"], labels=npz["labels"] + 0.5)
    with np.load(digits_dir / "digits_calibration.npz") as npz:
        np.savez(tmp_path / "cal.npz", input=npz["input"][:8])
    config = _digits(digits_dir)
    config.data.eval_uri = str(tmp_path / "eval.npz")
    config.data.calibration_uri = str(tmp_path / "cal.npz")

    # when the run is validated
    report = validate_run(config)

    # then both are named in one error
    with pytest.raises(RunValidationError) as err:
        report.raise_if_failed()
    assert "2 problems" in str(err.value)
    assert "floats" in str(err.value) and "8 calibration samples" in str(err.value)


def test_float_labels_are_fine_as_regression_targets(digits_dir: Path, tmp_path: Path) -> None:
    with np.load(digits_dir / "digits_eval.npz") as npz:
        np.savez(tmp_path / "eval.npz", input=npz["input"], labels=npz["labels"] + 0.5)
    config = _digits(digits_dir, data={"eval_uri": str(tmp_path / "eval.npz")})
    config.model.task = "regression"
    config.data.calibration_uri = str(digits_dir / "digits_calibration.npz")

    report = validate_run(config)

    assert report.ok
    assert {c.name: c.status for c in report.checks}["labels"] == "passed"


def test_quantization_off_needs_no_calibration_count(digits_dir: Path, tmp_path: Path) -> None:
    with np.load(digits_dir / "digits_calibration.npz") as npz:
        np.savez(tmp_path / "cal.npz", input=npz["input"][:8])
    config = _digits(digits_dir, quantization={"enabled": False})
    config.data.calibration_uri = str(tmp_path / "cal.npz")

    assert validate_run(config).ok


def test_validate_images_checks_the_task_images_before_a_submit(
    digits_dir: Path, registry: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a registry with only the serving image pushed
    registry.push(images.serving_image())

    code = main(["validate", "--images", "--model", str(digits_dir / "digits_cnn.pt2")])

    err = capsys.readouterr().err
    assert code == 2
    assert "2 problems" in err
    assert images.image("optimizer") in err and images.image("runner") in err


# ----------------------------------------------------------------------------- rollout lease
def _seed_lease(vertex: FakeVertex, registry: FakeRegistry, holder: str, expires_in_s: float) -> None:
    """An endpoint leased by ``holder``; the serving image is pushed, so only the lease can fail."""
    registry.push(images.serving_image())
    vertex.seed_serving_endpoint(
        "vxdeploy-endpoint",
        labels={
            MANAGED_BY_KEY: MANAGED_BY_VALUE,
            HOLDER_KEY: holder,
            EXPIRES_KEY: str(int(time.time() + expires_in_s)),
        },
    )


def test_an_endpoint_leased_by_another_live_rollout_is_refused_before_any_work(
    digits_dir: Path, registry: FakeRegistry, vertex: FakeVertex
) -> None:
    # given an endpoint another rollout holds for ten more minutes
    _seed_lease(vertex, registry, "nightly-run-7", 600)

    # when a second run is validated
    report = validate_run(_digits(digits_dir, deployment=_deployment(vertex)))

    # then it is refused with the holder named, before any stage ran
    with pytest.raises(RolloutConflictError, match="nightly-run-7"):
        report.raise_if_failed()


def test_this_runs_own_lease_is_no_conflict(
    digits_dir: Path, registry: FakeRegistry, vertex: FakeVertex
) -> None:
    # given a lease this run took before its task was retried
    _seed_lease(vertex, registry, "my-run", 600)

    report = validate_run(_digits(digits_dir, deployment=_deployment(vertex)), run_id="my-run")

    assert report.ok, report.problems


def test_an_expired_lease_is_no_conflict(
    digits_dir: Path, registry: FakeRegistry, vertex: FakeVertex
) -> None:
    _seed_lease(vertex, registry, "dead-run", -60)

    report = validate_run(_digits(digits_dir, deployment=_deployment(vertex)))

    assert report.ok, report.problems


def test_an_unreachable_vertex_api_is_a_clear_problem(digits_dir: Path) -> None:
    deployment = {
        "enabled": True,
        "project": "my-project-123",
        "api_endpoint": "http://127.0.0.1:9",
        "machine_type": "n1-standard-4",
        "accelerator_type": "",
        "accelerator_count": 0,
        "retry_timeout_s": 1,
    }

    report = validate_run(_digits(digits_dir, deployment=deployment))

    assert not report.ok
    assert "cannot read endpoint 'vxdeploy-endpoint'" in str(report.problems[0])
    assert "deployment.api_endpoint" in str(report.problems[0])


# ----------------------------------------------------------------------------- images
def test_a_missing_serving_image_names_the_image_and_the_fix(
    digits_dir: Path, registry: FakeRegistry, vertex: FakeVertex
) -> None:
    # given a registry that holds no serving image
    config = _digits(digits_dir, deployment=_deployment(vertex))

    # when a deploying run is validated
    report = validate_run(config)

    # then the image and both fixes are named
    with pytest.raises(ImageUnavailableError) as err:
        report.raise_if_failed()
    message = str(err.value)
    assert f"{registry.prefix()}/serving:{images.image_tag()}" in message
    assert "does not exist" in message
    assert "make images" in message and "--registry" in message


def test_a_pushed_serving_image_passes(digits_dir: Path, registry: FakeRegistry, vertex: FakeVertex) -> None:
    registry.push(images.serving_image())

    report = validate_run(_digits(digits_dir, deployment=_deployment(vertex)))

    assert report.ok, report.problems
    assert {c.name: c.status for c in report.checks}["serving image"] == "passed"


def test_a_named_serving_image_is_checked_and_blamed_on_triton_serving_image(
    digits_dir: Path, registry: FakeRegistry, vertex: FakeVertex
) -> None:
    mine = f"{registry.host}/team/triton:24.01"

    report = validate_run(_digits(digits_dir, deployment=_deployment(vertex), triton={"serving_image": mine}))

    assert len(report.problems) == 1
    assert str(report.problems[0]).startswith(f"triton.serving_image '{mine}' does not exist")


def test_task_images_are_checked_for_a_vertex_run(digits_dir: Path, registry: FakeRegistry) -> None:
    registry.push(images.image("optimizer"))

    report = validate_run(_digits(digits_dir), check_task_images=True)

    failed = sorted(c.name for c in report.checks if c.status == "failed")
    assert failed == ["runner task image", "serving task image"]


def test_a_denied_image_says_which_role_is_missing(registry: FakeRegistry) -> None:
    ref = images.serving_image()
    registry.push(ref)
    registry.deny(ImageRef.parse(ref).repository)

    status = check_image(ref)

    assert status.state == "denied"


def test_image_references_split_as_docker_does() -> None:
    assert ImageRef.parse("us-docker.pkg.dev/p/r/serving:0.1.0") == ImageRef(
        "us-docker.pkg.dev", "p/r/serving", "0.1.0"
    )
    assert ImageRef.parse("127.0.0.1:5000/a/b") == ImageRef("127.0.0.1:5000", "a/b", "latest")
    assert ImageRef.parse("python:3.11") == ImageRef("registry-1.docker.io", "library/python", "3.11")
    digest = "sha256:" + "0" * 64
    assert ImageRef.parse(f"nvcr.io/nvidia/tritonserver@{digest}").reference == digest


def test_a_google_registry_gets_the_adc_token_as_bearer() -> None:
    # given a Google-hosted image reached through an endpoint override (the fake), and a token
    fake = FakeRegistry(require_token=True, accepted_tokens=("ya29.test-token",)).start()
    try:
        ref = f"{fake.host}/p/r/serving:1"
        fake.push(ref)
        google_ref = ref.replace(fake.host, "us-docker.pkg.dev")

        # when it is checked with that token
        status = check_image(
            google_ref, endpoint=f"http://{fake.host}", google_token=lambda: "ya29.test-token"
        )
    finally:
        fake.stop()

    # then the registry accepted the bearer token without a challenge round
    assert status.state == "present"
    assert [r.authorized for r in fake.requests] == [True]


# ----------------------------------------------------------------------------- the CLI
def test_validate_with_a_model_says_what_it_validated(
    digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "validate",
            "--model",
            str(digits_dir / "digits_cnn.pt2"),
            "--calibration-data",
            str(digits_dir / "digits_calibration.npz"),
            "--eval-data",
            str(digits_dir / "digits_eval.npz"),
        ]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "defaults: valid" not in out
    assert f"default config, model {digits_dir / 'digits_cnn.pt2'}" in out
    assert "passed  model and data: torch_export model, 512 calibration and 500 evaluation samples" in out


@pytest.mark.parametrize(
    ("machine", "accelerator", "count"),
    [
        ("g2-standard-8", "NVIDIA_L4", 1),
        ("g2-standard-48", "NVIDIA_L4", 4),
        ("a2-highgpu-2g", "NVIDIA_TESLA_A100", 2),
        ("a2-ultragpu-1g", "NVIDIA_A100_80GB", 1),
        ("a3-highgpu-1g", "NVIDIA_H100_80GB", 1),
        ("a3-megagpu-8g", "NVIDIA_H100_MEGA_80GB", 8),
        ("a3-ultragpu-8g", "NVIDIA_H200_141GB", 8),
        ("n1-standard-8", "NVIDIA_TESLA_T4", 2),
        ("n1-highmem-16", "NVIDIA_TESLA_V100", 8),
        ("e2-standard-4", "", 0),
        ("n2d-highcpu-8", "", 0),
    ],
)
def test_machine_and_gpu_pairs_vertex_ai_serves_on_are_accepted(
    machine: str, accelerator: str, count: int
) -> None:
    config = parse_config(
        {
            "deployment": {
                "machine_type": machine,
                "accelerator_type": accelerator,
                "accelerator_count": count,
            },
            "service_levels": {},
        }
    )

    assert config.deployment.machine_type == machine


def test_a_model_exported_with_a_fixed_batch_is_refused_before_any_work(tmp_path: Path) -> None:
    import torch

    # given a model exported the quick way: one example, no dynamic_shapes, so its batch is fixed at 1
    model = torch.nn.Sequential(torch.nn.Linear(10, 4)).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 10),)), tmp_path / "fixed.pt2")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", input=rng.random((600, 10), dtype=np.float32))
    np.savez(tmp_path / "eval.npz", input=rng.random((64, 10), dtype=np.float32))
    data = {"calibration_uri": str(tmp_path / "cal.npz"), "eval_uri": str(tmp_path / "eval.npz")}
    config = parse_config({"model": {"uri": str(tmp_path / "fixed.pt2")}, "data": data})

    # when the run is validated, then the batching problem is named with both fixes
    with pytest.raises(ConfigError) as err:
        validate_run(config).raise_if_failed()
    message = str(err.value)
    assert "triton.max_batch_size=32" in message and "'input' has shape [1, 10]" in message
    assert "dynamic_shapes" in message and "triton.max_batch_size=0" in message

    # and serving it unbatched is accepted
    config.triton.max_batch_size = 0
    assert validate_run(config).ok
