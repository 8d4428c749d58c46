"""Compile the pipeline to the YAML that Vertex AI runs; the output is byte-identical run to run."""

from __future__ import annotations

import ast
import re
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from kfp.compiler import pipeline_spec_builder
from kfp.pipeline_spec import pipeline_spec_pb2

from components.common import images
from components.common.errors import ConfigError
from pipelines.optimize_and_deploy import optimize_and_deploy

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
        pipeline_spec_builder.write_pipeline_spec_to_file(
            pipeline_spec=spec,
            pipeline_description=optimize_and_deploy.description,
            platform_spec=optimize_and_deploy.platform_spec,
            package_path=str(tmp_path),
        )
        tmp_path.write_text(_stable_header(tmp_path.read_text()))
        tmp_path.replace(output)
    finally:
        tmp_path.unlink(missing_ok=True)
    return output


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
        env = [e for e in container.get("env", []) if e.get("name") != images.REGISTRY_ENV]
        container["env"] = [*env, {"name": images.REGISTRY_ENV, "value": registry}]
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
    """``python -m pipelines.compile --check``: exit 1 when compiled/ is out of date."""
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
