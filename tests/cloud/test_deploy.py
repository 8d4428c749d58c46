"""Deploy stage against the Vertex AI fake over real REST, with the real aiplatform_v1 clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.rollout import PROJECT, RolloutHarness
from tests.fakes.vertex import FakeVertex
from vxdeploy.components.cloud.labels import CHECKSUM_KEY, MANAGED_BY_KEY, RUN_ID_KEY
from vxdeploy.components.cloud.lease import HOLDER_KEY, read_lease
from vxdeploy.components.cloud.vertex import OperationTimeoutError
from vxdeploy.components.common.errors import CloudOperationError, RolloutConflictError, UserError


@pytest.fixture()
def fake() -> Iterator[FakeVertex]:
    with FakeVertex(project=PROJECT) as f:
        yield f


@pytest.fixture()
def serving(fake: FakeVertex) -> str:
    """An endpoint vxdeploy made earlier, serving one model at 100%; returns that deployed model's id."""
    _, dm_id = fake.seed_serving_endpoint(
        "vxdeploy-endpoint", labels={MANAGED_BY_KEY: "vxdeploy"}, endpoint_id="vxdeploy-endpoint"
    )
    return dm_id


def test_first_deploy_creates_a_managed_endpoint_and_a_labelled_model_version(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given an empty project
    harness = RolloutHarness(fake, tmp_path)

    # When the deploy stage runs
    run = harness.deploy("run-1")

    # Then one managed, dedicated endpoint holds the new deployed model; the version carries run and checksum
    (endpoint,) = fake.endpoints()
    (version,) = fake.model_versions()
    assert (
        endpoint.labels[MANAGED_BY_KEY],
        endpoint.dedicated_endpoint_enabled,
        [dm.id for dm in endpoint.deployed_models],
        version.labels[RUN_ID_KEY],
        version.labels[CHECKSUM_KEY],
        "candidate" in version.version_aliases,
    ) == ("vxdeploy", True, [run.deployed_model_id], "run-1", run.report["summary"]["sha256"][:32], True)


def test_a_registry_source_is_recorded_on_the_new_version(fake: FakeVertex, tmp_path: Path) -> None:
    # Given a model that intake resolved from a Model Registry version
    source = {"vxdeploy-source-model": "digits", "vxdeploy-source-version": "3"}

    # When the deploy stage uploads its optimized version
    RolloutHarness(fake, tmp_path).deploy("run-1", source_labels=source)

    # Then the version carries the source labels a scheduled run looks for
    (version,) = fake.model_versions()
    assert {k: version.labels[k] for k in source} == source


def test_new_deployed_model_starts_with_no_traffic(fake: FakeVertex, serving: str, tmp_path: Path) -> None:
    # Given an endpoint serving one model at 100%
    harness = RolloutHarness(fake, tmp_path)

    # When a new version is deployed
    run = harness.deploy("run-1")

    # Then it sits beside the serving model and traffic has not moved
    endpoint = fake.endpoint("vxdeploy-endpoint")
    assert (sorted(dm.id for dm in endpoint.deployed_models), dict(endpoint.traffic_split)) == (
        sorted([serving, run.deployed_model_id]),
        {serving: 100},
    )


def test_retry_with_the_same_run_id_makes_no_second_version_endpoint_or_deployment(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a deploy that finished
    harness = RolloutHarness(fake, tmp_path)
    first = harness.deploy("run-1")

    # When the task is retried with the same run id, with a fresh gcp_resources file (a new pod)
    again = harness.deploy("run-1", gcp_resources=tmp_path / "other-gcp-resources.json")

    # Then it finds what it made: same deployed model, one new version, one upload, one deploy call
    assert (
        again.deployed_model_id,
        again.report["summary"]["model_version_reused"],
        len(fake.model_versions()),
        len(fake.endpoints()),
        len(fake.calls_of("UploadModel")),
        len(fake.calls_of("DeployModel")),
    ) == (first.deployed_model_id, True, 2, 1, 1, 1)


def test_a_second_run_adds_a_version_to_the_same_model(fake: FakeVertex, tmp_path: Path) -> None:
    # Given run-1 deployed and finished (lease released by hand, as a promotion would)
    harness = RolloutHarness(fake, tmp_path)
    harness.deploy("run-1")
    harness.rollback("run-1")

    # When run-2 deploys
    run2 = harness.deploy("run-2")

    # Then the model has versions 1 and 2, under one model resource
    assert (
        sorted(v.version_id for v in fake.model_versions()),
        len({v.name for v in fake.model_versions()}),
        run2.vertex_model.metadata["versionId"],
    ) == (["1", "2"], 1, "2")


def test_endpoint_found_by_display_name_is_reused_not_duplicated(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a managed endpoint with the configured display name
    harness = RolloutHarness(fake, tmp_path)

    # When deploying twice under different runs (the first finishing in between)
    harness.deploy("run-1")
    harness.rollback("run-1")
    harness.deploy("run-2")

    # Then no endpoint was created
    assert (len(fake.endpoints()), len(fake.calls_of("CreateEndpoint"))) == (1, 0)


def test_endpoint_of_the_same_name_not_managed_by_vxdeploy_is_refused(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given someone else's endpoint with the configured display name
    fake.seed_serving_endpoint("vxdeploy-endpoint", labels={"team": "search"})
    harness = RolloutHarness(fake, tmp_path)

    # When deploying
    with pytest.raises(UserError) as err:
        harness.deploy("run-1")

    # Then it refuses, naming the field and the way out
    assert "not managed by vxdeploy" in str(err.value) and "deployment.endpoint" in str(err.value)


def test_deploy_request_carries_machine_gpus_replicas_and_autoscaling_targets(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given an L4 deployment with 1..3 replicas and custom targets
    harness = RolloutHarness(
        fake,
        tmp_path,
        deployment={
            "machine_type": "g2-standard-12",
            "accelerator_type": "NVIDIA_L4",
            "accelerator_count": 1,
            "min_replicas": 1,
            "max_replicas": 3,
            "gpu_duty_cycle_target": 70,
            "cpu_utilization_target": 80,
        },
    )

    # When deploying
    harness.deploy("run-1")

    # Then the DeployModel request says exactly that
    resources = fake.calls_of("DeployModel")[0].body["deployedModel"]["dedicatedResources"]
    assert resources == {
        "machineSpec": {"machineType": "g2-standard-12", "acceleratorType": 11, "acceleratorCount": 1},
        "minReplicaCount": 1,
        "maxReplicaCount": 3,
        "autoscalingMetricSpecs": [
            {"metricName": "aiplatform.googleapis.com/prediction/online/cpu/utilization", "target": 80},
            {
                "metricName": "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle",
                "target": 70,
            },
        ],
    }


def test_spot_and_scale_to_zero_reach_the_deploy_request(fake: FakeVertex, tmp_path: Path) -> None:
    # Given spot VMs (accepted) and min_replicas=0
    harness = RolloutHarness(
        fake,
        tmp_path,
        deployment={
            "spot": True,
            "accept_spot_preemption": True,
            "min_replicas": 0,
            "scale_to_zero_idle_s": 600,
        },
    )

    # When deploying
    harness.deploy("run-1")

    # Then the request went to the v1beta1 API (scale-to-zero is Preview) with spot and the idle period
    call = fake.calls_of("DeployModel")[0]
    resources = call.body["deployedModel"]["dedicatedResources"]
    assert (
        call.api_version,
        resources.get("minReplicaCount", 0),
        resources["spot"],
        resources["scaleToZeroSpec"],
    ) == ("v1beta1", 0, True, {"idleScaledownPeriod": "600s"})


def test_vpc_network_makes_a_private_endpoint(fake: FakeVertex, tmp_path: Path) -> None:
    # Given a peered VPC network
    network = "projects/123456789012/global/networks/serving"
    harness = RolloutHarness(fake, tmp_path, deployment={"network": network})

    # When deploying
    harness.deploy("run-1")

    # Then the endpoint was created on that network (not dedicated), and the model keeps its predict route
    create = fake.calls_of("CreateEndpoint")[0].body
    container = fake.calls_of("UploadModel")[0].body["model"]["containerSpec"]
    assert (create["network"], create.get("dedicatedEndpointEnabled", False), container["predictRoute"]) == (
        network,
        False,
        "/v2/models/model/infer",
    )


def test_private_service_connect_projects_reach_the_endpoint(fake: FakeVertex, tmp_path: Path) -> None:
    # Given Private Service Connect for two consumer projects
    harness = RolloutHarness(
        fake, tmp_path, deployment={"private_service_connect_projects": ["web", "batch"]}
    )

    # When deploying
    harness.deploy("run-1")

    # Then the endpoint was created with PSC and that allow-list
    assert fake.calls_of("CreateEndpoint")[0].body["privateServiceConnectConfig"] == {
        "enablePrivateServiceConnect": True,
        "projectAllowlist": ["web", "batch"],
    }


def test_failed_deploy_operation_leaves_traffic_and_frees_the_endpoint(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given Vertex AI fails the next deploy (e.g. no L4 capacity)
    fake.fail_next_operation(
        "DeployModel", "The zone does not have enough resources (NVIDIA_L4).", "RESOURCE_EXHAUSTED"
    )
    harness = RolloutHarness(fake, tmp_path)

    # When deploying
    with pytest.raises(CloudOperationError) as err:
        harness.deploy("run-1")

    # Then the error names the operation and Vertex's message; traffic stays; no lease blocks the next run
    endpoint = fake.endpoint("vxdeploy-endpoint")
    assert (
        "DeployModel" in str(err.value) and "enough resources" in str(err.value),
        dict(endpoint.traffic_split),
        [dm.id for dm in endpoint.deployed_models],
        read_lease(endpoint),
    ) == (True, {serving: 100}, [serving], None)


def test_retry_after_a_failed_deploy_reuses_the_uploaded_version(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a deploy that failed after its upload
    fake.fail_next_operation("DeployModel", "injected")
    harness = RolloutHarness(fake, tmp_path)
    with pytest.raises(CloudOperationError):
        harness.deploy("run-1")

    # When the task is retried
    harness.deploy("run-1")

    # Then the same version is deployed: one upload, two deploy attempts, one new deployed model
    assert (
        len(fake.calls_of("UploadModel")),
        len(fake.calls_of("DeployModel")),
        len(fake.model_versions()),
    ) == (
        1,
        2,
        2,
    )


def test_503_then_success_is_retried(fake: FakeVertex, serving: str, tmp_path: Path) -> None:
    # Given the deploy call is refused twice with 503 before it is served
    fake.unavailable("DeployModel", times=2)
    harness = RolloutHarness(fake, tmp_path)

    # When deploying
    run = harness.deploy("run-1")

    # Then it retried into one deployment
    endpoint = fake.endpoint("vxdeploy-endpoint")
    assert (len(fake.calls_of("DeployModel")), sorted(dm.id for dm in endpoint.deployed_models)) == (
        3,
        sorted([serving, run.deployed_model_id]),
    )


def test_operation_that_never_finishes_times_out_and_the_retry_resumes_it(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given a deploy operation that hangs, and a short timeout
    fake.hang_next_operation("DeployModel")
    harness = RolloutHarness(fake, tmp_path, deployment={"operation_timeout_s": 0.3})
    with pytest.raises(OperationTimeoutError) as err:
        harness.deploy("run-1")
    traffic_while_hung = dict(fake.endpoint("vxdeploy-endpoint").traffic_split)

    # When Vertex finishes it later and the task is retried (a new pod: the lease records the operation)
    fake.finish_hung_operations()
    run = harness.deploy("run-1", gcp_resources=tmp_path / "fresh.json")

    # Then the timeout named the operation, traffic never moved, and the retry resumed instead of redeploying
    assert (
        err.value.operation_name.rsplit("/", 1)[-1] in str(err.value),
        traffic_while_hung,
        len(fake.calls_of("DeployModel")),
        run.report["summary"]["deploy"],
    ) == (True, {serving: 100}, 1, "resumed")


def test_gcp_resources_lists_the_operations_in_the_gcpc_format(fake: FakeVertex, tmp_path: Path) -> None:
    # Given a first deployment (create endpoint, upload, deploy)
    harness = RolloutHarness(fake, tmp_path)

    # When it runs
    run = harness.deploy("run-1")

    # Then gcp_resources names each long-running operation with its REST URI
    resources = json.loads(run.gcp_resources.read_text())["resources"]
    assert [
        (r["resourceType"], r["resourceUri"].startswith(f"{fake.address}/v1/projects/")) for r in resources
    ] == [
        ("CreateEndpoint", True),
        ("UploadModel", True),
        ("DeployModel", True),
    ]


def test_another_runs_lease_blocks_the_deploy_before_any_upload(
    fake: FakeVertex, serving: str, tmp_path: Path
) -> None:
    # Given run-1 is rolling out on the endpoint
    harness = RolloutHarness(fake, tmp_path)
    harness.deploy("run-1")

    # When run-2 deploys to the same endpoint
    with pytest.raises(RolloutConflictError) as err:
        harness.deploy("run-2")

    # Then it fails clearly, naming the holder, and uploads nothing
    assert ("run-1" in str(err.value), len(fake.calls_of("UploadModel"))) == (True, 1)


def test_tensorrt_engine_built_for_another_gpu_is_refused_before_any_cloud_call(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given a repository whose TensorRT engine was built on an A100, and an L4 serving machine
    harness = RolloutHarness(fake, tmp_path, deployment={"serving_tensorrt_version": "10.13.3"})
    harness.repository.metadata = {
        "kinds": {"model": "tensorrt_fp16"},
        "engines": {
            "model": {
                "tensorrt_version": "10.13.3.9",
                "gpu_name": "NVIDIA A100-SXM4-40GB",
                "compute_capability": "8.0",
                "precision": "fp16",
            }
        },
    }

    # When deploying
    with pytest.raises(UserError) as err:
        harness.deploy("run-1")

    # Then it is refused naming both GPUs, and nothing reached Vertex AI
    assert ("A100" in str(err.value) and "NVIDIA_L4" in str(err.value), fake.calls) == (True, [])


def test_repository_is_uploaded_to_the_staging_bucket_and_vertex_reads_it_there(tmp_path: Path) -> None:
    # Given a GCS emulator holding the staging bucket, and a Vertex fake that checks artifacts exist there
    from tests.fakes.gcs import gcs_emulator

    with gcs_emulator(bucket="staging") as gcs, FakeVertex(project=PROJECT, storage_host=gcs.url) as fake:
        harness = RolloutHarness(fake, tmp_path, deployment={"staging_bucket": "gs://staging/vxdeploy"})

        # When deploying a local repository
        run = harness.deploy("run-1", storage=gcs.client)

        # Then the model's artifact URI is the uploaded model_repository, whose files are in the bucket
        artifact_uri = run.vertex_model.metadata["artifactUri"]
        prefix = artifact_uri.removeprefix("gs://staging/")
        assert (artifact_uri.startswith("gs://staging/vxdeploy/model/"), gcs.names(prefix)) == (
            True,
            [f"{prefix}/model/1/model.onnx", f"{prefix}/model/config.pbtxt"],
        )


def test_local_repository_without_a_staging_bucket_is_a_user_error(fake: FakeVertex, tmp_path: Path) -> None:
    # Given a repository artifact on local disk (a kfp.local run) and no staging bucket
    harness = RolloutHarness(fake, tmp_path)
    harness.repository.uri = str(harness.repo)

    # When deploying
    with pytest.raises(UserError) as err:
        harness.deploy("run-1")

    # Then the error names the field to set
    assert "deployment.staging_bucket" in str(err.value)


def test_invoke_route_on_an_endpoint_that_is_not_dedicated_is_refused(
    fake: FakeVertex, tmp_path: Path
) -> None:
    # Given an existing shared (not dedicated) endpoint chosen by id
    endpoint, _ = fake.seed_serving_endpoint("legacy", dedicated=False, endpoint_id="4242")
    harness = RolloutHarness(fake, tmp_path, deployment={"endpoint": "4242"})

    # When deploying with the default smoke test route (invoke)
    with pytest.raises(UserError) as err:
        harness.deploy("run-1")

    # Then it explains the choice: a dedicated endpoint, or no smoke test
    assert "smoke_test_route" in str(err.value) and HOLDER_KEY not in fake.endpoint("4242").labels
