"""KFP component: the run's report (HTML with pictures, Markdown, JSON) from the stage reports."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Output

from vxdeploy.components.common.images import RUNNER_IMAGE


@dsl.component(base_image=RUNNER_IMAGE, install_kfp_package=False)
def write_run_report(
    run_id: str,
    selection: dict,
    html: Output[HTML],
    markdown: Output[Markdown],
    run_report: Output[Artifact],
    validate_report: Input[Artifact] = None,  # type: ignore[assignment]
    intake_report: Input[Artifact] = None,  # type: ignore[assignment]
    export_report: Input[Artifact] = None,  # type: ignore[assignment]
    calibrate_report: Input[Artifact] = None,  # type: ignore[assignment]
    compile_report: Input[Artifact] = None,  # type: ignore[assignment]
    select_report: Input[Artifact] = None,  # type: ignore[assignment]
    package_report: Input[Artifact] = None,  # type: ignore[assignment]
    serve_check_report: Input[Artifact] = None,  # type: ignore[assignment]
    deploy_report: Input[Artifact] = None,  # type: ignore[assignment]
    canary_report: Input[Artifact] = None,  # type: ignore[assignment]
    monitoring_report: Input[Artifact] = None,  # type: ignore[assignment]
) -> None:
    """Writes the run's report: the page `vxdeploy run --local` writes as report.html, for the console.

    Args:
        run_id: The pipeline run's name.
        selection: The selection section (its accuracy budget is drawn in the accuracy picture).
        html: The report with its pictures (latency vs batch size, accuracy vs throughput, the
            serve check's sweep, the canary steps): the Vertex AI console renders it.
        markdown: The same report as Markdown.
        run_report: Every figure the stages measured (report.json, with its schema_version).
        validate_report: The validate stage's report.
        intake_report: The intake stage's report.
        export_report: The export stage's report (parity per output).
        calibrate_report: The INT8 calibration stage's report.
        compile_report: The compile stage's report (built and skipped candidates).
        select_report: The selection stage's report (every candidate at every batch size).
        package_report: The packaging stage's report.
        serve_check_report: The serve check's report (substitutions, sweep, served cost).
        deploy_report: The deploy stage's report, when the run deployed.
        canary_report: The canary's report, when the run deployed.
        monitoring_report: The monitoring stage's report, when the run deployed.
    """
    from vxdeploy.components.report import stage

    stage.write_run_report(
        {
            "validate": validate_report,
            "intake": intake_report,
            "export": export_report,
            "calibrate": calibrate_report,
            "compile": compile_report,
            "select": select_report,
            "package": package_report,
            "serve_check": serve_check_report,
            "deploy": deploy_report,
            "canary": canary_report,
            "monitoring": monitoring_report,
        },
        run_id=run_id,
        selection=selection,
        html=html,
        markdown=markdown,
        run_report=run_report,
    )
