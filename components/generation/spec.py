"""What makes a model a generation model, and the facts every stage needs to run one.

A *generation model* (``model.task: generation``) is a set of parts that together turn images into
text greedily, one token at a time, with a key/value cache. Each part has one of four roles; the roles
fix the tensor names between parts (the contract a user's own vision-language model follows):

==================  ===========================================  =============================================
role                inputs                                       outputs
==================  ===========================================  =============================================
vision_encoder      the model's image input(s)                   ``features`` (its first output)
projector           ``features`` (its first input)               ``image_tokens`` (its first output)
decoder_prefill     ``image_tokens``, ``input_ids`` i64 [B, 1]   ``logits`` [B, vocab], ``present_*`` (cache)
decoder_step        ``input_ids`` i64 [B, 1], ``past_*``         ``logits``, ``present_*``
==================  ===========================================  =============================================

``present_<x>`` of one call is fed as ``past_<x>`` of the next step. :class:`GenerationSpec` holds the
resolved facts (part name per role, special tokens, vocabulary) and travels on every artifact's
metadata as ``generation`` (:meth:`GenerationSpec.to_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vxdeploy.components.common.config import GENERATION_ROLES
from vxdeploy.components.common.errors import ConfigError, DataError

if TYPE_CHECKING:
    from vxdeploy.components.common.config import ModelConfig

ROLES = GENERATION_ROLES
"""The roles of a generation model's parts, in the order a generation runs them."""
REQUIRED_ROLES = ("vision_encoder", "decoder_prefill", "decoder_step")
"""Roles every generation model has (without a projector, the encoder's output feeds the prefill)."""
INPUT_IDS = "input_ids"
LOGITS = "logits"
IMAGE_TOKENS = "image_tokens"
PAST_PREFIX = "past_"
PRESENT_PREFIX = "present_"
OUTPUT_IDS = "output_ids"
"""The whole model's output: the generated token ids, [batch, max_new_tokens], padded after ``eos``."""
METRICS = ("exact_match",)


def is_generation(obj: Any) -> bool:
    """Whether ``obj`` describes a generation model.

    Args:
        obj: A :class:`~vxdeploy.components.common.config.ModelConfig`, an artifact's metadata
            mapping (``generation`` set), an artifact (its ``.metadata``), a :class:`GenerationSpec`,
            or a ``model`` config mapping (``task: generation``).

    Returns:
        True for a generation model; False for a single model, None or anything else.
    """
    if obj is None:
        return False
    if isinstance(obj, GenerationSpec):
        return True
    if isinstance(obj, Mapping):
        return bool(obj.get("generation")) or obj.get("task") == "generation"
    if getattr(obj, "generation", None):  # a typed artifact view (SourceModel, OnnxModel, ...)
        return True
    task = getattr(obj, "task", None)
    if isinstance(task, str):  # a ModelConfig
        return task == "generation"
    metadata = getattr(obj, "metadata", None)
    return isinstance(metadata, Mapping) and bool(metadata.get("generation"))


@dataclass(frozen=True)
class GenerationSpec:
    """The resolved facts of a generation model.

    Attributes:
        parts: Role -> part name (a folder of every artifact, a model of the Triton repository).
        bos_token_id: The token the prefill starts from.
        eos_token_id: The token that ends a caption.
        pad_token_id: Fills ``output_ids`` after a sequence's ``eos``.
        max_new_tokens: Upper bound of the tokens generated per image.
        vocabulary: Token id -> text; captions are the decoded words joined by spaces.
        metric: What the accuracy budget applies to (``exact_match``: points of exact caption match).
        label_captions: Reference caption per integer label (``labels`` of the eval data), e.g.
            ``"digit three"`` for label 3; empty when references come as ``labels/output_ids``.
    """

    parts: dict[str, str]
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    max_new_tokens: int
    vocabulary: tuple[str, ...]
    metric: str = "exact_match"
    label_captions: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        missing = [r for r in REQUIRED_ROLES if r not in self.parts]
        unknown = sorted(set(self.parts) - set(ROLES))
        if missing or unknown:
            raise ConfigError(
                "model.parts",
                dict(self.parts),
                f"a generation model needs a part for each role of {list(REQUIRED_ROLES)} "
                f"(projector optional); missing {missing}, unknown roles {unknown}; set each part's role",
            )
        n = len(self.vocabulary)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not 0 <= value < n:
                raise ConfigError(
                    f"model.generation.{name}",
                    value,
                    f"must be a token id of the vocabulary (0..{n - 1}); list every token in "
                    "model.generation.vocabulary",
                )
        if self.max_new_tokens < 1:
            raise ConfigError("model.generation.max_new_tokens", self.max_new_tokens, "give 1 or more")

    # -- roles -----------------------------------------------------------------------------------

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles present, in run order."""
        return tuple(r for r in ROLES if r in self.parts)

    def part(self, role: str) -> str:
        """The part name of ``role``."""
        return self.parts[role]

    def role_of(self, key: str) -> str:
        """``key`` (a part name or a role) -> its role; a part's name wins over a role of that spelling.

        Raises:
            ConfigError: ``key`` is neither a role nor a part of this model.
        """
        for role, name in self.parts.items():
            if name == key:  # a part name first: a part may be named like another role
                return role
        if key in self.parts:
            return key
        raise ConfigError("part", key, f"not a part of this generation model; use one of {self.part_names}")

    @property
    def part_names(self) -> list[str]:
        """Part names in run order."""
        return [self.parts[r] for r in self.roles]

    def by_role(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """Re-key a mapping keyed by roles or part names by role (unknown keys are an error)."""
        return {self.role_of(k): v for k, v in mapping.items()}

    # -- text ------------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text: stops at ``eos``, skips ``bos``/``pad`` and ids outside the vocabulary."""
        words: list[str] = []
        for t in ids:
            t = int(t)
            if t == self.eos_token_id:
                break
            if t not in (self.pad_token_id, self.bos_token_id) and 0 <= t < len(self.vocabulary):
                words.append(self.vocabulary[t])
        return " ".join(words)

    def references(self, labels: Any) -> list[str]:
        """Reference captions of eval labels.

        Args:
            labels: Integer labels [N] (mapped through ``label_captions``) or reference token ids
                [N, T] (``labels/output_ids``, decoded).

        Raises:
            DataError: labels of the wrong shape or outside ``label_captions``.
        """
        import numpy as np

        arr = np.asarray(labels)
        if arr.ndim == 2:
            return [self.decode(row.tolist()) for row in arr]
        if arr.ndim != 1:
            raise DataError(
                f"generation labels have shape {list(arr.shape)}; give [N] integer labels "
                f"(with model.generation.label_captions) or [N, T] reference token ids as labels/{OUTPUT_IDS}"
            )
        if not self.label_captions:
            raise DataError(
                "the eval data has integer labels but model.generation.label_captions is empty; give the "
                f"reference caption of each label there, or reference token ids as labels/{OUTPUT_IDS}"
            )
        n = len(self.label_captions)
        bad = sorted({int(v) for v in arr.tolist() if not 0 <= int(v) < n})
        if bad:
            raise DataError(
                f"eval labels {bad[:5]} have no caption in model.generation.label_captions (0..{n - 1})"
            )
        return [self.label_captions[int(v)] for v in arr.tolist()]

    # -- (de)serialization -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (artifact metadata ``generation``)."""
        return {
            "parts": dict(self.parts),
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "max_new_tokens": self.max_new_tokens,
            "vocabulary": list(self.vocabulary),
            "metric": self.metric,
            "label_captions": list(self.label_captions),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            parts={str(k): str(v) for k, v in dict(data["parts"]).items()},
            bos_token_id=int(data["bos_token_id"]),
            eos_token_id=int(data["eos_token_id"]),
            pad_token_id=int(data["pad_token_id"]),
            max_new_tokens=int(data["max_new_tokens"]),
            vocabulary=tuple(str(v) for v in data["vocabulary"]),
            metric=str(data.get("metric", "exact_match")),
            label_captions=tuple(str(v) for v in data.get("label_captions", ())),
        )

    @classmethod
    def from_metadata(cls, obj: Any) -> GenerationSpec:
        """The spec on an artifact (or its metadata mapping).

        Raises:
            ConfigError: the artifact is not a generation model's.
        """
        meta = obj if isinstance(obj, Mapping) else getattr(obj, "metadata", None)
        data = meta.get("generation") if isinstance(meta, Mapping) else getattr(obj, "generation", None)
        if not data:
            raise ConfigError(
                "generation", None, "this artifact is not a generation model's (no 'generation')"
            )
        return cls.from_dict(data)

    @classmethod
    def from_config(cls, model: ModelConfig) -> GenerationSpec:
        """Resolve a ``task: generation`` model config (parts' roles, the ``generation`` section).

        Raises:
            ConfigError: not a generation model, or no ``model.generation`` section.
        """
        if model.task != "generation":
            raise ConfigError("model.task", model.task, "set model.task: generation for a generation model")
        gen = model.generation
        if gen is None:
            raise ConfigError(
                "model.generation",
                None,
                "a generation model needs its tokens: set model.generation.{vocabulary, bos_token_id, "
                "eos_token_id, pad_token_id, max_new_tokens}",
            )
        parts = {p.role or p.name: p.name for p in model.parts}
        return cls(
            parts=parts,
            bos_token_id=gen.bos_token_id,
            eos_token_id=gen.eos_token_id,
            pad_token_id=gen.pad_token_id,
            max_new_tokens=gen.max_new_tokens,
            vocabulary=tuple(gen.vocabulary),
            metric=gen.metric,
            label_captions=tuple(gen.label_captions),
        )
