"""setup_monitoring and the monitoring stage: the real Cloud Monitoring clients against loopback fakes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.cloud import monitoring_v3

from tests.fakes.dashboards import FakeDashboards
from tests.fakes.monitoring import FakeMonitoring
from vxdeploy.components.cloud.monitoring import MonitoringClients, monitoring_clients
from vxdeploy.components.cloud.retry import RetryPolicy
from vxdeploy.components.common.artifacts import ArtifactMetadataError
from vxdeploy.components.common.config import MonitoringConfig, parse_section
from vxdeploy.components.common.errors import CloudOperationError, ConfigError
from vxdeploy.components.monitoring import stage
from vxdeploy.components.monitoring.policies import ServingShape
from vxdeploy.components.monitoring.reconcile import MonitoringResult, setup_monitoring
from vxdeploy.components.monitoring.resources import managed_labels

PROJECT = "vx-project"
ENDPOINT = f"projects/{PROJECT}/locations/us-central1/endpoints/4242"
OTHER_ENDPOINT = f"projects/{PROJECT}/locations/us-central1/endpoints/5151"
GPU = ServingShape(accelerator_type="NVIDIA_L4", max_replicas=3)
FAST = RetryPolicy(attempts=4, initial_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture()
def fake() -> Iterator[FakeMonitoring]:
    with FakeMonitoring() as f:
        yield f


@pytest.fixture()
def dashboards() -> Iterator[FakeDashboards]:
    with FakeDashboards() as f:
        yield f


@pytest.fixture()
def clients(fake: FakeMonitoring, dashboards: FakeDashboards) -> Iterator[MonitoringClients]:
    with monitoring_clients(fake.address, dashboards_endpoint=dashboards.address) as c:
        yield c


def config(**overrides: Any) -> MonitoringConfig:
    return parse_section(
        MonitoringConfig, {"notification_emails": ["oncall@example.com"], **overrides}, "monitoring"
    )


def run_setup(
    clients: MonitoringClients, cfg: MonitoringConfig | None = None, endpoint: str = ENDPOINT, **kwargs: Any
) -> MonitoringResult:
    kwargs.setdefault("shape", GPU)
    return setup_monitoring(endpoint, cfg or config(), PROJECT, clients=clients, retry=FAST, **kwargs)


def policies_by_role(fake: FakeMonitoring) -> dict[str, monitoring_v3.AlertPolicy]:
    return {p.user_labels["vxdeploy_alert"]: p for p in fake.alert_policies(PROJECT)}


def threshold(policy: monitoring_v3.AlertPolicy, index: int = 0) -> Any:
    return policy.conditions[index].condition_threshold


# ------------------------------------------------------------------------------------- first run
def test_first_run_creates_three_policies_an_email_channel_and_a_dashboard(
    fake: FakeMonitoring, dashboards: FakeDashboards, clients: MonitoringClients
) -> None:
    # Given an endpoint with no monitoring yet

    # When monitoring is set up
    result = run_setup(clients)

    # Then three alert policies notify one new e-mail channel, and one dashboard exists, all created
    channel = fake.notification_channels(PROJECT)
    assert (
        sorted(policies_by_role(fake)),
        [(c.type_, c.labels["email_address"]) for c in channel],
        {tuple(p.notification_channels) for p in fake.alert_policies(PROJECT)},
        len(dashboards.dashboards(PROJECT)),
        result.counts()["created"],
    ) == (
        ["error-rate", "p99-latency", "saturation"],
        [("email", "oncall@example.com")],
        {(channel[0].name,)},
        1,
        5,
    )


def test_latency_policy_alerts_on_the_p99_of_total_latency_per_deployed_model(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given a p99 budget of 500 ms
    # When monitoring is set up
    run_setup(clients, config(p99_latency_ms=500))

    # Then the condition reads prediction_latencies (total) of this endpoint, p99-aligned, per deployed model
    cond = threshold(policies_by_role(fake)["p99-latency"])
    agg = cond.aggregations[0]
    assert (
        'metric.type = "aiplatform.googleapis.com/prediction/online/prediction_latencies"' in cond.filter,
        'resource.labels.endpoint_id = "4242"' in cond.filter,
        'metric.labels.latency_type = "total"' in cond.filter,
        agg.per_series_aligner,
        list(agg.group_by_fields),
        cond.comparison,
        cond.threshold_value,
    ) == (
        True,
        True,
        True,
        monitoring_v3.Aggregation.Aligner.ALIGN_PERCENTILE_99,
        ["metric.label.deployed_model_id"],
        monitoring_v3.ComparisonType.COMPARISON_GT,
        500,
    )


def test_error_policy_is_a_ratio_of_error_count_to_response_count(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given an error-rate budget of 2%
    # When monitoring is set up
    run_setup(clients, config(error_rate=0.02))

    # Then the condition divides the error_count rate by the response_count rate, per deployed model
    cond = threshold(policies_by_role(fake)["error-rate"])
    assert (
        "prediction/online/error_count" in cond.filter,
        "prediction/online/response_count" in cond.denominator_filter,
        cond.aggregations[0].per_series_aligner,
        list(cond.denominator_aggregations[0].group_by_fields),
        cond.threshold_value,
    ) == (
        True,
        True,
        monitoring_v3.Aggregation.Aligner.ALIGN_RATE,
        ["metric.label.deployed_model_id"],
        0.02,
    )


def test_gpu_serving_alerts_on_duty_cycle_as_a_fraction_and_on_replicas_at_the_maximum(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given GPU serving with at most 3 replicas and a 90% duty-cycle limit
    # When monitoring is set up
    run_setup(clients, config(gpu_duty_cycle=90), shape=GPU)

    # Then saturation fires on duty cycle > 0.9 (Vertex AI writes a fraction) or replicas >= 3
    policy = policies_by_role(fake)["saturation"]
    assert [
        (
            c.condition_threshold.filter.split('"')[1].rsplit("/", 2)[-2:],
            c.condition_threshold.threshold_value,
        )
        for c in policy.conditions
    ] == [(["accelerator", "duty_cycle"], 0.9), (["online", "replicas"], 3.0)]


def test_cpu_serving_alerts_on_cpu_utilization_instead_of_gpu(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given CPU serving
    # When monitoring is set up
    run_setup(clients, config(cpu_utilization=80), shape=ServingShape(max_replicas=0))

    # Then the only saturation condition is CPU utilization above 0.8
    policy = policies_by_role(fake)["saturation"]
    assert [
        (
            c.condition_threshold.filter.split('"')[1].endswith("/cpu/utilization"),
            c.condition_threshold.threshold_value,
        )
        for c in policy.conditions
    ] == [(True, 0.8)]


def test_dashboard_has_latency_traffic_errors_and_gpu_charts_per_deployed_model(
    dashboards: FakeDashboards, clients: MonitoringClients
) -> None:
    # Given a deployment whose new deployed model is 777
    # When monitoring is set up
    run_setup(clients, deployed_model_ids=["777"])

    # Then the overview charts draw one line per deployed model, and model 777 has its own row
    tiles = dashboards.dashboards(PROJECT)[0].mosaic_layout.tiles
    titles = [t.widget.title for t in tiles]
    grouped = [
        t.widget.title
        for t in tiles
        if "xy_chart" in t.widget
        and list(
            t.widget.xy_chart.data_sets[0].time_series_query.time_series_filter.aggregation.group_by_fields
        )
        == ["metric.label.deployed_model_id"]
    ]
    assert (
        {"p99 / p50 latency (ms)", "Requests per second", "GPU duty cycle (NVIDIA_L4)"} <= set(grouped),
        "Error rate (errors / responses)" in titles,
        "Deployed model 777" in titles,
        sum(1 for t in tiles if "alert_chart" in t.widget),
    ) == (True, True, True, 3)


# ------------------------------------------------------------------------------------ idempotence
def test_rerun_changes_nothing_and_duplicates_nothing(
    fake: FakeMonitoring, dashboards: FakeDashboards, clients: MonitoringClients
) -> None:
    # Given monitoring set up once
    run_setup(clients)
    first = ([p.name for p in fake.alert_policies()], [c.name for c in fake.notification_channels()])
    writes_before = _writes(fake, dashboards)

    # When the same setup runs again
    again = run_setup(clients)

    # Then the same resources exist, none was written, and the run says so
    assert (
        ([p.name for p in fake.alert_policies()], [c.name for c in fake.notification_channels()]),
        len(dashboards.dashboards()),
        _writes(fake, dashboards) - writes_before,
        again.counts(),
    ) == (first, 1, 0, {"created": 0, "updated": 0, "unchanged": 4, "found": 1, "deleted": 0})


def test_changed_threshold_updates_the_policy_in_place(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given monitoring set up with a 500 ms p99 budget
    run_setup(clients, config(p99_latency_ms=500))
    before = policies_by_role(fake)["p99-latency"]

    # When the budget becomes 250 ms and setup runs again
    result = run_setup(clients, config(p99_latency_ms=250))

    # Then the same policy now holds 250, and only it was updated
    after = policies_by_role(fake)["p99-latency"]
    assert (
        after.name,
        threshold(after).threshold_value,
        len(fake.alert_policies()),
        sorted((p.display_name.split(": ")[1], p.action) for p in result.policies),
    ) == (
        before.name,
        250,
        3,
        [("error rate", "unchanged"), ("p99 latency", "updated"), ("saturation", "unchanged")],
    )


def test_changed_threshold_updates_the_dashboard_in_place(
    dashboards: FakeDashboards, clients: MonitoringClients
) -> None:
    # Given a dashboard drawn with a 500 ms latency threshold line
    run_setup(clients, config(p99_latency_ms=500))
    name = dashboards.dashboards()[0].name

    # When the budget becomes 250 ms and setup runs again
    run_setup(clients, config(p99_latency_ms=250))

    # Then the one dashboard, same name, draws the line at 250
    [dash] = dashboards.dashboards()
    lines = [
        th.value
        for t in dash.mosaic_layout.tiles
        if "xy_chart" in t.widget
        for th in t.widget.xy_chart.thresholds
    ]
    assert (dash.name, 250 in lines, 500 in lines) == (name, True, False)


def test_email_channel_is_created_once_and_shared_by_endpoints(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given monitoring of one endpoint alerting oncall@example.com
    run_setup(clients)

    # When a second endpoint alerts the same address (in other case)
    second = run_setup(clients, config(notification_emails=["OnCall@Example.com"]), endpoint=OTHER_ENDPOINT)

    # Then one e-mail channel exists and both endpoints' policies notify it
    [channel] = fake.notification_channels()
    assert (
        [c.action for c in second.channels],
        {tuple(p.notification_channels) for p in fake.alert_policies()},
        len(fake.alert_policies()),
    ) == (["found"], {(channel.name,)}, 6)


def test_existing_channel_given_by_id_is_notified(fake: FakeMonitoring, clients: MonitoringClients) -> None:
    # Given a Slack channel someone made earlier
    slack = fake.seed_notification_channel(PROJECT, "slack", {"channel_name": "#ml-oncall"}, "ML on-call")

    # When monitoring is set up with that channel's bare id and no e-mail
    run_setup(clients, config(notification_emails=[], notification_channels=[slack.rsplit("/", 1)[1]]))

    # Then every policy notifies it and no channel was created
    assert (
        {tuple(p.notification_channels) for p in fake.alert_policies()},
        len(fake.notification_channels()),
    ) == ({(slack,)}, 1)


def test_unknown_channel_id_is_refused_naming_the_field(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given a channel id that does not exist
    cfg = config(notification_channels=["987654321"])

    # When monitoring is set up
    with pytest.raises(ConfigError) as err:
        run_setup(clients, cfg)

    # Then the error names the field and the value, and no policy was made
    assert (
        "monitoring.notification_channels" in str(err.value),
        "987654321" in str(err.value),
        fake.alert_policies(),
    ) == (
        True,
        True,
        [],
    )


def test_duplicate_policy_left_by_an_interrupted_run_is_deleted(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given monitoring set up, and a second copy of the latency policy (a crash between create and answer)
    run_setup(clients)
    original = policies_by_role(fake)["p99-latency"]
    copy = monitoring_v3.AlertPolicy(original)
    copy.name = ""
    for c in copy.conditions:
        c.name = ""
    clients.alert_policies.create_alert_policy(name=f"projects/{PROJECT}", alert_policy=copy)

    # When setup runs again
    result = run_setup(clients)

    # Then one latency policy is left, the older one, and the report names the deleted copy
    latency = [p for p in fake.alert_policies() if p.user_labels["vxdeploy_alert"] == "p99-latency"]
    assert ([p.name for p in latency], [p.note for p in result.policies if p.action == "deleted"]) == (
        [original.name],
        [f"duplicate of {original.name}"],
    )


def test_other_endpoints_and_unmanaged_policies_are_left_alone(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given a hand-made policy that reuses vxdeploy's display name but not its labels
    hand_made = monitoring_v3.AlertPolicy(
        display_name="vxdeploy endpoint 4242: p99 latency",
        combiner="OR",
        conditions=[
            monitoring_v3.AlertPolicy.Condition(
                display_name="any",
                condition_threshold=monitoring_v3.AlertPolicy.Condition.MetricThreshold(
                    filter='metric.type = "custom.googleapis.com/x"',
                    comparison="COMPARISON_GT",
                    threshold_value=1,
                ),
            )
        ],
    )
    made = clients.alert_policies.create_alert_policy(name=f"projects/{PROJECT}", alert_policy=hand_made)

    # When monitoring is set up
    run_setup(clients)

    # Then the hand-made policy is untouched beside vxdeploy's three
    kept = clients.alert_policies.get_alert_policy(name=made.name)
    assert (threshold(kept).filter, len(fake.alert_policies())) == (
        'metric.type = "custom.googleapis.com/x"',
        4,
    )


# ------------------------------------------------------------------------------------------ faults
def test_unavailable_create_is_retried(fake: FakeMonitoring, clients: MonitoringClients) -> None:
    # Given Cloud Monitoring answers the first policy create with UNAVAILABLE
    fake.fail_next("CreateAlertPolicy", grpc.StatusCode.UNAVAILABLE)

    # When monitoring is set up
    result = run_setup(clients)

    # Then it retried: all three policies exist, each once
    assert (
        sorted(policies_by_role(fake)),
        len(fake.alert_policies()),
        len(fake.calls_of("CreateAlertPolicy")),
    ) == (
        ["error-rate", "p99-latency", "saturation"],
        3,
        4,
    ) and result.counts()["created"] == 5


def test_create_whose_answer_was_lost_leaves_no_duplicate(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given the first policy create and the e-mail channel create succeed but their answers are lost
    fake.fail_next("CreateAlertPolicy", grpc.StatusCode.UNAVAILABLE, after_commit=True)
    fake.fail_next("CreateNotificationChannel", grpc.StatusCode.UNAVAILABLE, after_commit=True)

    # When monitoring is set up
    run_setup(clients)

    # Then the retry found what the lost attempt made: one policy per role, one channel
    assert (
        len(fake.alert_policies()),
        len(fake.notification_channels()),
        len(fake.calls_of("CreateAlertPolicy")),
    ) == (
        3,
        1,
        3,
    )


def test_dashboard_503_then_success_creates_one_dashboard(
    dashboards: FakeDashboards, clients: MonitoringClients
) -> None:
    # Given the dashboards API answers the first create with a 503
    dashboards.fail_next("CreateDashboard", 503)

    # When monitoring is set up
    result = run_setup(clients)

    # Then one dashboard exists, created on the second try
    assert (
        len(dashboards.dashboards()),
        len(dashboards.calls_of("CreateDashboard")),
        result.dashboard is not None,
    ) == (
        1,
        2,
        True,
    )


def test_dashboard_update_whose_answer_was_lost_is_not_retried_blindly(
    dashboards: FakeDashboards, clients: MonitoringClients
) -> None:
    # Given a dashboard, and an update that applies but whose answer is lost (the retry's etag is stale)
    run_setup(clients, config(p99_latency_ms=500))
    dashboards.fail_next("UpdateDashboard", 503, after_commit=True)

    # When the threshold changes and setup runs again
    result = run_setup(clients, config(p99_latency_ms=250))

    # Then the stale-etag retry was recognised as done: one dashboard, updated
    assert (len(dashboards.dashboards()), result.dashboard.action if result.dashboard else None) == (
        1,
        "updated",
    )


def test_monitoring_that_stays_unavailable_fails_with_a_clear_error(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given every policy create answers UNAVAILABLE
    fake.fail_next("CreateAlertPolicy", grpc.StatusCode.UNAVAILABLE, times=100, message="backend down")

    # When monitoring is set up
    with pytest.raises(CloudOperationError) as err:
        run_setup(clients)

    # Then the error says what failed, how often and with what
    assert (
        "create alert policy" in str(err.value),
        "4 times" in str(err.value),
        "UNAVAILABLE: backend down" in str(err.value),
    ) == (True, True, True)


# -------------------------------------------------------------------------------------- bad config
def test_bad_email_is_rejected_naming_the_field() -> None:
    # Given a monitoring section with a malformed address
    section = {"notification_emails": ["oncall-at-example.com"]}

    # When it is parsed
    with pytest.raises(ConfigError) as err:
        parse_section(MonitoringConfig, section, "monitoring")

    # Then the error names the field and the value
    assert (
        "monitoring.notification_emails" in str(err.value),
        "oncall-at-example.com" in str(err.value),
    ) == (
        True,
        True,
    )


def test_loopback_monitoring_without_a_dashboards_endpoint_is_refused_before_any_call(
    fake: FakeMonitoring,
) -> None:
    # Given a loopback monitoring endpoint and no dashboards endpoint
    cfg = config(monitoring_endpoint=fake.address)

    # When monitoring is set up with clients made from the config
    with pytest.raises(ConfigError) as err:
        setup_monitoring(ENDPOINT, cfg, PROJECT, shape=GPU, retry=FAST)

    # Then the error names monitoring.dashboards_endpoint and nothing was called
    assert ("monitoring.dashboards_endpoint" in str(err.value), fake.calls) == (True, [])


def test_malformed_endpoint_name_is_refused_naming_the_artifact_field(clients: MonitoringClients) -> None:
    # Given an endpoint display name where a resource name belongs
    # When monitoring is set up
    with pytest.raises(Exception) as err:
        run_setup(clients, endpoint="vxdeploy-endpoint")

    # Then the error names the artifact metadata field and the expected form
    assert (
        "resourceName" in str(err.value),
        "projects/PROJECT/locations/LOCATION/endpoints/" in str(err.value),
    ) == (
        True,
        True,
    )


# ------------------------------------------------------------------------------------------- stage
def test_stage_reads_the_endpoint_artifact_and_writes_a_report(
    fake: FakeMonitoring, dashboards: FakeDashboards, tmp_path: Path
) -> None:
    # Given the deploy step's VertexEndpoint artifact and config sections pointed at the fakes
    endpoint = SimpleNamespace(
        metadata={
            "resourceName": ENDPOINT,
            "endpointId": ENDPOINT.rsplit("/", 1)[-1],
            "displayName": "digits",
            "deployedModelId": "777",
        }
    )
    report = SimpleNamespace(path=str(tmp_path / "report.json"))
    monitoring = {
        "notification_emails": ["oncall@example.com"],
        "monitoring_endpoint": fake.address,
        "dashboards_endpoint": dashboards.address,
    }
    deployment = {"project": PROJECT, "accelerator_type": "NVIDIA_L4", "max_replicas": 2}

    # When the stage runs
    stage.run(endpoint, deployment, monitoring, report)

    # Then the report lists what was made, and the dashboard is titled after the endpoint
    summary = json.loads(Path(report.path).read_text())["summary"]
    assert (
        summary["alert_policies"],
        summary["resources_created"],
        summary["endpoint"],
        dashboards.dashboards()[0].display_name,
    ) == (3, 5, ENDPOINT, "vxdeploy: digits (endpoint 4242)")


def test_stage_is_skipped_when_monitoring_is_disabled(fake: FakeMonitoring, tmp_path: Path) -> None:
    # Given monitoring turned off
    report = SimpleNamespace(path=str(tmp_path / "report.json"))

    # When the stage runs
    stage.run(SimpleNamespace(metadata={}), {"project": PROJECT}, {"enabled": False}, report)

    # Then it reports a skip and calls nothing
    assert (json.loads(Path(report.path).read_text())["status"], fake.calls) == ("skipped", [])


def test_endpoint_metadata_not_from_the_deploy_stage_is_refused_naming_the_field(
    fake: FakeMonitoring, tmp_path: Path
) -> None:
    # Given a hand-made endpoint artifact that carries only a resource name
    endpoint = SimpleNamespace(metadata={"resourceName": ENDPOINT})
    report = SimpleNamespace(path=str(tmp_path / "report.json"))

    # When the stage runs with monitoring on
    with pytest.raises(ArtifactMetadataError) as err:
        stage.run(endpoint, {"project": PROJECT}, {"enabled": True}, report)

    # Then the error names the contract, a missing field and who writes it, and nothing was called
    message = str(err.value)
    assert (
        "VertexEndpoint" in message,
        "deployedModelId" in message,
        "deploy stage" in message,
        fake.calls,
    ) == (True, True, True, [])


def _writes(fake: FakeMonitoring, dashboards: FakeDashboards) -> int:
    methods = ("Create", "Update", "Delete")
    return sum(1 for c in fake.calls if c.method.startswith(methods)) + sum(
        1 for c in dashboards.calls if c.method.startswith(methods)
    )


def test_managed_labels_are_valid_label_values() -> None:
    # Given an endpoint id with characters labels do not allow
    # When its managed labels are made
    labels = managed_labels("My.Endpoint")

    # Then they are lowercase with '-' for the rest
    assert labels == {"managed_by": "vxdeploy", "vxdeploy_endpoint": "my-endpoint"}
