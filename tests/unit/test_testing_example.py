"""The guide's example component test passes when copied into an empty project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "testing-components.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "the guide has one example to copy"
    return str(blocks[0])


def test_the_guides_example_passes_in_an_empty_project(tmp_path: Path) -> None:
    # given an empty project holding only the guide's example test
    project = tmp_path / "my-project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_my_component.py").write_text(_example())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}

    # when pytest runs there, with this environment's vxdeploy installed (not this checkout's path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # then its one test passed
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
