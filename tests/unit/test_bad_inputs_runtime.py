"""Bad inputs a user brings to the CLI: each ends with one clear message, the right exit status,
no traceback and nothing left behind (no workdir, no temp folders).

The table is the runtime half of issue 12: files the model and data intake read, config files and
``--set`` overrides as the loader reads them, workdirs and output paths, and cloud commands without
a reachable API or credentials. Each row runs ``vxdeploy`` in-process as a user would call it.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vxdeploy.pipelines.cli import main


@dataclass(frozen=True)
class Case:
    """One bad input: how to build the command line, and what the user must read."""

    id: str
    argv: Callable[[Path, Path], list[str]]  # (scratch dir, digits dir) -> arguments
    fragments: tuple[str, ...]  # all must appear in the output (case-insensitive)
    code: int = 2
    absent: tuple[str, ...] = ()  # misleading words that must not appear


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _run(model: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    """``run --local`` with the digits data, the given model and a workdir under the scratch dir."""

    def argv(tmp: Path, digits: Path) -> list[str]:
        resolved = model.format(tmp=tmp, digits=digits)
        args = ["run", "--local", "--workdir", str(tmp / "work")]
        if resolved:
            args += ["--model", resolved]
        args += ["--calibration-data", str(digits / "digits_calibration.npz")]
        args += ["--eval-data", str(digits / "digits_eval.npz")]
        return args + [a.format(tmp=tmp, digits=digits) for a in extra]

    return argv


def _file(name: str, data: bytes | str) -> Callable[[Path, Path], list[str]]:
    """Write ``tmp/in/name`` (adds no arguments)."""

    def argv(tmp: Path, digits: Path) -> list[str]:
        _write(tmp / "in" / name, data)
        return []

    return argv


def _folder(name: str) -> Callable[[Path, Path], list[str]]:
    """Make the directory ``tmp/in/name`` (adds no arguments)."""

    def argv(tmp: Path, digits: Path) -> list[str]:
        (tmp / "in" / name).mkdir(parents=True)
        return []

    return argv


def _npy(name: str, array: np.ndarray) -> Callable[[Path, Path], list[str]]:
    """Save ``array`` as ``tmp/in/name`` with ``np.save`` (adds no arguments)."""

    def argv(tmp: Path, digits: Path) -> list[str]:
        (tmp / "in").mkdir(parents=True, exist_ok=True)
        np.save(tmp / "in" / name, array)
        return []

    return argv


def _truncated(src: str, name: str, keep: float = 0.5) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, digits: Path) -> list[str]:
        blob = (digits / src).read_bytes()
        _write(tmp / "in" / name, blob[: int(len(blob) * keep)])
        return []

    return argv


def _both(*parts: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, digits: Path) -> list[str]:
        out: list[str] = []
        for p in parts:
            out += p(tmp, digits)
        return out

    return argv


def _data_run(flag: str) -> Callable[[Path, Path], list[str]]:
    """``run --local`` with the digits model and ``flag``'s data replaced by ``tmp/in/data.*``."""

    def argv(tmp: Path, digits: Path) -> list[str]:
        given = next(p for p in sorted((tmp / "in").iterdir()) if p.name.startswith("data"))
        cal = given if flag == "calibration" else digits / "digits_calibration.npz"
        ev = given if flag == "eval" else digits / "digits_eval.npz"
        return [
            "run",
            "--local",
            "--workdir",
            str(tmp / "work"),
            "--model",
            str(digits / "digits_cnn.pt2"),
            "--calibration-data",
            str(cal),
            "--eval-data",
            str(ev),
        ]

    return argv


def _npz_with(**arrays: np.ndarray) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, digits: Path) -> list[str]:
        (tmp / "in").mkdir(parents=True, exist_ok=True)
        np.savez(tmp / "in" / "data.npz", **arrays)  # type: ignore[arg-type]
        return []

    return argv


def _object_npz(tmp: Path, digits: Path) -> list[str]:
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    np.savez(tmp / "in" / "data.npz", x=np.array([{"a": 1}, None], dtype=object))
    return []


def _random_zip(tmp: Path, digits: Path) -> list[str]:
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp / "in" / "model.pt2", "w") as zf:
        zf.writestr("notes.txt", "not a model")
    return []


def _config_file(text: bytes | str, name: str = "bad.yaml") -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, digits: Path) -> list[str]:
        _write(tmp / "in" / name, text)
        return ["run", "--local", "--workdir", str(tmp / "work"), "--config", str(tmp / "in" / name)]

    return argv


def _cli(*args: str) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, digits: Path) -> list[str]:
        return [a.format(tmp=tmp, digits=digits) for a in args]

    return argv


_TEMPLATE = str(Path(__file__).resolve().parents[2] / "compiled" / "optimize_and_deploy.yaml")
_CLOUD = ("--project", "my-project", "--pipeline-root", "gs://my-bucket/runs", "--template", _TEMPLATE)
_UNREACHABLE = ("--api-endpoint", "http://127.0.0.1:9")  # discard port: nothing listens there
_NPZ_BYTES = bytes(range(256)) * 8


CASES: tuple[Case, ...] = (
    # -- the model file ----------------------------------------------------------------------
    Case(
        "truncated_pt2",
        _both(_truncated("digits_cnn.pt2", "model.pt2"), _run("{tmp}/in/model.pt2")),
        ("model.uri", "model.pt2", "truncated"),
    ),
    Case(
        "empty_model_file",
        _both(_file("model.pt2", b""), _run("{tmp}/in/model.pt2")),
        ("model.uri", "empty"),
        absent=("cannot tell the format",),
    ),
    Case(
        "text_file_as_model",
        _both(_file("model.txt", "weights: 1 2 3\n"), _run("{tmp}/in/model.txt")),
        ("model.uri", "text file", ".pt2"),
        absent=("cannot tell the format",),
    ),
    Case(
        "directory_as_model",
        _both(_folder("saved"), _run("{tmp}/in/saved")),
        ("model.uri", "directory", ".pt2"),
        absent=("cannot tell the format",),
    ),
    Case(
        "npy_as_model",
        _both(_npy("model.npy", np.zeros(3)), _run("{tmp}/in/model.npy")),
        ("model.uri", "numpy", ".pt2"),
        absent=("cannot tell the format",),
    ),
    Case(
        "garbage_onnx",
        _both(_file("model.onnx", _NPZ_BYTES), _run("{tmp}/in/model.onnx")),
        ("model.uri", "model.onnx", "onnx"),
    ),
    Case(
        "zip_without_a_program_as_pt2",
        _both(_random_zip, _run("{tmp}/in/model.pt2")),
        ("model.uri", "torch.export"),
    ),
    Case("missing_model", _run("{tmp}/nowhere/model.pt2"), ("model.uri", "no such file")),
    Case(
        "empty_model_uri",
        _run("", "--set", "model.uri=''"),
        ("model.uri", "empty"),
        absent=("'.'",),
    ),
    Case(
        "gs_model_without_credentials",
        _run("gs://my-bucket/model.pt2"),
        ("model.uri", "gs://my-bucket/model.pt2", "credentials"),
    ),
    # -- data files -------------------------------------------------------------------------
    Case(
        "npy_as_calibration_data",
        _both(_npy("data.npy", np.zeros((4, 1, 8, 8), np.float32)), _data_run("calibration")),
        ("data.calibration_uri", ".npy", "np.savez"),
    ),
    Case(
        "random_bytes_as_npz",
        _both(_file("data.npz", _NPZ_BYTES), _data_run("calibration")),
        ("data.calibration_uri", "not a .npz"),
        absent=("pickled",),
    ),
    Case(
        "text_file_as_data",
        _both(_file("data.csv", "0.1,0.2,0.3\n"), _data_run("eval")),
        ("data.eval_uri", "text file", "np.savez"),
        absent=("pickled",),
    ),
    Case(
        "truncated_npz",
        _both(_truncated("digits_eval.npz", "data.npz", 0.4), _data_run("eval")),
        ("data.eval_uri", "truncated"),
    ),
    Case(
        "empty_npz",
        _both(_file("data.npz", b""), _data_run("calibration")),
        ("data.calibration_uri", "empty"),
    ),
    Case(
        "object_arrays_in_npz",
        _both(_object_npz, _data_run("calibration")),
        ("data.calibration_uri", "object"),
    ),
    Case(
        "directory_as_data",
        _both(_folder("data_dir"), _data_run("eval")),
        ("data.eval_uri", "directory"),
    ),
    Case(
        "wrong_array_names",
        _both(_npz_with(images=np.zeros((4, 1, 8, 8), np.float32)), _data_run("calibration")),
        ("data.calibration_uri", "images", "np.savez"),
    ),
    Case(
        "string_arrays_as_data",
        _both(_npz_with(x=np.array([["a"] * 8] * 8)), _data_run("eval")),
        ("data.eval_uri",),
    ),
    Case(
        "text_dtype_for_a_float_input",
        _both(_npz_with(input=np.full((4, 1, 8, 8), "a")), _data_run("eval")),
        ("data.eval_uri", "'input'", "dtype", "float32"),
    ),
    Case(
        "missing_eval_data",
        _run("", "--eval-data", "{tmp}/nowhere/eval.npz"),
        ("data.eval_uri", "no such file"),
    ),
    Case(
        "registry_model_without_credentials",
        _run("projects/my-project/locations/us-central1/models/42"),
        ("model.uri", "credentials"),
    ),
    Case(
        "same_file_for_calibration_and_eval",
        _run("", "--calibration-data", "{digits}/digits_eval.npz"),
        ("data.calibration_uri", "held-out"),
    ),
    # -- the config file and --set ------------------------------------------------------------
    Case("binary_config", _config_file(b"\x80\x81\xfe\xff\x00\x13" * 50), ("--config", "bad.yaml", "text")),
    Case(
        "config_is_a_directory",
        _both(_folder("cfg"), _cli("validate", "--config", "{tmp}/in/cfg")),
        ("--config", "directory"),
    ),
    Case("missing_config", _cli("validate", "--config", "{tmp}/nope.yaml"), ("--config", "no such file")),
    Case("config_not_a_mapping", _config_file("- a\n- b\n"), ("--config", "mapping")),
    Case("config_bad_yaml", _config_file("selection: [1, 2\n"), ("--config", "yaml")),
    Case(
        "set_unclosed_list",
        _cli("validate", "--set", "canary.steps=[10, 50"),
        ("--set", "canary.steps", "yaml"),
    ),
    Case("set_below_a_value", _cli("validate", "--set", "model.uri.sub=1"), ("--set", "model.uri")),
    Case(
        "set_without_value", _cli("validate", "--set", "selection.policy"), ("--set", "section.field=value")
    ),
    Case("set_empty_key", _cli("validate", "--set", "=3"), ("--set",)),
    Case(
        "set_empty_path_part",
        _cli("validate", "--set", "selection..policy=x"),
        ("--set", "selection..policy"),
    ),
    Case(
        "set_nan_budget",
        _cli("validate", "--set", "selection.accuracy_budget=.nan"),
        ("selection.accuracy_budget", "nan", "finite"),
        absent=("less than or equal",),
    ),
    Case(
        "section_level_error_names_the_section_not_its_value",
        _cli("validate", "--set", "data.max_calibration_samples=10"),
        ("data", "max_calibration_samples 10 < min_calibration_samples 64"),
        absent=("'labels_key'",),
    ),
    Case("set_a_section_to_a_scalar", _cli("validate", "--set", "canary=5"), ("canary", "mapping")),
    # -- workdir and output paths --------------------------------------------------------------
    Case(
        "workdir_is_a_file",
        _both(_file("busy", "x"), _cli("run", "--local", "--workdir", "{tmp}/in/busy")),
        ("--workdir", "busy", "file"),
    ),
    Case(
        "workdir_under_a_file",
        _both(_file("busy", "x"), _cli("run", "--local", "--workdir", "{tmp}/in/busy/run")),
        ("--workdir", "busy", "file"),
    ),
    Case(
        "workdir_not_writable",
        _cli("run", "--local", "--workdir", "/sys/vxdeploy-run"),
        ("--workdir", "/sys/vxdeploy-run"),
    ),
    Case(
        "compile_output_under_a_file",
        _both(_file("busy", "x"), _cli("compile", "--output", "{tmp}/in/busy/p.yaml")),
        ("--output", "busy", "file"),
    ),
    Case(
        "compile_output_not_writable",
        _cli("compile", "--output", "/sys/vxdeploy/pipeline.yaml"),
        ("--output", "/sys/vxdeploy/pipeline.yaml"),
    ),
    Case("run_without_local", _cli("run"), ("--local", "vxdeploy submit")),
    Case(
        "compile_output_is_a_directory",
        _both(_folder("outdir"), _cli("compile", "--output", "{tmp}/in/outdir")),
        ("--output", "directory"),
    ),
    # -- cloud commands without an API or credentials ------------------------------------------
    Case(
        "submit_unreachable_api",
        _cli("submit", *_CLOUD, *_UNREACHABLE, "--skip-bucket-check"),
        ("127.0.0.1:9", "--api-endpoint"),
    ),
    Case(
        "submit_without_credentials",
        _cli("submit", *_CLOUD, "--skip-bucket-check"),
        ("credentials", "gcloud auth application-default login"),
    ),
    Case(
        "submit_bucket_check_without_credentials",
        _cli("submit", *_CLOUD),
        ("credentials",),
    ),
    Case(
        "schedule_create_unreachable_api",
        _cli("schedule", "create", *_CLOUD, *_UNREACHABLE, "--skip-bucket-check", "--cron", "0 3 * * *"),
        ("127.0.0.1:9", "--api-endpoint"),
    ),
    Case(
        "schedule_create_without_credentials",
        _cli("schedule", "create", *_CLOUD, "--skip-bucket-check", "--cron", "0 3 * * *"),
        ("credentials", "gcloud auth application-default login"),
    ),
    Case(
        "schedule_list_unreachable_api",
        _cli("schedule", "list", "--project", "my-project", *_UNREACHABLE),
        ("127.0.0.1:9", "--api-endpoint"),
    ),
    Case(
        "schedule_pause_without_credentials",
        _cli("schedule", "pause", "nightly", "--project", "my-project"),
        ("credentials",),
    ),
    Case(
        "schedule_cron_out_of_range",
        _cli("schedule", "create", *_CLOUD, *_UNREACHABLE, "--skip-bucket-check", "--cron", "99 25 * * *"),
        ("--cron", "99", "0-59"),
    ),
    Case(
        "schedule_end_before_start",
        _cli(
            "schedule",
            "create",
            *_CLOUD,
            *_UNREACHABLE,
            "--skip-bucket-check",
            "--cron",
            "0 3 * * *",
            "--start-time",
            "2030-01-02T00:00:00+00:00",
            "--end-time",
            "2030-01-01T00:00:00+00:00",
        ),
        ("--end-time", "--start-time"),
    ),
    Case(
        "submit_set_unclosed_list",
        _cli("submit", *_CLOUD, *_UNREACHABLE, "--set", "canary.steps=[10, 50"),
        ("--set", "canary.steps", "yaml"),
    ),
    Case(
        "schedule_cron_unknown_day_name",
        _cli(
            "schedule",
            "create",
            *_CLOUD,
            *_UNREACHABLE,
            "--skip-bucket-check",
            "--cron",
            "0 3 * * MON-SUNDAY",
        ),
        ("--cron", "day-of-week", "SUN-SAT"),
    ),
    Case(
        "schedule_cron_zero_step",
        _cli("schedule", "create", *_CLOUD, *_UNREACHABLE, "--skip-bucket-check", "--cron", "*/0 * * * *"),
        ("--cron", "minute", "step"),
    ),
    Case(
        "submit_missing_template",
        _cli("submit", *_CLOUD, *_UNREACHABLE, "--skip-bucket-check", "--template", "{tmp}/none.yaml"),
        ("--template",),
    ),
)


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch dir; temp folders go under it (to count leftovers); no cloud credentials to find."""
    scratch = tmp_path / "case"
    (scratch / "tmp").mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(scratch / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(scratch / "no-gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata server here: do not wait for one
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.chdir(scratch)
    return scratch


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_with_one_clear_message(
    case: Case, isolated: Path, digits_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = case.argv(isolated, digits_dir)

    code = main(argv)

    out, err = capfd.readouterr()
    text = (out + err).lower()
    assert code == case.code, out + err
    assert "traceback" not in text, out + err
    for fragment in case.fragments:
        assert fragment.lower() in text, (fragment, out + err)
    for word in case.absent:
        assert word.lower() not in text, (word, out + err)
    assert not (isolated / "work").exists(), "a failed run left its workdir"
    assert not _leftovers(isolated / "tmp"), f"temp folders left: {_leftovers(isolated / 'tmp')}"


def _leftovers(tmp: Path) -> list[str]:
    """What is left in the temp folder, besides torch's own compile cache (kept across runs on purpose)."""
    return sorted(name for name in os.listdir(tmp) if not name.startswith("torchinductor_"))


def test_the_table_covers_the_runtime_half_of_issue_12() -> None:
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_bug_exits_1_with_one_line_and_the_traceback_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import vxdeploy.pipelines.cli as cli

    def broken(args: object) -> int:
        raise KeyError("selection")  # what a bug in a command looks like from outside

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "cmd_validate", broken)

    code = main(["validate"])

    err = capfd.readouterr().err
    logged = sorted((tmp_path / "vxdeploy" / "errors").iterdir())
    assert code == 1
    assert err.count("\n") == 1 and "internal error: KeyError" in err and str(logged[0]) in err
    assert "Traceback" in logged[0].read_text() and "Traceback" not in err
