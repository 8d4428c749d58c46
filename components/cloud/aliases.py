"""Model Registry version aliases of a rollout: set on promotion, put back on rollback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.cloud import aiplatform_v1

from vxdeploy.components.cloud.vertex import VertexApi, call, same_resource

PROMOTED_ALIASES = ("production", "default")
"""The aliases a promoted version takes (``default`` is what an unversioned model name resolves to)."""


def merge_aliases(api: VertexApi, version: str, aliases: Sequence[str]) -> list[str]:
    """Add (or with a leading '-', remove) aliases on ``projects/.../models/M@V``; returns its aliases.

    Idempotent (adding an alias a version holds changes nothing), so it is retried like a read.
    """
    request = aiplatform_v1.MergeVersionAliasesRequest(name=version, version_aliases=list(aliases))
    model = call(api.models.merge_version_aliases, request, api=api)
    return [str(a) for a in model.version_aliases]


def version_aliases(api: VertexApi, version: str) -> list[str]:
    """The aliases ``projects/.../models/M@V`` holds."""
    model = call(api.models.get_model, aiplatform_v1.GetModelRequest(name=version), api=api)
    return [str(a) for a in model.version_aliases]


def versioned_name(dm: aiplatform_v1.DeployedModel) -> str:
    """``projects/.../models/M@V`` of a deployed model."""
    model, _, ref = str(dm.model).partition("@")
    return f"{model}@{dm.model_version_id or ref}"


def restore_aliases(
    api: VertexApi,
    endpoint: aiplatform_v1.Endpoint,
    canary_id: str,
    restored_split: Mapping[str, int],
) -> list[str]:
    """Take the promoted aliases off a rolled-back canary's version and give them back.

    They go to the version of the same model that serves most of ``restored_split``; when no
    version of that model serves, ``production`` is removed (``default`` cannot be removed: it
    stays where it is). Returns what was done, for the report.
    """
    by_id = {str(dm.id): dm for dm in endpoint.deployed_models}
    canary = by_id.get(canary_id)
    if canary is None:
        return []
    version = versioned_name(canary)
    held = [a for a in version_aliases(api, version) if a in PROMOTED_ALIASES]
    if not held:
        return []
    model = version.split("@", 1)[0]
    same_model = [
        (share, dm_id)
        for dm_id, share in restored_split.items()
        if dm_id in by_id and same_resource(str(by_id[dm_id].model), model)
    ]
    if same_model:
        target = versioned_name(by_id[max(same_model)[1]])
        merge_aliases(api, target, held)
        return [f"aliases {', '.join(held)} moved back from {version} to {target}"]
    if "production" in held:
        merge_aliases(api, version, ["-production"])
        return [f"alias production removed from {version}"]
    return []
