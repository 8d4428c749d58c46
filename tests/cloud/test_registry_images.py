"""Every repository is served from the project's serving image in the configured registry, checked first.

Against a loopback registry speaking the Docker Registry v2 manifest protocol (tests/fakes/registry.py)
and the Vertex AI fake, which refuses any image outside the registries the run was configured with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.registry import FakeRegistry
from tests.fakes.vertex import FakeVertex
from vxdeploy.components.common import images
from vxdeploy.components.common.config import parse_config
from vxdeploy.pipelines.cli import main
from vxdeploy.pipelines.local_run import run_local

REMOVED_IMAGE = "/".join(("vertex-ai", "prediction", "tritonserver"))  # in parts: no file names it
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    """A fake registry that the run is configured with (``VXDEPLOY_REGISTRY``), holding no image yet."""
    with FakeRegistry() as fake:
        monkeypatch.setenv("VXDEPLOY_REGISTRY", fake.prefix("acme-ml/vxdeploy"))
        yield fake


def _executors(compiled: Path) -> dict[str, dict[str, Any]]:
    spec = yaml.safe_load(compiled.read_text())
    return {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}


# ----------------------------------------------------------------------------- the compiled spec
def test_compile_registry_names_that_registrys_images_in_every_task(tmp_path: Path) -> None:
    # given a registry the images were pushed to
    registry = "europe-docker.pkg.dev/acme-ml/vxdeploy"

    # when the pipeline is compiled for it
    code = main(["compile", "--registry", registry, "--output", str(tmp_path / "p.yaml")])

    # then every task runs one of its images and knows the registry (for the serving image)
    containers = _executors(tmp_path / "p.yaml")
    assert code == 0
    assert {c["image"] for c in containers.values()} == set(images.task_images(registry).values())
    assert all({"name": "VXDEPLOY_REGISTRY", "value": registry} in c["env"] for c in containers.values())
    assert REMOVED_IMAGE not in (tmp_path / "p.yaml").read_text()


def test_the_registry_environment_variable_is_the_default_registry(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    main(["compile", "--output", str(tmp_path / "p.yaml")])

    containers = _executors(tmp_path / "p.yaml")
    assert {c["image"].rsplit("/", 1)[0] for c in containers.values()} == {
        registry.prefix("acme-ml/vxdeploy")
    }


def test_the_first_task_is_the_validation(tmp_path: Path) -> None:
    main(["compile", "--output", str(tmp_path / "p.yaml")])

    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert "dependentTasks" not in tasks["validate-run-inputs"]
    assert tasks["intake-model"]["dependentTasks"] == ["validate-run-inputs"]
    others = {name: t for name, t in tasks.items() if name not in ("validate-run-inputs", "intake-model")}
    assert all("intake-model" in t.get("dependentTasks", []) for t in others.values()), others.keys()


def test_a_registry_that_is_not_an_image_prefix_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compile", "--registry", "https://Registry Example", "--output", str(tmp_path / "p.yaml")])

    assert code == 2
    assert "--registry" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_no_code_path_or_document_names_the_removed_image() -> None:
    # given every source, test and document of the project
    files = [
        p for d in ("components", "pipelines", "docs", "containers", "tests") for p in (REPO / d).rglob("*")
    ]
    files += [REPO / "README.md"]
    texts = {
        p: p.read_text(errors="ignore")
        for p in files
        if p.is_file() and p.suffix in (".py", ".md", ".sh", ".yaml", "")
    }

    # then none names the invented Vertex AI Triton image
    named = [str(p.relative_to(REPO)) for p, text in texts.items() if REMOVED_IMAGE in text]
    assert named == []


# ----------------------------------------------------------------------------- a run
def _deploying_config(vertex: FakeVertex) -> dict[str, Any]:
    return {
        "deployment": {
            "enabled": True,
            "project": vertex.project,
            "api_endpoint": f"{vertex.address}",
            "machine_type": "n1-standard-4",
            "accelerator_type": "",
            "accelerator_count": 0,
            "retry_timeout_s": 2,
        },
    }


def test_a_run_whose_serving_image_is_missing_stops_in_its_first_task(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # given a deploying run whose registry has no serving image (the task images are there)
    for name in ("optimizer", "runner"):
        registry.push(images.image(name))
    with FakeVertex() as vertex:
        config = parse_config(_deploying_config(vertex))

        # when the pipeline runs (the CLI's own check skipped, as on Vertex AI)
        result = run_local(config, tmp_path / "run", skip_preflight=True)
        uploads = vertex.calls_of("UploadModel")

    # then the validation task failed with the image and the fix, and no later task ran
    stages = {s["stage"]: s for s in result.report["stages"]}
    assert result.report["status"] == "failed"
    assert stages["validate"]["status"] == "failed"
    message = stages["validate"]["reason"]
    assert result.report["error"] == f"stage validate failed: {message}"
    assert f"{registry.prefix('acme-ml/vxdeploy')}/serving:{images.image_tag()}" in message
    assert "make images" in message and "--registry" in message
    assert stages["intake"]["status"] == "not run"
    assert uploads == []


def test_the_cli_refuses_a_run_whose_serving_image_is_missing_before_any_task(
    tmp_path: Path, registry: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeVertex() as vertex:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(_deploying_config(vertex)))

        code = main(["run", "--local", "--config", str(config), "--workdir", str(tmp_path / "run")])

    err = capsys.readouterr().err
    assert code == 2
    assert f"serving:{images.image_tag()}' does not exist" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_upload_request_carries_the_configured_registrys_serving_image(
    tmp_path: Path, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.serve_fakes import serving_fakes

    # given the serving image pushed to the configured registry, and a Vertex AI that takes only it
    registry.push(images.serving_image())
    with serving_fakes(interval_s=0.2) as fakes:
        assert fakes.vertex.image_registries == (registry.prefix("acme-ml/vxdeploy"),)
        run = {
            **fakes.config,
            "compilation": {"candidates": ["onnxruntime_fp32"]},
            "quantization": {"enabled": False},
            "selection": {"batch_sizes": [1, 8], "min_seconds": 0.05},
            "triton": {"serve_check": False},
            "canary": {**fakes.config["canary"], "steps": [100]},
            "monitoring": {**fakes.config["monitoring"], "enabled": False},
        }
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fakes.storage_address)

        # when the run deploys
        code = main(
            [
                "run",
                "--local",
                "--api-endpoint",
                fakes.vertex_address,
                "--config",
                str(tmp_path / "run.yaml"),
                "--workdir",
                str(tmp_path / "run"),
            ]
        )
        uploads = fakes.vertex.calls_of("UploadModel")

    # then the model version was uploaded with that registry's serving image
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert code == 0, report["error"]
    assert [u.body["model"]["containerSpec"]["imageUri"] for u in uploads] == [images.serving_image()]


def test_the_vertex_fake_refuses_an_image_outside_the_configured_registries(registry: FakeRegistry) -> None:
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform_v1 as v1

    # given a Vertex AI fake for a run configured with the fake registry
    with FakeVertex() as vertex:
        client = v1.ModelServiceClient(
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            transport="rest",
            client_options={"api_endpoint": vertex.address},
        )
        request = v1.UploadModelRequest(
            parent=f"projects/{vertex.project}/locations/us-central1",
            model=v1.Model(
                display_name="m",
                container_spec=v1.ModelContainerSpec(image_uri="nvcr.io/nvidia/tritonserver:25.10-py3"),
            ),
        )

        # when a model names an image from anywhere else, then the upload is refused
        with pytest.raises(gexc.BadRequest, match="not in the registries this run was configured with"):
            client.upload_model(request=request)
