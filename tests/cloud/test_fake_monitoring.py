"""The Cloud Monitoring fakes behave like the service where vxdeploy relies on it, over the real clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest
from google.api import metric_pb2
from google.api_core import exceptions as gexc
from google.cloud import monitoring_dashboard_v1 as dash
from google.cloud import monitoring_v3

from tests.fakes.dashboards import FakeDashboards
from tests.fakes.monitoring import FakeMonitoring, distribution
from vxdeploy.components.cloud.monitoring import MonitoringClients, monitoring_clients

PROJECT = "vx-project"
PARENT = f"projects/{PROJECT}"
LATENCY = "aiplatform.googleapis.com/prediction/online/prediction_latencies"
RESPONSES = "aiplatform.googleapis.com/prediction/online/response_count"
ENDPOINT_LABELS = {"endpoint_id": "4242", "location": "us-central1", "resource_container": PROJECT}
Threshold = monitoring_v3.AlertPolicy.Condition.MetricThreshold


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
    with monitoring_clients(f"http://{fake.address}", dashboards_endpoint=dashboards.address) as c:
        yield c


def policy(
    display_name: str = "p", labels: dict[str, str] | None = None, **threshold: object
) -> monitoring_v3.AlertPolicy:
    spec = {
        "filter": f'metric.type = "{RESPONSES}"',
        "comparison": "COMPARISON_GT",
        "threshold_value": 1.0,
        **threshold,
    }
    return monitoring_v3.AlertPolicy(
        display_name=display_name,
        user_labels=labels or {},
        combiner="OR",
        conditions=[
            monitoring_v3.AlertPolicy.Condition(display_name="c", condition_threshold=Threshold(**spec))
        ],
    )


def list_series(
    clients: MonitoringClients, filter_: str, start: float, end: float, **extra: object
) -> list[monitoring_v3.TimeSeries]:
    request = monitoring_v3.ListTimeSeriesRequest(
        name=PARENT,
        filter=filter_,
        interval=monitoring_v3.TimeInterval(
            start_time=datetime.fromtimestamp(start, UTC), end_time=datetime.fromtimestamp(end, UTC)
        ),
        **extra,
    )
    return list(clients.metrics.list_time_series(request=request))


# --------------------------------------------------------------------------------- alert policies
def test_policy_without_conditions_is_invalid_argument(clients: MonitoringClients) -> None:
    # Given a policy with no condition
    empty = monitoring_v3.AlertPolicy(display_name="empty")

    # When it is created / Then the service refuses it as INVALID_ARGUMENT
    with pytest.raises(gexc.InvalidArgument, match="at least one condition"):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=empty)


def test_condition_filter_without_metric_type_is_invalid_argument(clients: MonitoringClients) -> None:
    # Given a condition whose filter names no metric type
    bad = policy(filter='resource.labels.endpoint_id = "4242"')

    # When it is created / Then INVALID_ARGUMENT
    with pytest.raises(gexc.InvalidArgument, match="metric.type"):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=bad)


def test_aligner_without_alignment_period_is_invalid_argument(clients: MonitoringClients) -> None:
    # Given a condition that aligns per series but gives no period
    bad = policy(aggregations=[monitoring_v3.Aggregation(per_series_aligner="ALIGN_RATE")])

    # When it is created / Then INVALID_ARGUMENT
    with pytest.raises(gexc.InvalidArgument, match="alignment_period"):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=bad)


def test_uppercase_user_label_is_invalid_argument(clients: MonitoringClients) -> None:
    # Given a user label with an uppercase key
    # When it is created / Then INVALID_ARGUMENT
    with pytest.raises(gexc.InvalidArgument, match="label key"):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=policy(labels={"Team": "ml"}))


def test_unknown_policy_is_not_found(clients: MonitoringClients) -> None:
    # Given no policy 123
    # When it is read / Then NOT_FOUND
    with pytest.raises(gexc.NotFound):
        clients.alert_policies.get_alert_policy(name=f"{PARENT}/alertPolicies/123")


def test_list_filters_by_display_name_and_user_labels(clients: MonitoringClients) -> None:
    # Given three policies with different names and labels
    for name, team in (("a", "ml"), ("b", "ml"), ("a", "web")):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=policy(name, {"team": team}))

    # When listed with a filter on both
    request = monitoring_v3.ListAlertPoliciesRequest(
        name=PARENT, filter='display_name = "a" AND user_labels.team = "ml"'
    )
    found = list(clients.alert_policies.list_alert_policies(request=request))

    # Then only the one matching both comes back
    assert [(p.display_name, p.user_labels["team"]) for p in found] == [("a", "ml")]


def test_list_pages_through_many_policies(clients: MonitoringClients) -> None:
    # Given five policies
    for i in range(5):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=policy(f"p{i}"))

    # When listed two per page
    pager = clients.alert_policies.list_alert_policies(request={"name": PARENT, "page_size": 2})

    # Then the pager follows the page tokens to all five
    assert [p.display_name for p in pager] == ["p0", "p1", "p2", "p3", "p4"]


def test_update_with_mask_changes_only_the_masked_fields(clients: MonitoringClients) -> None:
    # Given a policy named "before" with threshold 1
    made = clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=policy("before"))

    # When an update sets name "after" and threshold 9 but masks only display_name
    change = policy("after", threshold_value=9.0)
    change.name = made.name
    clients.alert_policies.update_alert_policy(alert_policy=change, update_mask={"paths": ["display_name"]})

    # Then the name changed and the condition (and its server-given name) did not
    got = clients.alert_policies.get_alert_policy(name=made.name)
    assert (
        got.display_name,
        got.conditions[0].condition_threshold.threshold_value,
        got.conditions[0].name,
    ) == (
        "after",
        1.0,
        made.conditions[0].name,
    )


def test_policy_naming_a_missing_channel_is_refused(clients: MonitoringClients) -> None:
    # Given a policy that notifies a channel that does not exist
    p = policy()
    p.notification_channels = [f"{PARENT}/notificationChannels/404"]

    # When it is created / Then the service refuses it
    with pytest.raises(gexc.NotFound, match="notificationChannels/404"):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=p)


# ------------------------------------------------------------------------- notification channels
def test_email_channel_with_a_bad_address_is_invalid_argument(clients: MonitoringClients) -> None:
    # Given an email channel whose address has no domain
    channel = monitoring_v3.NotificationChannel(type_="email", labels={"email_address": "oncall"})

    # When it is created / Then INVALID_ARGUMENT
    with pytest.raises(gexc.InvalidArgument, match="email_address"):
        clients.notification_channels.create_notification_channel(name=PARENT, notification_channel=channel)


def test_channel_in_use_is_deleted_only_with_force(fake: FakeMonitoring, clients: MonitoringClients) -> None:
    # Given a channel a policy notifies
    channel = fake.seed_notification_channel(PROJECT, "email", {"email_address": "a@example.com"})
    p = policy()
    p.notification_channels = [channel]
    made = clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=p)

    # When it is deleted without force, then with force
    with pytest.raises(gexc.FailedPrecondition):
        clients.notification_channels.delete_notification_channel(name=channel)
    clients.notification_channels.delete_notification_channel(name=channel, force=True)

    # Then it is gone and the policy no longer lists it
    assert (
        fake.notification_channels(),
        list(clients.alert_policies.get_alert_policy(name=made.name).notification_channels),
    ) == (
        [],
        [],
    )


def test_channels_filter_by_type_and_label(fake: FakeMonitoring, clients: MonitoringClients) -> None:
    # Given an email and a slack channel
    email = fake.seed_notification_channel(PROJECT, "email", {"email_address": "a@example.com"})
    fake.seed_notification_channel(PROJECT, "slack", {"channel_name": "#x"})

    # When listed by type and address
    request = monitoring_v3.ListNotificationChannelsRequest(
        name=PARENT, filter='type = "email" AND labels.email_address = "a@example.com"'
    )

    # Then only the email channel comes back
    assert [c.name for c in clients.notification_channels.list_notification_channels(request=request)] == [
        email
    ]


# ------------------------------------------------------------------------------------- time series
def test_time_series_are_selected_by_endpoint_and_deployed_model(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given response counts of two deployed models on one endpoint
    now = time.time()
    fake.add_time_series(
        PROJECT, RESPONSES, ENDPOINT_LABELS, {"deployed_model_id": "1"}, [(now - 60, 5)], "INT64"
    )
    fake.add_time_series(
        PROJECT, RESPONSES, ENDPOINT_LABELS, {"deployed_model_id": "2"}, [(now - 60, 7)], "INT64"
    )

    # When one deployed model's series is read
    series = list_series(
        clients,
        f'metric.type = "{RESPONSES}" AND resource.labels.endpoint_id = "4242" '
        'AND metric.labels.deployed_model_id = "2"',
        now - 300,
        now,
    )

    # Then only its points come back
    assert [
        (s.metric.labels["deployed_model_id"], [p.value.int64_value for p in s.points]) for s in series
    ] == [("2", [7])]


def test_points_are_read_newest_first_within_start_exclusive_end_inclusive(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given points at t=100, 200, 300 and 400
    fake.add_time_series(
        PROJECT, RESPONSES, ENDPOINT_LABELS, {}, [(100, 1), (200, 2), (300, 3), (400, 4)], "INT64"
    )

    # When the interval (100, 300] is read
    [series] = list_series(clients, f'metric.type = "{RESPONSES}"', 100, 300)

    # Then the points at 300 and 200 come back, newest first, each a delta since the one before
    assert [
        (p.value.int64_value, p.interval.start_time.timestamp(), p.interval.end_time.timestamp())
        for p in series.points
    ] == [
        (3, 200.0, 300.0),
        (2, 100.0, 200.0),
    ]


def test_unknown_metric_returns_no_series(fake: FakeMonitoring, clients: MonitoringClients) -> None:
    # Given points of one metric only
    fake.add_time_series(PROJECT, RESPONSES, ENDPOINT_LABELS, {}, [(100, 1)], "INT64")

    # When another metric is read / Then nothing comes back, without an error
    assert list_series(clients, f'metric.type = "{LATENCY}"', 0, 200) == []


def test_filter_without_metric_type_is_invalid_argument(clients: MonitoringClients) -> None:
    # Given a filter on labels only
    # When it is read / Then INVALID_ARGUMENT
    with pytest.raises(gexc.InvalidArgument, match="metric.type"):
        list_series(clients, 'resource.labels.endpoint_id = "4242"', 0, 200)


def test_aggregated_read_returns_the_stored_points(fake: FakeMonitoring, clients: MonitoringClients) -> None:
    # Given two response-count points
    fake.add_time_series(
        PROJECT, RESPONSES, ENDPOINT_LABELS, {"deployed_model_id": "1"}, [(100, 3), (160, 4)], "INT64"
    )

    # When read with a per-series aligner and a cross-series reducer
    aggregation = monitoring_v3.Aggregation(
        alignment_period={"seconds": 60},
        per_series_aligner="ALIGN_SUM",
        cross_series_reducer="REDUCE_SUM",
        group_by_fields=["metric.label.deployed_model_id"],
    )
    [series] = list_series(clients, f'metric.type = "{RESPONSES}"', 0, 200, aggregation=aggregation)

    # Then the stored points come back unaligned (the caller aggregates)
    assert [p.value.int64_value for p in series.points] == [4, 3]


def test_latency_distribution_round_trips_with_its_buckets(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given a latency distribution of 99 fast requests and one slow one
    samples = [10.0] * 99 + [900.0]
    fake.add_time_series(
        PROJECT,
        LATENCY,
        ENDPOINT_LABELS,
        {"latency_type": "total"},
        [(100, samples)],
        "DISTRIBUTION",
        unit="ms",
    )

    # When it is read
    [series] = list_series(
        clients, f'metric.type = "{LATENCY}" AND metric.labels.latency_type = "total"', 0, 100
    )

    # Then count, mean and bucket counts are those of the samples
    dist = series.points[0].value.distribution_value
    expected = distribution(samples)
    assert (dist.count, round(dist.mean, 3), list(dist.bucket_counts), series.value_type) == (
        100,
        18.9,
        list(expected.bucket_counts),
        metric_pb2.MetricDescriptor.DISTRIBUTION,
    )


def test_written_time_series_can_be_read_back(clients: MonitoringClients) -> None:
    # Given a gauge point written with CreateTimeSeries
    series = monitoring_v3.TimeSeries(
        metric={
            "type": "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle",
            "labels": {"deployed_model_id": "1"},
        },
        resource={"type": "aiplatform.googleapis.com/Endpoint", "labels": ENDPOINT_LABELS},
        points=[{"interval": {"end_time": {"seconds": 100}}, "value": {"double_value": 0.75}}],
    )
    clients.metrics.create_time_series(name=PARENT, time_series=[series])

    # When it is read / Then the value comes back
    [read] = list_series(
        clients, 'metric.type = "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle"', 0, 100
    )
    assert [p.value.double_value for p in read.points] == [0.75]


def test_canary_metrics_source_reads_counts_and_p99_from_the_fake(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given 200 responses, 4 errors and latencies of one deployed model (what the canary engineer reads)
    from vxdeploy.components.canary.metrics import CloudMonitoringMetricsSource

    now = time.time()
    labels = {"deployed_model_id": "77"}
    fake.add_time_series(
        PROJECT, RESPONSES, ENDPOINT_LABELS, labels, [(now - 120, 120), (now - 60, 80)], "INT64"
    )
    fake.add_time_series(
        PROJECT,
        "aiplatform.googleapis.com/prediction/online/error_count",
        ENDPOINT_LABELS,
        labels,
        [(now - 60, 4)],
        "INT64",
    )
    fake.add_time_series(
        PROJECT,
        LATENCY,
        ENDPOINT_LABELS,
        {**labels, "latency_type": "total"},
        [(now - 60, [20.0] * 100)],
        "DISTRIBUTION",
    )

    # When the canary's source reads the window
    stats = CloudMonitoringMetricsSource(PROJECT, client=clients.metrics).window_stats(
        "4242", "77", datetime.fromtimestamp(now - 300, UTC), datetime.fromtimestamp(now, UTC)
    )

    # Then it sees the counts and a p99 in the 20 ms bucket
    assert (
        stats.requests,
        stats.errors,
        stats.p99_latency_ms is not None and 16 < stats.p99_latency_ms <= 25,
    ) == (
        200,
        4,
        True,
    )


# ------------------------------------------------------------------------------------------- faults
def test_injected_unavailable_reaches_a_client_that_does_not_retry(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given the next create answers UNAVAILABLE
    fake.fail_next("CreateAlertPolicy", grpc.StatusCode.UNAVAILABLE)

    # When a policy is created twice
    with pytest.raises(gexc.ServiceUnavailable):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=policy())
    clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=policy())

    # Then the first failed without a change and the second made the one policy
    assert len(fake.alert_policies()) == 1


def test_injected_fault_after_commit_applies_the_change(
    fake: FakeMonitoring, clients: MonitoringClients
) -> None:
    # Given the next create is applied but its answer is lost
    fake.fail_next("CreateAlertPolicy", grpc.StatusCode.UNAVAILABLE, after_commit=True)

    # When a policy is created
    with pytest.raises(gexc.ServiceUnavailable):
        clients.alert_policies.create_alert_policy(name=PARENT, alert_policy=policy())

    # Then the policy exists anyway
    assert len(fake.alert_policies()) == 1


# --------------------------------------------------------------------------------------- dashboards
def dashboard(title: str = "D", tiles: list[dash.MosaicLayout.Tile] | None = None) -> dash.Dashboard:
    chart = dash.Widget(
        title="t",
        xy_chart=dash.XyChart(
            data_sets=[
                dash.XyChart.DataSet(
                    time_series_query=dash.TimeSeriesQuery(
                        time_series_filter=dash.TimeSeriesFilter(filter=f'metric.type = "{RESPONSES}"')
                    )
                )
            ]
        ),
    )
    default = [dash.MosaicLayout.Tile(x_pos=0, y_pos=0, width=24, height=8, widget=chart)]
    return dash.Dashboard(
        display_name=title, mosaic_layout=dash.MosaicLayout(columns=48, tiles=tiles or default)
    )


def test_dashboard_round_trips_through_create_get_list_update_delete(clients: MonitoringClients) -> None:
    # Given a created dashboard
    d = clients.dashboards
    assert d is not None
    made = d.create_dashboard(request={"parent": PARENT, "dashboard": dashboard("first")})

    # When it is renamed with its etag, listed, read and deleted
    made.display_name = "second"
    updated = d.update_dashboard(request={"dashboard": made})
    listed = [x.display_name for x in d.list_dashboards(parent=PARENT)]
    got = d.get_dashboard(name=made.name)
    d.delete_dashboard(name=made.name)

    # Then each step saw the change, the etag moved, and it is gone
    assert (listed, got.display_name, updated.etag != made.etag, list(d.list_dashboards(parent=PARENT))) == (
        ["second"],
        "second",
        True,
        [],
    )


def test_dashboard_update_with_a_stale_etag_is_a_conflict(clients: MonitoringClients) -> None:
    # Given a dashboard updated once since it was read
    d = clients.dashboards
    assert d is not None
    stale = d.create_dashboard(request={"parent": PARENT, "dashboard": dashboard()})
    d.update_dashboard(request={"dashboard": dash.Dashboard(stale, display_name="newer")})

    # When the old copy is written back / Then 409
    with pytest.raises(gexc.Conflict, match="etag"):
        d.update_dashboard(request={"dashboard": stale})


def test_overlapping_tiles_are_a_bad_request(clients: MonitoringClients) -> None:
    # Given two tiles on the same cells
    base = dashboard().mosaic_layout.tiles[0]
    tiles = [base, dash.MosaicLayout.Tile(base, x_pos=10)]

    # When created / Then 400
    assert clients.dashboards is not None
    with pytest.raises(gexc.BadRequest, match="overlaps"):
        clients.dashboards.create_dashboard(request={"parent": PARENT, "dashboard": dashboard(tiles=tiles)})


def test_dashboard_503_is_injected_once(dashboards: FakeDashboards, clients: MonitoringClients) -> None:
    # Given the next list answers 503
    dashboards.fail_next("ListDashboards", 503)
    assert clients.dashboards is not None

    # When listed twice / Then the first is ServiceUnavailable and the second works
    with pytest.raises(gexc.ServiceUnavailable):
        list(clients.dashboards.list_dashboards(parent=PARENT))
    assert list(clients.dashboards.list_dashboards(parent=PARENT)) == []


def test_rest_client_asks_for_numeric_enums(dashboards: FakeDashboards, clients: MonitoringClients) -> None:
    # Given the REST client
    assert clients.dashboards is not None

    # When it lists dashboards
    list(clients.dashboards.list_dashboards(parent=PARENT))

    # Then it sent $alt=json;enum-encoding=int, which the fake honours
    assert dashboards.calls[-1].query["$alt"] == ["json;enum-encoding=int"]


def test_written_delta_point_keeps_its_start_time(clients: MonitoringClients) -> None:
    # Given a DELTA count written with an explicit 30 s interval
    series = monitoring_v3.TimeSeries(
        metric={"type": RESPONSES, "labels": {"deployed_model_id": "1"}},
        resource={"type": "aiplatform.googleapis.com/Endpoint", "labels": ENDPOINT_LABELS},
        metric_kind="DELTA",
        points=[
            {
                "interval": {"start_time": {"seconds": 70}, "end_time": {"seconds": 100}},
                "value": {"int64_value": 9},
            }
        ],
    )
    clients.metrics.create_time_series(name=PARENT, time_series=[series])

    # When it is read / Then its interval is the one written
    [read] = list_series(clients, f'metric.type = "{RESPONSES}"', 0, 100)
    point = read.points[0]
    assert (
        point.interval.start_time.timestamp(),
        point.interval.end_time.timestamp(),
        point.value.int64_value,
    ) == (
        70.0,
        100.0,
        9,
    )
