"""The metadata each artifact kind carries between stages: one pydantic model per kind.

A stage writes an artifact's metadata through its model (``SourceModel(...).write(artifact)``) and
the next stage reads it through the same model (``SourceModel.read(artifact)``), so a missing or
misspelt field fails where it is read, naming the artifact, the field and the stage that writes it.
These models are also the contract a component test builds its input artifacts against
(:mod:`vxdeploy.components.testing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vxdeploy.components.common.config import CandidateKind
from vxdeploy.components.common.errors import ModelIntakeError
from vxdeploy.components.common.signature import ModelSignature

ModelFormat = Literal["torch_export", "torchscript", "onnx"]


class ArtifactMetadataError(ModelIntakeError):
    """An input artifact's metadata does not follow its contract (made elsewhere, or by hand)."""


class ArtifactMetadata(BaseModel):
    """Base of every artifact contract: how it is written onto and read from a KFP artifact."""

    # Extra keys are ignored (Vertex AI or a user may add their own); kfp turns ints into floats in
    # metadata, which the lax int fields take back.
    model_config = ConfigDict(extra="ignore", frozen=True)

    ARTIFACT: ClassVar[str] = ""
    """The name the artifact has as a component input, for errors."""
    WRITTEN_BY: ClassVar[str] = ""
    """The stage that writes it, for errors."""

    def to_metadata(self) -> dict[str, Any]:
        """The JSON-ready metadata (fields that are None are left out: a protobuf Struct has no None)."""
        return self.model_dump(mode="json", exclude_none=True)

    def write(self, artifact: Any) -> None:
        """Put this metadata on ``artifact`` (a ``dsl.Artifact``, ``Model``, ``Dataset``...)."""
        artifact.metadata.update(self.to_metadata())

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> Self:
        """Validate a metadata mapping against this contract.

        Raises:
            ArtifactMetadataError: a field is missing or has the wrong type; the message names the
                artifact, the field and the stage that writes it.
        """
        try:
            return cls.model_validate(dict(metadata or {}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}" for e in exc.errors()
            )
            raise ArtifactMetadataError(
                f"{cls.ARTIFACT} artifact metadata does not follow {cls.__name__} "
                f"(components/common/artifacts.py): {problems}; it must come from {cls.WRITTEN_BY} "
                "(in a test, build it with vxdeploy.components.testing)"
            ) from None

    @classmethod
    def read(cls, artifact: Any) -> Self:
        """The metadata of ``artifact``, validated (see :meth:`from_metadata`)."""
        return cls.from_metadata(getattr(artifact, "metadata", None))


class SourceModel(ArtifactMetadata):
    """``source_model`` (``dsl.Model``): the user's model file, as intake resolved and checked it."""

    ARTIFACT: ClassVar[str] = "source_model"
    WRITTEN_BY: ClassVar[str] = "the intake stage (intake_model)"

    format: ModelFormat
    file: str = Field(description="The model file's name inside the artifact's folder.")
    signature: dict[str, Any] = Field(
        description="ModelSignature.to_dict() of the model's inputs and outputs."
    )
    sha256: str = ""
    uri: str = Field(default="", description="Where the model came from (model.uri).")
    name: str = Field(default="", description="model.name.")
    source_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Model Registry labels of the source version, when it came from one.",
    )
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "A generation model's parts: {role, format, file: '<part>/model.pt2', signature, sha256} each; "
            "then file is '' and signature is the whole model's (encoder inputs -> output_ids)."
        ),
    )
    generation: dict[str, Any] | None = Field(
        default=None, description="GenerationSpec.to_dict() of a generation model (components/generation)."
    )

    def to_metadata(self) -> dict[str, Any]:
        """As the base does; a single model's metadata has no (empty) ``parts``."""
        return _without_empty_parts(super().to_metadata())

    def model_signature(self) -> ModelSignature:
        return ModelSignature.from_dict(self.signature)


def _without_empty_parts(metadata: dict[str, Any]) -> dict[str, Any]:
    if not metadata.get("parts"):
        metadata.pop("parts", None)
    return metadata


class DatasetSamples(ArtifactMetadata):
    """``calibration_data`` / ``eval_data`` (``dsl.Dataset``): a checked .npz file at the artifact's path."""

    ARTIFACT: ClassVar[str] = "calibration_data or eval_data"
    WRITTEN_BY: ClassVar[str] = "the intake stage (intake_model)"

    samples: int = Field(ge=0)
    labelled: bool = Field(default=False, description="Whether the .npz holds labels (eval data).")


class OnnxModel(ArtifactMetadata):
    """``onnx_model`` (``dsl.Model``): the FP32 ONNX export, checked for parity against its source."""

    ARTIFACT: ClassVar[str] = "onnx_model"
    WRITTEN_BY: ClassVar[str] = "the export stage (export_onnx)"

    file: str = "model.onnx"
    signature: dict[str, Any]
    opset: int = 0
    sha256: str = ""
    source_format: str = ""
    exported: bool = Field(
        default=True, description="False when the source already was ONNX (checked, not exported)."
    )
    parity_reference: str = ""
    parity_samples: int = 0
    parity: dict[str, Any] = Field(
        default_factory=dict, description="Parity figures per output (max abs diff, cosine)."
    )
    name: str = ""
    task: str = "classification"
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per part of a multi-part model: the same facts and its file."
    )
    generation: dict[str, Any] | None = Field(
        default=None, description="GenerationSpec.to_dict() of a generation model (components/generation)."
    )

    def model_signature(self) -> ModelSignature:
        return ModelSignature.from_dict(self.signature)


class CalibratedModel(ArtifactMetadata):
    """``qdq_model`` (``dsl.Model``): the Q/DQ INT8 model and its accuracy gate's verdict.

    With ``produced`` false (quantization off) only ``accepted`` and ``reason`` matter.
    """

    ARTIFACT: ClassVar[str] = "qdq_model"
    WRITTEN_BY: ClassVar[str] = "the calibration stage (calibrate_int8)"

    produced: bool = Field(default=True, description="False when quantization was off (no file).")
    accepted: bool
    reason: str = ""
    file: str | None = Field(default=None, description="The Q/DQ model's file; set when produced.")
    signature: dict[str, Any] | None = None
    sha256: str | None = None
    source_sha256: str | None = None
    opset: int | None = None
    backend: str | None = None
    method: str | None = None
    operators: str | None = None
    accuracy_budget: float | None = None
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    top1_agreement: float | None = None
    accuracy_drop_points: float | None = None
    min_cosine: float | None = None
    excluded_layers: list[str] | None = Field(default=None, description="Layers the gate kept in FP32.")
    calibration_samples: int | None = None
    eval_samples: int | None = None
    activation_type: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    ranges_file: str | None = None
    table_file: str | None = None
    dynamic_file: str | None = Field(default=None, description="The dynamically quantized model, if written.")
    dynamic_accepted: bool | None = None
    dynamic_reason: str | None = None
    dynamic_sha256: str | None = None
    dynamic_min_cosine: float | None = None
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "A generation model's parts: {role, produced, accepted, reason, "
            "file: '<part>/model.onnx' | None, method, fp32_exact, int8_exact, drop_points, agreement}; "
            "file is then '' (no single model)."
        ),
    )
    generation: dict[str, Any] | None = Field(
        default=None, description="GenerationSpec.to_dict() of a generation model (components/generation)."
    )

    def to_metadata(self) -> dict[str, Any]:
        """As the base does; a single model's metadata has no (empty) ``parts``."""
        return _without_empty_parts(super().to_metadata())

    @model_validator(mode="after")
    def _file(self) -> Self:
        if self.produced and not self.file and not self.parts:
            raise ValueError("a produced Q/DQ model names its file (file: model.onnx)")
        return self


class Candidates(ArtifactMetadata):
    """``candidates`` (``dsl.Artifact``): a folder with one sub-folder per candidate and manifest.json."""

    ARTIFACT: ClassVar[str] = "candidates"
    WRITTEN_BY: ClassVar[str] = "the compile stage (compile_candidates)"

    built: list[str]
    not_built: dict[str, str] = Field(description="Candidate name to why it was not built.")
    signature: dict[str, Any]
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "Generation models: each part's {role, built, not_built, manifest}; its candidates lie in "
            "<candidates>/<part>/<candidate>/ beside <part>/manifest.json."
        ),
    )
    generation: dict[str, Any] | None = Field(
        default=None, description="Generation models: GenerationSpec.to_dict()."
    )

    def to_metadata(self) -> dict[str, Any]:
        """As the base does; a single model's metadata has no (empty) ``parts``."""
        return _without_empty_parts(super().to_metadata())


class SelectedModel(ArtifactMetadata):
    """``selected_model`` (``dsl.Model``): the winning candidate's folder, its facts and figures."""

    ARTIFACT: ClassVar[str] = "selected_model"
    WRITTEN_BY: ClassVar[str] = "the selection stage (select_candidate)"

    kind: CandidateKind
    file: str
    signature: dict[str, Any]
    name: str = ""
    precision: str = ""
    runtime: str = ""
    device: str = "cpu"
    sha256: str = ""
    versions: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    figures: dict[str, Any] = Field(default_factory=dict)
    engine: dict[str, Any] | None = Field(
        default=None, description="TensorRT only: the engine's facts (GPU, TensorRT version, profiles)."
    )
    gpu_name: str | None = None
    compute_capability: str | None = None
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "Generation models: each part's selected candidate {role, candidate, kind, runtime, precision, "
            "device, file: '<part>/<file>', sha256, options, figures, ...}."
        ),
    )
    generation: dict[str, Any] | None = Field(
        default=None, description="Generation models: GenerationSpec.to_dict()."
    )

    def to_metadata(self) -> dict[str, Any]:
        """As the base does; a single model's metadata has no (empty) ``parts``."""
        return _without_empty_parts(super().to_metadata())

    def model_signature(self) -> ModelSignature:
        return ModelSignature.from_dict(self.signature)


class ContainerPort(ArtifactMetadata):
    container_port: int


class EnvVar(ArtifactMetadata):
    name: str
    value: str = ""


class ServingContainer(ArtifactMetadata):
    """How Vertex AI runs the Triton repository: ``aiplatform_v1.ModelContainerSpec``'s fields."""

    ARTIFACT: ClassVar[str] = "triton_repository.serving_container"
    WRITTEN_BY: ClassVar[str] = "the package stage (package_triton_repository)"

    image_uri: str
    command: list[str]
    args: list[str]
    env: list[EnvVar] = Field(default_factory=list)
    ports: list[ContainerPort]
    predict_route: str
    health_route: str
    shared_memory_size_mb: int
    tensorrt_version: str = Field(default="", description="TensorRT version of the image, when known.")


class TritonRepository(ArtifactMetadata):
    """``triton_repository`` (``dsl.Artifact``): a Triton model repository ready for Vertex AI."""

    ARTIFACT: ClassVar[str] = "triton_repository"
    WRITTEN_BY: ClassVar[str] = "the package stage (package_triton_repository)"

    model_name: str = Field(description="The model requests go to (the ensemble, for multi-part models).")
    models: list[str]
    kind: str = Field(description="The default model's candidate kind.")
    kinds: dict[str, str] = Field(description="Each model of the repository to its candidate kind.")
    model_repository: str
    manifest: str
    manifest_sha256: str
    files: int
    total_bytes: int
    max_batch_size: int
    instance_kind: str
    serving_container: ServingContainer
    precision: str | None = None
    device: str | None = None
    engines: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Each TensorRT model to its engine's facts (GPU, TensorRT version)."
    )
    gpu_name: str | None = None
    compute_capability: str | None = None
    versions: dict[str, Any] = Field(default_factory=dict)
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "A generation model's parts, each a model of the repository: {role, kind, precision, device, "
            "candidate, file} (model_name is then the streaming generator)."
        ),
    )
    generation: dict[str, Any] | None = Field(
        default=None, description="GenerationSpec.to_dict() of a generation model (components/generation)."
    )
    scalar_inputs: list[str] = Field(
        default_factory=list,
        description="Inputs of model_name holding one scalar per sample: clients send them as [batch, 1].",
    )


class VertexModel(ArtifactMetadata):
    """``vertex_model`` (``google.VertexModel``): the uploaded Model Registry version.

    Fields are spelt as Google Cloud Pipeline Components spell this artifact's metadata.
    """

    ARTIFACT: ClassVar[str] = "vertex_model"
    WRITTEN_BY: ClassVar[str] = "the deploy stage (deploy_to_endpoint)"

    resourceName: str
    model: str
    versionId: str
    displayName: str
    artifactUri: str
    sha256: str
    imageUri: str
    predictRoute: str
    invokeRoute: bool = Field(default=False, description="Requests reach the model through the invoke route.")
    generation: dict[str, Any] | None = Field(
        default=None, description="A generation model's GenerationSpec (its generator streams captions)."
    )
    scalarInputs: list[str] = Field(
        default_factory=list,
        description="Inputs holding one scalar per sample, which requests carry as [batch, 1].",
    )


class VertexEndpoint(ArtifactMetadata):
    """``vertex_endpoint`` (``google.VertexEndpoint``): the endpoint and the new deployed model on it."""

    ARTIFACT: ClassVar[str] = "vertex_endpoint"
    WRITTEN_BY: ClassVar[str] = "the deploy stage (deploy_to_endpoint)"

    resourceName: str
    endpointId: str
    displayName: str
    deployedModelId: str
    generation: dict[str, Any] | None = Field(
        default=None, description="The GenerationSpec of a generation model's deployed version."
    )


CONTRACTS: tuple[type[ArtifactMetadata], ...] = (
    SourceModel,
    DatasetSamples,
    OnnxModel,
    CalibratedModel,
    Candidates,
    SelectedModel,
    TritonRepository,
    VertexModel,
    VertexEndpoint,
)
