"""Compile the pipeline to the YAML that Vertex AI runs; the output is byte-identical run to run."""

from __future__ import annotations

import ast
import inspect
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from kfp.compiler import pipeline_spec_builder
from kfp.pipeline_spec import pipeline_spec_pb2

from vxdeploy.components.common import images
from vxdeploy.components.common.errors import ConfigError
from vxdeploy.pipelines.optimize_and_deploy import optimize_and_deploy

_REGISTRY_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)+$")


def check_registry(registry: str) -> str:
    """A registry prefix as images are named under it (``us-docker.pkg.dev/PROJECT/REPOSITORY``).

    Raises:
        ConfigError: not HOST[:PORT]/PATH in lowercase.
    """
    value = registry.strip().rstrip("/")
    if not _REGISTRY_RE.match(value):
        raise ConfigError(
            "--registry",
            registry,
            "give the registry prefix the images were pushed to (`make images REGISTRY=...`), "
            "e.g. us-docker.pkg.dev/my-project/vxdeploy",
        )
    return value


def compile_pipeline(output: Path, registry: str | None = None) -> Path:
    """Write the compiled pipeline to ``output`` atomically, its tasks running the images of ``registry``.

    Args:
        output: The YAML file to write.
        registry: Registry prefix of the project's images (default: ``$VXDEPLOY_REGISTRY``, else the
            built-in one). Every task runs that registry's image and gets it as ``VXDEPLOY_REGISTRY``,
            so the serving image the model is uploaded with comes from the same registry.
    """
    target = check_registry(registry) if registry else images.registry()
    spec = pipeline_spec_pb2.PipelineSpec()
    spec.CopyFrom(optimize_and_deploy.pipeline_spec)
    _use_registry(spec, target)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=output.parent, delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        tmp_path.write_text(_spec_yaml(spec))
        tmp_path.replace(output)
    finally:
        tmp_path.unlink(missing_ok=True)
    return output


def _spec_yaml(spec: pipeline_spec_pb2.PipelineSpec) -> str:
    """The YAML kfp writes (header comment, spec, platform spec), with numbers of their own types.

    Protobuf keeps every number as a double, so kfp writes an int default as ``19.0`` and a list
    of ints as ``[10.0, ...]``; the console then shows floats. The root defaults are written as the
    pipeline function declares them, and any other integer parameter's default as an integer.
    """
    spec_dict = json_format.MessageToDict(spec)
    declared = inspect.signature(optimize_and_deploy.pipeline_func).parameters
    root = spec_dict["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, definition in root.items():
        if "defaultValue" in definition and name in declared:
            definition["defaultValue"] = declared[name].default
    for component in spec_dict.get("components", {}).values():
        for definition in component.get("inputDefinitions", {}).get("parameters", {}).values():
            value = definition.get("defaultValue")
            if definition.get("parameterType") == "NUMBER_INTEGER" and isinstance(value, float):
                definition["defaultValue"] = int(value)
    header = pipeline_spec_builder.extract_comments_from_pipeline_spec(
        spec_dict, optimize_and_deploy.description
    )
    documents = [spec_dict]
    if optimize_and_deploy.platform_spec.platforms:
        documents.append(json_format.MessageToDict(optimize_and_deploy.platform_spec))
    return _stable_header(header + yaml.dump_all(documents, sort_keys=True))


def _use_registry(spec: pipeline_spec_pb2.PipelineSpec, registry: str) -> None:
    """Point every task at the project's images in ``registry`` and tell the task which registry it is.

    The component decorators name the images of the registry this process imported them with.
    """
    imported = {images.image(n, images.REGISTRY): images.image(n, registry) for n in images.IMAGE_NAMES}
    deployment = json_format.MessageToDict(spec.deployment_spec)
    for executor in deployment.get("executors", {}).values():
        container = executor.get("container")
        if container is None:
            continue
        container["image"] = imported.get(container["image"], container["image"])
        ours = (images.REGISTRY_ENV, images.TAG_ENV)
        env = [e for e in container.get("env", []) if e.get("name") not in ours]
        container["env"] = [
            *env,
            {"name": images.REGISTRY_ENV, "value": registry},
            {"name": images.TAG_ENV, "value": images.image_tag()},  # the images' own tag, in every task
        ]
    spec.deployment_spec.Clear()
    spec.deployment_spec.update(deployment)


_DEFAULT_COMMENT = re.compile(r"^(#\s+\w+: (?:dict|list) \[Default: )(.*)(\])$")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _stable_header(text: str) -> str:
    """Sort the keys of dict defaults in kfp's header comment.

    kfp renders them from a protobuf Struct whose key order differs between processes; the
    spec itself is already stable.
    """
    lines = []
    for line in text.splitlines(keepends=True):
        m = _DEFAULT_COMMENT.match(line.rstrip("\n"))
        if m:
            line = f"{m.group(1)}{_sorted(ast.literal_eval(m.group(2)))!r}{m.group(3)}\n"
        lines.append(line)
    return "".join(lines)


def compiled_text(registry: str | None = None) -> str:
    """What the current source compiles to."""
    with tempfile.TemporaryDirectory() as tmp:
        return compile_pipeline(Path(tmp) / "p.yaml", registry).read_text()


def check_compiled(committed: Path) -> list[str]:
    """Differences between the committed compiled pipeline and what the source compiles to."""
    import difflib

    want = compiled_text()
    have = committed.read_text() if committed.is_file() else ""
    if want == have:
        return []
    return list(
        difflib.unified_diff(have.splitlines(), want.splitlines(), str(committed), "source", lineterm="", n=1)
    )


def main() -> int:
    """``python -m vxdeploy.pipelines.compile --check``: exit 1 when compiled/ is out of date."""
    import sys

    target = Path("compiled/optimize_and_deploy.yaml")
    if "--check" in sys.argv:
        diff = check_compiled(target)
        if diff:
            print("\n".join(diff[:40]))
            print(f"{target} is out of date: run `make compile` and commit it", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    print(f"wrote {compile_pipeline(target)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
