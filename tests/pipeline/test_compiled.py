from pathlib import Path

import yaml

from vxdeploy.components.common.images import IMAGE_NAMES, image
from vxdeploy.components.common.run_parameters import PARAMETER_NAMES
from vxdeploy.pipelines.compile import check_compiled, compiled_text

ROOT = Path(__file__).resolve().parents[2]
COMPILED = ROOT / "compiled" / "optimize_and_deploy.yaml"


def test_committed_pipeline_matches_its_source() -> None:
    diff = check_compiled(COMPILED)

    assert diff == [], "compiled/ is out of date: run `make compile`\n" + "\n".join(diff[:30])


def test_compilation_is_byte_identical_run_to_run() -> None:
    assert compiled_text() == compiled_text()


def test_every_pipeline_parameter_has_a_description_and_a_default() -> None:
    spec = yaml.safe_load(compiled_text())
    params = spec["root"]["inputDefinitions"]["parameters"]

    assert sorted(params) == sorted(PARAMETER_NAMES)
    for name, p in params.items():
        assert p.get("description"), f"parameter {name} has no description"
        assert "defaultValue" in p, f"parameter {name} has no default"


def test_every_component_runs_a_project_image() -> None:
    spec = yaml.safe_load(compiled_text())
    ours = {image(n) for n in IMAGE_NAMES}

    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}

    assert images <= ours, images - ours
