"""The Vertex AI Model Registry as a model source, and the labels that tie a deployment to it.

A run may take its model from a registry version, ``projects/P/locations/L/models/M@alias``
(or ``@<version id>``; no ``@`` means the ``default`` alias): :func:`resolve_registry_model`
reads the version through the real ``ModelServiceClient`` and downloads the model file under
its ``artifact_uri``. The deploy stage stamps :func:`source_model_labels` on the model version
it uploads, so a scheduled run can find that the version it would deploy already serves
(:func:`already_deployed_reason`) and end as a no-op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as api_exceptions

from vxdeploy.components.cloud.labels import label_value
from vxdeploy.components.cloud.vertex import vertex_client
from vxdeploy.components.common.config import DeploymentConfig, ModelConfig
from vxdeploy.components.common.errors import CloudOperationError, ConfigError, ModelIntakeError, UserError

if TYPE_CHECKING:  # aiplatform_v1 takes a second to import; intake imports this module for every run
    from google.auth.credentials import Credentials
    from google.cloud import aiplatform_v1

SOURCE_MODEL_LABEL = "vxdeploy-source-model"
"""Label on a deployed model version: the registry model id it was optimized from."""
SOURCE_VERSION_LABEL = "vxdeploy-source-version"
"""Label on a deployed model version: the registry version id it was optimized from."""

MODEL_FILE_SUFFIXES = (".pt2", ".onnx", ".pt")
"""Files under a version's ``artifact_uri`` that intake can read, in order of preference."""

_REGISTRY_URI = re.compile(
    r"^projects/(?P<project>[^/@]+)/locations/(?P<location>[^/@]+)/models/(?P<model>[^/@]+)(?:@(?P<version>[^/@]+))?$"
)


@dataclass(frozen=True)
class RegistryModelRef:
    """A model version as a run config names it (the version may be an alias)."""

    project: str
    location: str
    model_id: str
    version: str = "default"

    @property
    def model_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/models/{self.model_id}"

    @property
    def versioned_name(self) -> str:
        return f"{self.model_name}@{self.version}"


@dataclass(frozen=True)
class RegistryModelVersion:
    """One model version as the Model Registry reports it (the alias resolved to a version id)."""

    model_name: str
    model_id: str
    version_id: str
    artifact_uri: str
    aliases: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    display_name: str = ""

    @property
    def versioned_name(self) -> str:
        return f"{self.model_name}@{self.version_id}"


@dataclass(frozen=True)
class DeployedVersion:
    """Where a registry version serves: the endpoint, the deployed model and its traffic share."""

    endpoint: str
    deployed_model_id: str
    model: str
    model_version_id: str
    traffic_percent: int


def is_registry_uri(uri: str) -> bool:
    """True for ``projects/P/locations/L/models/M[@version]``."""
    return bool(_REGISTRY_URI.match(uri))


def parse_registry_uri(uri: str) -> RegistryModelRef:
    """Split a registry URI; a missing ``@version`` means the ``default`` alias.

    Raises:
        ConfigError: ``uri`` is not ``projects/P/locations/L/models/M[@alias or version id]``.
    """
    match = _REGISTRY_URI.match(uri)
    if not match:
        raise ConfigError(
            "model.uri",
            uri,
            "a Model Registry version is projects/PROJECT/locations/REGION/models/MODEL_ID@ALIAS",
        )
    return RegistryModelRef(
        match["project"], match["location"], match["model"], match["version"] or "default"
    )


def source_model_labels(version: RegistryModelVersion) -> dict[str, str]:
    """The labels the deploy stage puts on the model version it uploads from ``version``."""
    return {
        SOURCE_MODEL_LABEL: label_value(version.model_id),
        SOURCE_VERSION_LABEL: label_value(version.version_id),
    }


def model_service_client(
    location: str, api_endpoint: str | None = None, credentials: Credentials | None = None
) -> aiplatform_v1.ModelServiceClient:
    """A REST ``ModelServiceClient`` for ``location`` (or for the given endpoint)."""
    from google.cloud import aiplatform_v1

    return vertex_client(aiplatform_v1.ModelServiceClient, location, api_endpoint, credentials)


def endpoint_service_client(
    location: str, api_endpoint: str | None = None, credentials: Credentials | None = None
) -> aiplatform_v1.EndpointServiceClient:
    """A REST ``EndpointServiceClient`` for ``location`` (or for the given endpoint)."""
    from google.cloud import aiplatform_v1

    return vertex_client(aiplatform_v1.EndpointServiceClient, location, api_endpoint, credentials)


def _to_version(model: aiplatform_v1.Model) -> RegistryModelVersion:
    name = model.name.split("@", 1)[0]
    return RegistryModelVersion(
        model_name=name,
        model_id=name.rsplit("/", 1)[-1],
        version_id=model.version_id,
        artifact_uri=model.artifact_uri,
        aliases=tuple(model.version_aliases),
        labels=dict(model.labels),
        display_name=model.display_name,
    )


def get_registry_model_version(
    uri: str,
    *,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
    client: aiplatform_v1.ModelServiceClient | None = None,
) -> RegistryModelVersion:
    """Read the version ``uri`` names (resolving an alias) from the Model Registry.

    Raises:
        UserError: no such model or version, or no permission to read it.
        CloudOperationError: the Vertex AI call failed otherwise.
    """
    ref = parse_registry_uri(uri)
    client = client or model_service_client(ref.location, api_endpoint, credentials)
    try:
        model = client.get_model(name=ref.versioned_name)
    except api_exceptions.NotFound:
        raise UserError(
            f"model.uri={uri!r}: no such model version; list the versions with "
            f"`gcloud ai models list-version {ref.model_id} --region={ref.location} --project={ref.project}`"
        ) from None
    except api_exceptions.PermissionDenied:
        raise UserError(
            f"model.uri={uri!r}: permission denied; the pipeline's service account needs "
            f"roles/aiplatform.user in project {ref.project}"
        ) from None
    except api_exceptions.GoogleAPIError as exc:
        raise CloudOperationError(
            f"reading {ref.versioned_name} from the Model Registry failed: {exc}"
        ) from exc
    return _to_version(model)


def _split_gs(uri: str) -> tuple[str, str]:
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    return bucket, path


def select_model_files(artifact_uri: str, object_names: list[str]) -> list[str]:
    """The objects to download for a version: its model file first, then the ONNX external data beside it.

    ``artifact_uri`` is a ``gs://`` directory (usual) or the model file itself. In a directory
    the model is the one file with a readable suffix (:data:`MODEL_FILE_SUFFIXES`); among several,
    ``model.<suffix>`` in suffix order wins.

    Raises:
        ModelIntakeError: no readable model file, or several with nothing to choose between them.
    """
    _, path = _split_gs(artifact_uri)
    if path.endswith(MODEL_FILE_SUFFIXES) and path in object_names:
        chosen = path
    else:
        prefix = path.rstrip("/") + "/" if path else ""
        files = [n for n in object_names if n.startswith(prefix) and "/" not in n[len(prefix) :]]
        models = [n for n in files if n.endswith(MODEL_FILE_SUFFIXES)]
        if not models:
            listed = ", ".join(n[len(prefix) :] for n in files[:10]) or "nothing"
            raise ModelIntakeError(
                f"model.uri: the version's artifact_uri {artifact_uri!r} holds {listed}; it needs one model "
                f"file ending in {', '.join(MODEL_FILE_SUFFIXES)} (torch.export .pt2, ONNX, TorchScript)"
            )
        preferred = [f"{prefix}model{suffix}" for suffix in MODEL_FILE_SUFFIXES]
        named = [n for n in preferred if n in models]
        if len(models) == 1:
            chosen = models[0]
        elif named:
            chosen = named[0]
        else:
            raise ModelIntakeError(
                f"model.uri: the version's artifact_uri {artifact_uri!r} holds several model files "
                f"({', '.join(n[len(prefix) :] for n in models)}); keep one, "
                f"or name it model{MODEL_FILE_SUFFIXES[0]}"
            )
    # ONNX weights over 2 GB live in external data files named after the model (model.onnx.data).
    extras = sorted(
        n for n in object_names if n != chosen and n.startswith(chosen) and chosen.endswith(".onnx")
    )
    return [chosen, *extras]


def resolve_registry_model(
    uri: str,
    dest_dir: str | Path,
    api_endpoint: str | None = None,
    *,
    credentials: Credentials | None = None,
    storage_client: Any = None,
) -> Path:
    """Download the model file of the registry version ``uri`` names into ``dest_dir``; return its path.

    On Vertex AI, where ``gs://b/x`` is also mounted at ``/gcs/b/x``, the mounted file is
    returned and nothing is copied.

    Args:
        uri: ``projects/P/locations/L/models/M@alias`` or ``...@<version id>``.
        dest_dir: Where to put the file.
        api_endpoint: Vertex AI endpoint override (default ``{L}-aiplatform.googleapis.com``).
        credentials: Credentials for Vertex AI and Cloud Storage (default: ADC).
        storage_client: A ``google.cloud.storage.Client`` (default: a new one for project P).

    Raises:
        UserError: unknown version, no permission, or no single model file under its ``artifact_uri``.
    """
    version = get_registry_model_version(uri, api_endpoint=api_endpoint, credentials=credentials)
    if not version.artifact_uri.startswith("gs://"):
        raise ModelIntakeError(
            f"model.uri={uri!r}: version {version.version_id} has artifact_uri {version.artifact_uri!r}; "
            "vxdeploy needs the model file in Cloud Storage (upload the version with artifact_uri=gs://...)"
        )
    bucket_name, path = _split_gs(version.artifact_uri)
    if storage_client is None:
        import google.cloud.storage as storage

        storage_client = storage.Client(project=parse_registry_uri(uri).project, credentials=credentials)
    try:
        names = [b.name for b in storage_client.list_blobs(bucket_name, prefix=path)]
    except api_exceptions.NotFound:
        raise ModelIntakeError(
            f"model.uri={uri!r}: bucket {bucket_name} of artifact_uri {version.artifact_uri!r} does not exist"
        ) from None
    except api_exceptions.Forbidden:
        raise UserError(
            f"model.uri={uri!r}: no permission to read {version.artifact_uri}; grant the pipeline's service "
            "account roles/storage.objectViewer on the bucket"
        ) from None
    chosen = select_model_files(version.artifact_uri, names)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    mounted = Path("/gcs") / bucket_name / chosen[0]
    if mounted.is_file():
        return mounted
    bucket = storage_client.bucket(bucket_name)
    for name in chosen:
        target = dest / Path(name).name
        partial = target.with_name(target.name + ".part")
        bucket.blob(name).download_to_filename(str(partial))
        partial.replace(target)
    return dest / Path(chosen[0]).name


def _endpoints_named(
    client: aiplatform_v1.EndpointServiceClient, project: str, location: str, endpoint: str
) -> list[aiplatform_v1.Endpoint]:
    if endpoint.startswith("projects/") or endpoint.isdigit():
        name = (
            endpoint
            if endpoint.startswith("projects/")
            else f"projects/{project}/locations/{location}/endpoints/{endpoint}"
        )
        try:
            return [client.get_endpoint(name=name)]
        except api_exceptions.NotFound:
            return []
    request = {"parent": f"projects/{project}/locations/{location}", "filter": f'display_name="{endpoint}"'}
    return list(client.list_endpoints(request=request))


def find_deployed_version(
    version: RegistryModelVersion,
    *,
    project: str,
    location: str,
    endpoint: str,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> DeployedVersion | None:
    """The deployment on ``endpoint`` made from ``version`` that takes the most traffic, if any.

    A deployed model counts when its model version carries :func:`source_model_labels` of
    ``version``, or when it is ``version`` itself.

    Args:
        version: The registry version a run would deploy.
        project: The deployment's project.
        location: The deployment's region.
        endpoint: Endpoint display name, numeric id or resource name (``deployment.endpoint``).
        api_endpoint: Vertex AI endpoint override.
        credentials: Credentials (default: ADC).
    """
    endpoints = endpoint_service_client(location, api_endpoint, credentials)
    models = model_service_client(location, api_endpoint, credentials)
    wanted = source_model_labels(version)
    best: DeployedVersion | None = None
    try:
        for ep in _endpoints_named(endpoints, project, location, endpoint):
            for deployed in ep.deployed_models:
                if not deployed.model:
                    continue
                same_model = deployed.model.rsplit("/", 1)[-1] == version.model_id
                if same_model and deployed.model_version_id == version.version_id:
                    matches = True
                else:
                    try:
                        labels = models.get_model(
                            name=f"{deployed.model}@{deployed.model_version_id or 'default'}"
                        ).labels
                    except api_exceptions.NotFound:  # a version deleted while deployed tells nothing
                        continue
                    matches = all(labels.get(k) == v for k, v in wanted.items())
                if not matches:
                    continue
                found = DeployedVersion(
                    endpoint=ep.name,
                    deployed_model_id=deployed.id,
                    model=deployed.model,
                    model_version_id=deployed.model_version_id,
                    traffic_percent=int(ep.traffic_split.get(deployed.id, 0)),
                )
                if best is None or found.traffic_percent > best.traffic_percent:
                    best = found
    except api_exceptions.GoogleAPIError as exc:
        raise CloudOperationError(
            f"reading endpoint {endpoint!r} in {project}/{location} failed: {exc}"
        ) from exc
    return best


def is_version_deployed(
    version: RegistryModelVersion,
    *,
    project: str,
    location: str,
    endpoint: str,
    api_endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> bool:
    """True when a deployment made from ``version`` serves traffic on ``endpoint``."""
    found = find_deployed_version(
        version,
        project=project,
        location=location,
        endpoint=endpoint,
        api_endpoint=api_endpoint,
        credentials=credentials,
    )
    return found is not None and found.traffic_percent > 0


def already_deployed_reason(
    model: ModelConfig, deployment: DeploymentConfig, *, credentials: Credentials | None = None
) -> str | None:
    """Why a run need not go on, or None: its registry version already serves on its endpoint.

    Only for a run that deploys (``deployment.enabled``) a Model Registry model; a deployment
    of that version left with no traffic (e.g. by a canary that rolled back) does not count,
    so the run goes on.
    """
    if not deployment.enabled or not is_registry_uri(model.uri):
        return None
    api_endpoint = deployment.api_endpoint or None
    version = get_registry_model_version(model.uri, api_endpoint=api_endpoint, credentials=credentials)
    found = find_deployed_version(
        version,
        project=deployment.project,
        location=deployment.location,
        endpoint=deployment.endpoint,
        api_endpoint=api_endpoint,
        credentials=credentials,
    )
    if found is None or found.traffic_percent == 0:
        return None
    return (
        f"{version.versioned_name} (model.uri {model.uri}) already serves {found.traffic_percent}% of the "
        f"traffic of endpoint {found.endpoint} as deployed model {found.deployed_model_id}; nothing to deploy"
    )
