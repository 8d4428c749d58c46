"""The ``vxdeploy`` command line: parse arguments, call the package's functions, print results."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vxdeploy.components.common.config import RunConfig, load_config, parse_set_override
from vxdeploy.components.common.errors import ConfigError, UserError, VxdeployError

DEFAULT_COMPILED = Path("compiled/optimize_and_deploy.yaml")


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "model", None):
        overrides["model.uri"] = args.model
    if getattr(args, "calibration_data", None):
        overrides["data.calibration_uri"] = args.calibration_data
    if getattr(args, "eval_data", None):
        overrides["data.eval_uri"] = args.eval_data
    if getattr(args, "api_endpoint", None):
        overrides["deployment.api_endpoint"] = args.api_endpoint
        overrides["deployment.enabled"] = True
    for item in getattr(args, "set", None) or []:
        key, value = parse_set_override(item)
        overrides[key] = value
    return load_config(getattr(args, "config", None), overrides)


def _check_output_file(path: Path, flag: str) -> None:
    """Say clearly why a file cannot be written at ``path`` (a folder there, a file above it)."""
    target = path.expanduser().absolute()
    if target.is_dir():
        raise ConfigError(flag, str(path), "is a directory; give a file name, e.g. compiled/pipeline.yaml")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(flag, str(path), f"{str(parent)!r} is a file, so nothing can be written under it")


def cmd_compile(args: argparse.Namespace) -> int:
    from vxdeploy.pipelines.compile import compile_pipeline

    _check_output_file(Path(args.output), "--output")
    try:
        path = compile_pipeline(Path(args.output), registry=args.registry)
    except OSError as exc:
        raise ConfigError(
            "--output", args.output, f"cannot be written ({exc.strerror or exc}); give a writable path"
        ) from None
    print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "vxdeploy run executes on this machine and needs --local; use `vxdeploy submit` for Vertex AI.",
            file=sys.stderr,
        )
        return 2
    from vxdeploy.components.common.interrupts import signals_raise
    from vxdeploy.pipelines.local_run import check_workdir, default_workdir, print_result, run_local

    workdir = Path(args.workdir) if args.workdir else default_workdir()
    check_workdir(workdir)
    config = _config_from_args(args)
    print(f"vxdeploy: running locally in {workdir}", flush=True)
    with signals_raise():  # SIGTERM unwinds like Ctrl-C: temp folders go, the report says so
        result = run_local(config, workdir, verbose=args.verbose)
    print_result(result)
    return result.exit_code


def _validated_subject(args: argparse.Namespace) -> str:
    """What ``vxdeploy validate`` was asked to check, in words (config file, model, data, overrides)."""
    parts = [f"config {args.config}" if args.config else "default config"]
    named = (("model", "model"), ("calibration_data", "calibration data"), ("eval_data", "eval data"))
    for flag, label in named:
        if getattr(args, flag, None):
            parts.append(f"{label} {getattr(args, flag)}")
    if args.set:
        parts.append(f"{len(args.set)} --set override(s)")
    return ", ".join(parts)


def cmd_report(args: argparse.Namespace) -> int:
    from vxdeploy.pipelines.report import rebuild_reports

    for kind, path in rebuild_reports(args.run_dir).items():
        print(f"wrote {kind}: {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from vxdeploy.components.validate.checks import validate_run

    config = _config_from_args(args)
    report = validate_run(config, subject=_validated_subject(args), check_task_images=args.images)
    report.raise_if_failed()
    for check in report.checks:
        print(f"  {check.status:<7} {check.name}" + (f": {check.detail}" if check.detail else ""))
    print(report.summary())
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (see docs/configuration.md)")
    p.add_argument("--model", help="model file or URI (overrides model.uri)")
    p.add_argument("--calibration-data", help=".npz calibration data (overrides data.calibration_uri)")
    p.add_argument("--eval-data", help=".npz evaluation data (overrides data.eval_uri)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override one config field")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vxdeploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile the pipeline to YAML for Vertex AI")
    p.add_argument("--output", default=str(DEFAULT_COMPILED))
    p.add_argument(
        "--registry",
        help="registry prefix the images were pushed to by `make images` "
        "(default: $VXDEPLOY_REGISTRY or the built-in one), e.g. us-docker.pkg.dev/PROJECT/vxdeploy",
    )
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run the pipeline (on this machine with --local)")
    p.add_argument("--local", action="store_true", help="run under kfp.local on this machine")
    p.add_argument("--workdir", help="where outputs go (default ./vxdeploy-runs/<timestamp>/)")
    p.add_argument("--api-endpoint", help="Vertex AI API endpoint (e.g. a local fake); enables deployment")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="stream every task's output as it runs (default: a line per stage; output in <workdir>/logs/)",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "validate", help="check a run config, its model and data (and cloud prerequisites) and exit"
    )
    p.add_argument(
        "--images",
        action="store_true",
        help="also check that the pipeline's task images exist in the registry (before `vxdeploy submit`)",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "report", help="rebuild report.json, report.md and report.html from a local run's stage reports"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's --workdir (it holds pipeline_root/)")
    p.set_defaults(func=cmd_report)

    _add_cloud_commands(sub)
    return parser


# The optional distributions a command may miss, by top-level module: what to install for them.
_EXTRA_OF_MODULE = {
    **dict.fromkeys(("kfp", "google", "google_cloud_pipeline_components"), "cloud"),
    **dict.fromkeys(
        ("torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter_common", "sklearn", "numpy"), "all"
    ),
    **dict.fromkeys(("tritonclient", "matplotlib", "markdown_it", "rich"), "all"),
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """What to install when ``exc`` is a missing optional dependency (None for any other module)."""
    extra = _EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
    if extra is None:
        return None
    return (
        f"this command needs the Python module {exc.name!r}, which this installation lacks; "
        f"install it with `pip install 'vxdeploy[{extra}]'`"
    )


def _add_cloud_commands(sub: Any) -> None:
    try:
        from vxdeploy.pipelines import rollback, schedule, submit
    except ModuleNotFoundError as exc:  # core install: the commands are there, and say what they need
        if missing_extra(exc) is None:
            raise
        for name in ("submit", "schedule", "rollback"):
            help_ = f"{name} (needs `pip install 'vxdeploy[cloud]'`)"
            p = sub.add_parser(name, help=help_, add_help=False, prefix_chars="\0")  # takes any argument
            p.add_argument("args", nargs="*")
            p.set_defaults(func=lambda _args, missing=exc: _raise(missing))
        return

    submit.add_submit_arguments(sub)
    schedule.add_schedule_arguments(sub)
    rollback.add_rollback_arguments(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: 0 done, 2 a user error (one message), 1 an internal error, 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"vxdeploy: error: {exc}", file=sys.stderr)
        return 2
    except VxdeployError as exc:
        print(f"vxdeploy: internal error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vxdeploy: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            return _internal_error(exc)
        print(f"vxdeploy: error: {hint}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line here, the traceback in a file
        return _internal_error(exc)


def _raise(exc: BaseException) -> int:
    raise exc


def _internal_error(exc: BaseException) -> int:
    log = _log_traceback(exc)
    print(
        f"vxdeploy: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
        f"(a bug in vxdeploy or its environment; traceback in {log})",
        file=sys.stderr,
    )
    return 1


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def _log_traceback(exc: BaseException) -> Path:
    """Write ``exc``'s traceback under ``$XDG_CACHE_HOME/vxdeploy/errors`` (or the temp folder)."""
    import datetime as dt
    import os
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vxdeploy" / "errors"
    for folder in (base, Path(tempfile.gettempdir())):
        path = folder / f"traceback-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path
        except OSError:
            continue
    return Path("(could not be written)")


def entry() -> None:
    """The ``vxdeploy`` executable: :func:`main`, then exit with its status.

    An interrupted run has stopped its tasks and servers and written its report by the time
    :func:`main` returns; what is left is the interpreter's teardown, which takes seconds with
    torch loaded and would push the stop past the 5 s a user waits for. So that exit skips it.
    """
    code = main()
    if code == 130:
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
