from pathlib import Path

import pytest

from vxdeploy.pipelines.cli import main


def test_broken_config_exits_non_zero_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("selection:\n  policy: fastest\n")

    code = main(["run", "--local", "--config", str(broken), "--workdir", str(tmp_path / "w")])

    assert code == 2
    err = capsys.readouterr().err
    assert "selection.policy='fastest'" in err and "max_throughput" in err


def test_bad_set_override_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", "--set", "selection.policy"])

    assert code == 2
    assert "section.field=value" in capsys.readouterr().err


def test_validate_accepts_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    assert "valid" in capsys.readouterr().out


def test_api_endpoint_without_a_project_asks_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--local", "--api-endpoint", "http://127.0.0.1:1", "--workdir", str(tmp_path)])

    assert code == 2
    assert "deployment.project" in capsys.readouterr().err
