"""The ``vxdeploy`` command line: parse arguments, call the package's functions, print results."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.common.config import RunConfig, load_config
from components.common.errors import UserError, VxdeployError

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
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(
                f"--set {item!r}: use section.field=value, e.g. --set selection.policy=min_latency"
            )
        import yaml

        overrides[key.strip()] = yaml.safe_load(value)
    return load_config(getattr(args, "config", None), overrides)


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(Path(args.output))
    print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "vxdeploy run executes on this machine and needs --local; use `vxdeploy submit` for Vertex AI.",
            file=sys.stderr,
        )
        return 2
    from pipelines.local_run import default_workdir, print_result, run_local

    config = _config_from_args(args)
    workdir = Path(args.workdir) if args.workdir else default_workdir()
    print(f"vxdeploy: running locally in {workdir}", flush=True)
    result = run_local(config, workdir)
    print_result(result)
    return 0 if result.succeeded else 1


def cmd_validate(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    print(f"{args.config or 'defaults'}: valid ({len(config.to_pipeline_parameters())} sections)")
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
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run the pipeline (on this machine with --local)")
    p.add_argument("--local", action="store_true", help="run under kfp.local on this machine")
    p.add_argument("--workdir", help="where outputs go (default ./vxdeploy-runs/<timestamp>/)")
    p.add_argument("--api-endpoint", help="Vertex AI API endpoint (e.g. a local fake); enables deployment")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a run config and exit")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    _add_cloud_commands(sub)
    return parser


def _add_cloud_commands(sub: Any) -> None:
    from pipelines import schedule, submit

    submit.add_submit_arguments(sub)
    schedule.add_schedule_arguments(sub)


def main(argv: Sequence[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
