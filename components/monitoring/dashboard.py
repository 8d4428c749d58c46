"""The endpoint's Cloud Monitoring dashboard: latency, traffic, errors and GPU (or CPU) per deployed model.

The overview charts draw one line per deployed model (series grouped by ``deployed_model_id``),
so a model deployed later appears without a change; each deployed model vxdeploy knows of also
gets its own row of charts. The alert policies are shown at the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.cloud import monitoring_dashboard_v1 as dash
from google.protobuf import duration_pb2

from vxdeploy.components.common.config import MonitoringConfig
from vxdeploy.components.monitoring import generation_metrics as gm
from vxdeploy.components.monitoring import vertex_metrics as vm
from vxdeploy.components.monitoring.policies import ServingShape
from vxdeploy.components.monitoring.vertex_metrics import EndpointRef

COLUMNS = 48
_CHART_ALIGNMENT_S = 60
_LEGEND = "${metric.labels.deployed_model_id}"
Aligner = dash.Aggregation.Aligner
Reducer = dash.Aggregation.Reducer


@dataclass(frozen=True)
class _Chart:
    title: str
    y_label: str
    data_sets: list[dash.XyChart.DataSet]
    thresholds: list[dash.Threshold]


def dashboard_display_name(endpoint: EndpointRef, endpoint_display_name: str = "") -> str:
    """The dashboard's title: the endpoint's display name and id."""
    if endpoint_display_name:
        return f"vxdeploy: {endpoint_display_name} (endpoint {endpoint.endpoint_id})"
    return f"vxdeploy: endpoint {endpoint.endpoint_id}"


def build_dashboard(
    endpoint: EndpointRef,
    cfg: MonitoringConfig,
    shape: ServingShape,
    labels: dict[str, str],
    *,
    deployed_model_ids: Sequence[str] = (),
    alert_policy_names: Sequence[str] = (),
    endpoint_display_name: str = "",
    generation: bool = False,
) -> dash.Dashboard:
    """The dashboard the endpoint should have (a generation model's gets TTFT and tokens/s charts).

    Args:
        endpoint: The endpoint shown.
        cfg: Thresholds, drawn as lines on the charts.
        shape: GPU serving shows GPU duty cycle and memory, CPU serving CPU utilization.
        labels: Labels marking the dashboard as vxdeploy's for this endpoint.
        deployed_model_ids: Deployed models that get a row of their own.
        alert_policy_names: Alert policies shown as alert charts at the top.
        endpoint_display_name: For the title.
        generation: The endpoint serves a generation model: a row of time-to-first-token, decode speed
            and whole-generation charts per deployed model.
    """
    tiles: list[dash.MosaicLayout.Tile] = []
    y = 0

    def place(widgets: Sequence[dash.Widget], height: int) -> None:
        nonlocal y
        width = COLUMNS // max(len(widgets), 1)
        for i, widget in enumerate(widgets):
            tiles.append(
                dash.MosaicLayout.Tile(x_pos=i * width, y_pos=y, width=width, height=height, widget=widget)
            )
        y += height

    place([_intro(endpoint, cfg)], 4)
    if alert_policy_names:
        place(
            [dash.Widget(title="Alert", alert_chart=dash.AlertChart(name=n)) for n in alert_policy_names], 8
        )
    place([_header("All deployed models", "One line per deployed model.")], 2)
    overview = _charts(endpoint, cfg, shape, deployed_model_id="")
    for pair in (overview[0:2], overview[2:4], overview[4:6]):
        place([_xy(c) for c in pair], 16)
    if generation:
        place([_header("Generation", "Streamed captions, one line per deployed model.")], 2)
        place([_xy(c) for c in _generation_charts(endpoint, cfg, deployed_model_id="")], 16)
    for dm_id in deployed_model_ids:
        place([_header(f"Deployed model {dm_id}", "")], 2)
        place([_xy(c) for c in _charts(endpoint, cfg, shape, deployed_model_id=dm_id)[:4]], 12)
        if generation:
            place([_xy(c) for c in _generation_charts(endpoint, cfg, deployed_model_id=dm_id)], 12)
    return dash.Dashboard(
        display_name=dashboard_display_name(endpoint, endpoint_display_name),
        labels=labels,
        mosaic_layout=dash.MosaicLayout(columns=COLUMNS, tiles=tiles),
    )


def _charts(
    endpoint: EndpointRef, cfg: MonitoringConfig, shape: ServingShape, deployed_model_id: str
) -> list[_Chart]:
    """Latency, traffic, error rate, GPU/CPU, then replicas and GPU memory (or response codes)."""

    def filt(metric: str, extra: str = "") -> str:
        return vm.endpoint_filter(metric, endpoint, deployed_model_id, extra)

    group = [] if deployed_model_id else [vm.DEPLOYED_MODEL_LABEL]
    latency = _Chart(
        "p99 / p50 latency (ms)",
        "ms",
        [
            _series(
                filt(vm.PREDICTION_LATENCIES, vm.TOTAL_LATENCY),
                Aligner.ALIGN_PERCENTILE_99,
                Reducer.REDUCE_MAX,
                group,
                "p99 ",
            ),
            _series(
                filt(vm.PREDICTION_LATENCIES, vm.TOTAL_LATENCY),
                Aligner.ALIGN_PERCENTILE_50,
                Reducer.REDUCE_MAX,
                group,
                "p50 ",
            ),
        ],
        [_threshold(cfg.p99_latency_ms, "p99 alert")],
    )
    traffic = _Chart(
        "Requests per second",
        "requests/s",
        [_series(filt(vm.RESPONSE_COUNT), Aligner.ALIGN_RATE, Reducer.REDUCE_SUM, group)],
        [],
    )
    errors = _Chart(
        "Error rate (errors / responses)",
        "fraction",
        [_ratio(filt(vm.ERROR_COUNT), filt(vm.RESPONSE_COUNT), group)],
        [_threshold(cfg.error_rate, "error-rate alert")],
    )
    if shape.accelerator_type:
        usage = _Chart(
            f"GPU duty cycle ({shape.accelerator_type})",
            "fraction busy",
            [_series(filt(vm.ACCELERATOR_DUTY_CYCLE), Aligner.ALIGN_MEAN, Reducer.REDUCE_MEAN, group)],
            [_threshold(cfg.gpu_duty_cycle / 100, "saturation alert")],
        )
        extra = _Chart(
            "GPU memory used",
            "bytes",
            [_series(filt(vm.ACCELERATOR_MEMORY_USED), Aligner.ALIGN_MEAN, Reducer.REDUCE_MAX, group)],
            [],
        )
    else:
        usage = _Chart(
            "CPU utilization",
            "fraction",
            [_series(filt(vm.CPU_UTILIZATION), Aligner.ALIGN_MEAN, Reducer.REDUCE_MEAN, group)],
            [_threshold(cfg.cpu_utilization / 100, "saturation alert")],
        )
        extra = _Chart(
            "Responses by response code",
            "responses/s",
            [
                _series(
                    filt(vm.RESPONSE_COUNT),
                    Aligner.ALIGN_RATE,
                    Reducer.REDUCE_SUM,
                    [*group, "metric.label.response_code"],
                    legend="${metric.labels.response_code} ",
                )
            ],
            [],
        )
    replicas = _Chart(
        "Replicas",
        "replicas",
        [_series(filt(vm.REPLICAS), Aligner.ALIGN_MEAN, Reducer.REDUCE_SUM, group)],
        [_threshold(float(shape.max_replicas), "max replicas")] if shape.max_replicas else [],
    )
    return [latency, traffic, errors, usage, replicas, extra]


def _generation_charts(endpoint: EndpointRef, cfg: MonitoringConfig, deployed_model_id: str) -> list[_Chart]:
    """Time to first token, decode speed and whole-generation time (the custom generation metrics)."""

    def filt(metric: str) -> str:
        return gm.generation_filter(metric, endpoint, deployed_model_id)

    group = [] if deployed_model_id else [vm.DEPLOYED_MODEL_LABEL]
    ttft = _Chart(
        "Time to first token p95 / p50 (ms)",
        "ms",
        [
            _series(
                filt(gm.TIME_TO_FIRST_TOKEN), Aligner.ALIGN_PERCENTILE_95, Reducer.REDUCE_MAX, group, "p95 "
            ),
            _series(
                filt(gm.TIME_TO_FIRST_TOKEN), Aligner.ALIGN_PERCENTILE_50, Reducer.REDUCE_MAX, group, "p50 "
            ),
        ],
        [_threshold(cfg.ttft_ms, "TTFT alert")],
    )
    tokens = _Chart(
        "Decode speed, median (tokens/s per stream)",
        "tokens/s",
        [_series(filt(gm.TOKENS_PER_SECOND), Aligner.ALIGN_PERCENTILE_50, Reducer.REDUCE_MIN, group)],
        [
            dash.Threshold(
                label="tokens/s alert",
                value=cfg.min_tokens_per_s,
                color=dash.Threshold.Color.RED,
                direction=dash.Threshold.Direction.BELOW,
            )
        ],
    )
    whole = _Chart(
        "Whole generation p95 / p50 (ms)",
        "ms",
        [
            _series(
                filt(gm.GENERATION_LATENCIES), Aligner.ALIGN_PERCENTILE_95, Reducer.REDUCE_MAX, group, "p95 "
            ),
            _series(
                filt(gm.GENERATION_LATENCIES), Aligner.ALIGN_PERCENTILE_50, Reducer.REDUCE_MAX, group, "p50 "
            ),
        ],
        [],
    )
    return [ttft, tokens, whole]


def _aggregation(aligner: int, reducer: int, group: Sequence[str]) -> dash.Aggregation:
    return dash.Aggregation(
        alignment_period=duration_pb2.Duration(seconds=_CHART_ALIGNMENT_S),
        per_series_aligner=aligner,
        cross_series_reducer=reducer,
        group_by_fields=list(group),
    )


def _series(
    filter_: str, aligner: int, reducer: int, group: Sequence[str], legend: str = ""
) -> dash.XyChart.DataSet:
    return dash.XyChart.DataSet(
        time_series_query=dash.TimeSeriesQuery(
            time_series_filter=dash.TimeSeriesFilter(
                filter=filter_, aggregation=_aggregation(aligner, reducer, group)
            )
        ),
        plot_type=dash.XyChart.DataSet.PlotType.LINE,
        legend_template=(legend + _LEGEND) if group else legend.strip(),
    )


def _ratio(numerator: str, denominator: str, group: Sequence[str]) -> dash.XyChart.DataSet:
    agg = _aggregation(Aligner.ALIGN_RATE, Reducer.REDUCE_SUM, group)
    return dash.XyChart.DataSet(
        time_series_query=dash.TimeSeriesQuery(
            time_series_filter_ratio=dash.TimeSeriesFilterRatio(
                numerator=dash.TimeSeriesFilterRatio.RatioPart(filter=numerator, aggregation=agg),
                denominator=dash.TimeSeriesFilterRatio.RatioPart(filter=denominator, aggregation=agg),
            )
        ),
        plot_type=dash.XyChart.DataSet.PlotType.LINE,
        legend_template=_LEGEND if group else "",
    )


def _threshold(value: float, label: str) -> dash.Threshold:
    return dash.Threshold(
        label=label, value=value, color=dash.Threshold.Color.RED, direction=dash.Threshold.Direction.ABOVE
    )


def _xy(chart: _Chart) -> dash.Widget:
    return dash.Widget(
        title=chart.title,
        xy_chart=dash.XyChart(
            data_sets=chart.data_sets,
            thresholds=chart.thresholds,
            y_axis=dash.XyChart.Axis(label=chart.y_label, scale=dash.XyChart.Axis.Scale.LINEAR),
        ),
    )


def _header(title: str, subtitle: str) -> dash.Widget:
    return dash.Widget(title=title, section_header=dash.SectionHeader(subtitle=subtitle, divider_below=True))


def _intro(endpoint: EndpointRef, cfg: MonitoringConfig) -> dash.Widget:
    content = (
        f"Vertex AI endpoint `{endpoint.resource_name}`. Alerts: p99 latency above "
        f"{cfg.p99_latency_ms:g} ms, error rate above {cfg.error_rate:.2%}, saturation. "
        "**Managed by vxdeploy**: the next run overwrites edits made here."
    )
    return dash.Widget(title="About", text=dash.Text(content=content, format_=dash.Text.Format.MARKDOWN))
