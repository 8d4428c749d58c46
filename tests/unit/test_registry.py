"""Model Registry source and already-deployed check, against the Vertex fake and the GCS emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.gcs import GcsEmulator, gcs_emulator
from tests.fakes.vertex_pipelines import FakeVertexPipelines, vertex_pipelines_fixture  # noqa: F401
from vxdeploy.components.common.config import DeploymentConfig, ModelConfig
from vxdeploy.components.common.errors import ConfigError, ModelIntakeError, UserError
from vxdeploy.components.common.registry import (
    RegistryModelVersion,
    already_deployed_reason,
    find_deployed_version,
    get_registry_model_version,
    is_version_deployed,
    parse_registry_uri,
    resolve_registry_model,
    select_model_files,
    source_model_labels,
)
from vxdeploy.components.intake.intake import detect_format, resolve

MODEL = "projects/vx-project/locations/us-central1/models/digits"


@pytest.fixture(name="gcs")
def gcs_fixture() -> Iterator[GcsEmulator]:
    with gcs_emulator() as emulator:
        yield emulator


def _upload(gcs: GcsEmulator, name: str, data: bytes) -> None:
    gcs.client.bucket(gcs.bucket).blob(name).upload_from_string(data)


def test_a_uri_without_version_means_the_default_alias() -> None:
    # given / when / then
    assert parse_registry_uri(MODEL).version == "default"


def test_a_uri_that_is_not_a_model_version_is_a_config_error() -> None:
    # given / when / then
    with pytest.raises(ConfigError, match="model.uri"):
        parse_registry_uri("projects/p/locations/l/endpoints/1")


def test_the_single_model_file_of_a_directory_is_chosen() -> None:
    # given / when / then
    assert select_model_files("gs://b/v3", ["v3/weights.pt2", "v3/README.md"]) == ["v3/weights.pt2"]


def test_model_pt2_wins_among_several_model_files() -> None:
    # given / when / then
    assert select_model_files("gs://b/v3/", ["v3/model.onnx", "v3/model.pt2"]) == ["v3/model.pt2"]


def test_several_unnamed_model_files_are_ambiguous() -> None:
    # given / when / then
    with pytest.raises(ModelIntakeError, match="several model files"):
        select_model_files("gs://b/v3", ["v3/a.pt2", "v3/b.onnx"])


def test_a_directory_without_a_model_file_names_what_it_holds() -> None:
    # given / when / then
    with pytest.raises(ModelIntakeError, match="holds saved_model.pb"):
        select_model_files("gs://b/v3", ["v3/saved_model.pb"])


def test_onnx_external_data_comes_with_the_model() -> None:
    # given / when / then
    assert select_model_files("gs://b/v3", ["v3/model.onnx", "v3/model.onnx.data"]) == [
        "v3/model.onnx",
        "v3/model.onnx.data",
    ]


def test_an_alias_resolves_to_its_version(vertex_pipelines: FakeVertexPipelines) -> None:
    # given two versions, the second holding the alias 'default'
    vertex_pipelines.add_model_version("digits", "1", "gs://b/v1")
    vertex_pipelines.add_model_version("digits", "2", "gs://b/v2", aliases=["default"])

    # when the alias is read
    version = get_registry_model_version(f"{MODEL}@default", api_endpoint=vertex_pipelines.endpoint)

    # then it names version 2
    assert (version.version_id, version.artifact_uri) == ("2", "gs://b/v2")


def test_an_unknown_alias_is_a_user_error(vertex_pipelines: FakeVertexPipelines) -> None:
    # given a model without the alias 'candidate'
    vertex_pipelines.add_model_version("digits", "1", "gs://b/v1")

    # when / then
    with pytest.raises(UserError, match="no such model version"):
        get_registry_model_version(f"{MODEL}@candidate", api_endpoint=vertex_pipelines.endpoint)


def test_resolve_downloads_the_versions_model_file(
    vertex_pipelines: FakeVertexPipelines, gcs: GcsEmulator, tmp_path: Path
) -> None:
    # given a registry version whose artifact directory holds a model file
    _upload(gcs, "digits/v7/model.pt2", b"pt2 bytes")
    vertex_pipelines.add_model_version("digits", "7", f"gs://{gcs.bucket}/digits/v7")

    # when the version is resolved by id
    path = resolve_registry_model(
        f"{MODEL}@7", tmp_path, api_endpoint=vertex_pipelines.endpoint, storage_client=gcs.client
    )

    # then the file is local with its bytes
    assert (path.name, path.read_bytes()) == ("model.pt2", b"pt2 bytes")


def test_a_version_outside_cloud_storage_is_refused(
    vertex_pipelines: FakeVertexPipelines, tmp_path: Path
) -> None:
    # given a version with no gs:// artifact
    vertex_pipelines.add_model_version("digits", "1", "")

    # when / then
    with pytest.raises(ModelIntakeError, match="Cloud Storage"):
        resolve_registry_model(MODEL, tmp_path, api_endpoint=vertex_pipelines.endpoint)


def test_intake_resolves_a_registry_uri_to_a_readable_model(
    vertex_pipelines: FakeVertexPipelines,
    gcs: GcsEmulator,
    digits_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given the digits model registered with its artifact in Cloud Storage
    _upload(gcs, "digits/v1/model.pt2", (digits_dir / "digits_cnn.pt2").read_bytes())
    vertex_pipelines.add_model_version("digits", "1", f"gs://{gcs.bucket}/digits/v1")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)

    # when intake resolves the registry URI
    path = resolve(MODEL, tmp_path, what="model.uri", api_endpoint=vertex_pipelines.endpoint)

    # then it is the torch.export model
    assert detect_format(path, "auto") == "torch_export"


def _deployed_from(fake: FakeVertexPipelines, source: RegistryModelVersion, traffic: int) -> None:
    """What the deploy stage leaves: an optimized version, labelled with its source, on the endpoint."""
    served = fake.add_model_version(
        "digits-triton", "4", "gs://b/triton/4", labels=source_model_labels(source)
    )
    fake.add_endpoint(
        "55",
        "vxdeploy-endpoint",
        [{"id": "901", "model": served, "model_version_id": "4", "traffic": traffic}],
    )


def _source(fake: FakeVertexPipelines) -> RegistryModelVersion:
    fake.add_model_version("digits", "3", "gs://b/v3")
    return get_registry_model_version(MODEL, api_endpoint=fake.endpoint)


def test_a_deployment_labelled_with_the_source_version_is_found(
    vertex_pipelines: FakeVertexPipelines,
) -> None:
    # given the source version deployed (through its optimized version) with all the traffic
    source = _source(vertex_pipelines)
    _deployed_from(vertex_pipelines, source, traffic=100)

    # when the endpoint is searched for it
    found = find_deployed_version(
        source,
        project="vx-project",
        location="us-central1",
        endpoint="vxdeploy-endpoint",
        api_endpoint=vertex_pipelines.endpoint,
    )

    # then the deployed model is found with its traffic share
    assert found is not None and (found.deployed_model_id, found.traffic_percent) == ("901", 100)


def test_a_deployment_without_traffic_does_not_count_as_deployed(
    vertex_pipelines: FakeVertexPipelines,
) -> None:
    # given the source version deployed but left with no traffic (a canary rolled back)
    source = _source(vertex_pipelines)
    _deployed_from(vertex_pipelines, source, traffic=0)

    # when / then
    assert not is_version_deployed(
        source,
        project="vx-project",
        location="us-central1",
        endpoint="vxdeploy-endpoint",
        api_endpoint=vertex_pipelines.endpoint,
    )


def test_a_scheduled_run_of_a_serving_version_gets_a_no_op_reason(
    vertex_pipelines: FakeVertexPipelines,
) -> None:
    # given the default version already serves on the run's endpoint
    _deployed_from(vertex_pipelines, _source(vertex_pipelines), traffic=100)
    deployment = DeploymentConfig(enabled=True, project="vx-project", api_endpoint=vertex_pipelines.endpoint)

    # when the run asks whether to go on
    reason = already_deployed_reason(ModelConfig(uri=MODEL), deployment)

    # then it is told why not
    assert reason is not None and "already serves 100% of the traffic" in reason


def test_a_new_version_is_not_already_deployed(vertex_pipelines: FakeVertexPipelines) -> None:
    # given version 3 serves, and version 5 now holds the alias
    _deployed_from(vertex_pipelines, _source(vertex_pipelines), traffic=100)
    vertex_pipelines.add_model_version("digits", "5", "gs://b/v5", aliases=["default"])
    deployment = DeploymentConfig(enabled=True, project="vx-project", api_endpoint=vertex_pipelines.endpoint)

    # when / then the run goes on
    assert already_deployed_reason(ModelConfig(uri=f"{MODEL}@default"), deployment) is None


def test_source_labels_are_valid_label_values() -> None:
    # given a model id with characters labels do not allow
    version = RegistryModelVersion("projects/p/locations/l/models/My.Model", "My.Model", "12", "gs://b/x")

    # when / then
    assert source_model_labels(version) == {
        "vxdeploy-source-model": "my-model",
        "vxdeploy-source-version": "12",
    }
