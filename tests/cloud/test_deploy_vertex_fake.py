"""The Vertex AI fake refuses what the real API refuses, spoken to by the real aiplatform_v1 REST clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1 as v1
from google.protobuf import field_mask_pb2

from tests.fakes.vertex import FakeVertex
from vxdeploy.components.cloud.vertex import VertexApi, connect, wait_for_operation
from vxdeploy.components.common.config import DeploymentConfig

PROJECT = "vxdeploy-test"


@pytest.fixture()
def fake() -> Iterator[FakeVertex]:
    with FakeVertex(project=PROJECT) as f:
        yield f


@pytest.fixture()
def api(fake: FakeVertex) -> VertexApi:
    return connect(DeploymentConfig(project=PROJECT, api_endpoint=fake.address, max_poll_interval_s=0.05))


@pytest.fixture()
def serving(fake: FakeVertex) -> tuple[v1.Endpoint, str]:
    return fake.seed_serving_endpoint("e", endpoint_id="e")


def _update_split(api: VertexApi, endpoint: v1.Endpoint, split: dict[str, int]) -> v1.Endpoint:
    return api.endpoints.update_endpoint(
        endpoint=v1.Endpoint(name=endpoint.name, display_name=endpoint.display_name, traffic_split=split),
        update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
    )


def test_a_split_that_does_not_sum_to_100_is_a_400(api: VertexApi, serving: tuple[v1.Endpoint, str]) -> None:
    # Given an endpoint serving one model / When a 90% split is sent / Then the API answers 400
    endpoint, dm = serving
    with pytest.raises(gexc.BadRequest, match="add up to 100, got 90"):
        _update_split(api, endpoint, {dm: 90})


def test_a_split_naming_an_unknown_deployed_model_is_a_400(
    api: VertexApi, serving: tuple[v1.Endpoint, str]
) -> None:
    # Given an endpoint / When the split names a model it does not hold / Then the API answers 400
    endpoint, dm = serving
    with pytest.raises(gexc.BadRequest, match="not deployed on the endpoint"):
        _update_split(api, endpoint, {dm: 50, "999": 50})


def test_undeploying_an_unknown_deployed_model_is_a_404(
    api: VertexApi, serving: tuple[v1.Endpoint, str]
) -> None:
    # Given an endpoint / When an unknown deployed model is undeployed / Then the API answers 404
    endpoint, _ = serving
    with pytest.raises(gexc.NotFound):
        api.endpoints.undeploy_model(endpoint=endpoint.name, deployed_model_id="999")


def test_mutating_an_unknown_deployed_model_is_a_404(
    api: VertexApi, serving: tuple[v1.Endpoint, str]
) -> None:
    # Given an endpoint / When an unknown deployed model is mutated / Then the API answers 404
    endpoint, _ = serving
    with pytest.raises(gexc.NotFound):
        api.endpoints.mutate_deployed_model(
            endpoint=endpoint.name,
            deployed_model=v1.DeployedModel(id="999"),
            update_mask=field_mask_pb2.FieldMask(paths=["dedicated_resources.max_replica_count"]),
        )


def test_mutating_replicas_of_a_deployed_model_takes_effect(
    api: VertexApi, serving: tuple[v1.Endpoint, str]
) -> None:
    # Given a deployed model with max 1 replica
    endpoint, dm = serving

    # When its max replicas are mutated to 4 and the operation is awaited
    lro = api.endpoints.mutate_deployed_model(
        endpoint=endpoint.name,
        deployed_model=v1.DeployedModel(
            id=dm, dedicated_resources=v1.DedicatedResources(min_replica_count=1, max_replica_count=4)
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["dedicated_resources.max_replica_count"]),
    )
    wait_for_operation(api, lro.operation.name, timeout_s=5, what="MutateDeployedModel")

    # Then the endpoint shows 4
    got = api.endpoints.get_endpoint(name=endpoint.name)
    assert got.deployed_models[0].dedicated_resources.max_replica_count == 4


def test_undeploying_a_model_that_still_takes_traffic_is_refused(
    api: VertexApi, fake: FakeVertex, serving: tuple[v1.Endpoint, str]
) -> None:
    # Given two deployed models, the first taking all traffic
    endpoint, first = serving
    _, second = fake.seed_serving_endpoint("f", endpoint_id="f")
    with fake._lock:
        source = next(e for e in fake._endpoints.values() if e.name.endswith("/f"))
        target = next(e for e in fake._endpoints.values() if e.name.endswith("/e"))
        target.deployed_models.append(source.deployed_models.pop())

    # When the first is undeployed without moving its traffic / Then the API refuses
    with pytest.raises(gexc.BadRequest, match="give a traffic_split that moves it away"):
        api.endpoints.undeploy_model(endpoint=endpoint.name, deployed_model_id=first)


def test_a_stale_etag_is_refused_with_409(api: VertexApi, serving: tuple[v1.Endpoint, str]) -> None:
    # Given an endpoint read, then changed by someone else
    endpoint, _ = serving
    stale = api.endpoints.get_endpoint(name=endpoint.name)
    api.endpoints.update_endpoint(
        endpoint=v1.Endpoint(name=endpoint.name, display_name="e", labels={"a": "b"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
    )

    # When an update carries the stale etag / Then it is refused
    with pytest.raises(gexc.Conflict, match="etag"):
        api.endpoints.update_endpoint(
            endpoint=v1.Endpoint(name=endpoint.name, display_name="e", labels={}, etag=stale.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )


def test_invalid_label_values_are_a_400(api: VertexApi, serving: tuple[v1.Endpoint, str]) -> None:
    # Given an endpoint / When a label value has capitals / Then the API answers 400
    endpoint, _ = serving
    with pytest.raises(gexc.BadRequest, match="label value"):
        api.endpoints.update_endpoint(
            endpoint=v1.Endpoint(name=endpoint.name, display_name="e", labels={"run": "Run_1"}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )


def test_min_replicas_0_is_refused_by_v1(
    api: VertexApi, fake: FakeVertex, serving: tuple[v1.Endpoint, str]
) -> None:
    # Given a model version
    endpoint, _ = serving
    version = fake.model_versions()[0]

    # When it is deployed through v1 with min_replica_count 0 / Then v1 refuses (scale-to-zero is v1beta1)
    with pytest.raises(gexc.BadRequest, match="v1beta1"):
        api.endpoints.deploy_model(
            endpoint=endpoint.name,
            deployed_model=v1.DeployedModel(
                model=f"{version.name}@{version.version_id}",
                dedicated_resources=v1.DedicatedResources(
                    machine_spec=v1.MachineSpec(machine_type="n1-standard-4"), min_replica_count=0
                ),
            ),
        )


def test_versioned_model_names_resolve_by_id_and_alias(api: VertexApi, fake: FakeVertex) -> None:
    # Given a model with version 1 aliased 'production'
    fake.seed_serving_endpoint("e", endpoint_id="e")
    version = fake.model_versions()[0]

    # When it is read as M@1 and M@production (the client URL-encodes '@')
    by_id = api.models.get_model(name=f"{version.name}@1")
    by_alias = api.models.get_model(name=f"{version.name}@production")

    # Then both name version 1
    assert (by_id.version_id, by_alias.version_id) == ("1", "1")


def test_an_alias_moves_to_the_version_it_is_merged_onto(api: VertexApi, fake: FakeVertex) -> None:
    # Given versions 1 ('production') and 2 of one model
    fake.seed_serving_endpoint("e", endpoint_id="e")
    first = fake.model_versions()[0]
    lro = api.models.upload_model(
        request=v1.UploadModelRequest(
            parent=f"projects/{PROJECT}/locations/us-central1",
            parent_model=first.name,
            model=v1.Model(
                display_name="m",
                container_spec=v1.ModelContainerSpec(image_uri=f"{fake.image_registries[0]}/serving:1"),
            ),
        )
    )
    wait_for_operation(api, lro.operation.name, timeout_s=5, what="UploadModel")
    second = max(api.models.list_model_versions(name=first.name), key=lambda m: int(m.version_id))

    # When 'production' is merged onto version 2
    api.models.merge_version_aliases(name=f"{first.name}@{second.version_id}", version_aliases=["production"])

    # Then version 1 lost it
    got = {m.version_id: list(m.version_aliases) for m in api.models.list_model_versions(name=first.name)}
    assert ("production" in got["1"], "production" in got["2"]) == (False, True)


def test_list_filters_by_label(api: VertexApi, fake: FakeVertex) -> None:
    # Given two endpoints, one labelled managed-by=vxdeploy
    fake.seed_serving_endpoint("a", endpoint_id="a", labels={"managed-by": "vxdeploy"})
    fake.seed_serving_endpoint("b", endpoint_id="b")

    # When listed with a label filter / Then only the labelled one comes back
    found = api.endpoints.list_endpoints(
        request=v1.ListEndpointsRequest(
            parent=f"projects/{PROJECT}/locations/us-central1", filter='labels.managed-by="vxdeploy"'
        )
    )
    assert [e.display_name for e in found] == ["a"]


def test_another_project_is_permission_denied(api: VertexApi) -> None:
    # Given the fake serves one project / When another project is listed / Then 403
    with pytest.raises(gexc.Forbidden):
        list(api.endpoints.list_endpoints(parent="projects/someone-else/locations/us-central1"))
