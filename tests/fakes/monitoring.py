"""A loopback fake of Cloud Monitoring over real gRPC: alert policies, notification channels, time series.

``google-cloud-monitoring`` has no REST transport, so this fake is a ``grpc.server`` whose
handlers (``grpc.method_handlers_generic_handler``) decode the real request messages and answer
with the real response messages. The real clients reach it with
``vxdeploy.components.cloud.monitoring.monitoring_clients("127.0.0.1:PORT")``.

It keeps state and checks requests the way the service does: a policy without conditions, a
condition without a ``metric.type`` in its filter, an aligner without an alignment period, a
malformed user label or e-mail address is ``INVALID_ARGUMENT``; an unknown name is ``NOT_FOUND``;
deleting a channel a policy still uses is ``FAILED_PRECONDITION`` unless forced.

Time series are loaded by the test (:meth:`FakeMonitoring.add_time_series`) or written with
``CreateTimeSeries``, and read with ``ListTimeSeries``: the filter (``metric.type``,
``resource.type``, ``resource.labels.*``, ``metric.labels.*`` with ``=``, ``!=``, ``:``,
``starts_with``, ``ends_with``, ``one_of``, joined by ``AND``) and the interval ``(start, end]``
select points, newest first. Aggregation requests are checked but answered with the stored
points, not aligned or reduced: the fake returns raw data, the caller aggregates.

Fault injection: :meth:`FakeMonitoring.fail_next` makes the next call(s) of a method fail with a
status code, before or after the change is applied (a lost response).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.api import distribution_pb2, metric_pb2, monitored_resource_pb2
from google.cloud import monitoring_v3
from google.protobuf import empty_pb2, field_mask_pb2, timestamp_pb2

ENDPOINT_RESOURCE_TYPE = "aiplatform.googleapis.com/Endpoint"
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_PROJECT_RE = re.compile(r"^projects/([^/]+)$")
_CHANNEL_TYPES = {
    "email": ("email_address",),
    "sms": ("number",),
    "slack": ("channel_name",),
    "pagerduty": ("service_key",),
    "pubsub": ("topic",),
    "webhook_tokenauth": ("url",),
    "webhook_basicauth": ("url", "username", "password"),
    "google_chat": ("space",),
}
_MAX_CONDITIONS = 6
_AP = monitoring_v3.AlertPolicy.pb()
_NC = monitoring_v3.NotificationChannel.pb()
_Aligner = monitoring_v3.Aggregation.Aligner
_Reducer = monitoring_v3.Aggregation.Reducer


class RpcError(Exception):
    """An error status the fake answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------------------------- filters
@dataclass(frozen=True)
class Clause:
    """One comparison of a Cloud Monitoring filter: ``[NOT] field op value``."""

    field: str
    op: str  # "=", "!=" or ":"
    function: str  # "" for a literal, else starts_with / ends_with / has_substring / one_of / regex
    values: tuple[str, ...]
    negated: bool = False

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            hit = False
        elif self.op == ":":
            hit = self.values[0] in actual
        elif self.function == "starts_with":
            hit = actual.startswith(self.values[0])
        elif self.function == "ends_with":
            hit = actual.endswith(self.values[0])
        elif self.function == "has_substring":
            hit = self.values[0] in actual
        elif self.function == "one_of":
            hit = actual in self.values
        elif self.function == "monitoring.regex.full_match":
            hit = re.fullmatch(self.values[0], actual) is not None
        else:
            # Booleans (enabled = true) compare without case, as the service does.
            hit = actual == self.values[0] or (
                actual in ("true", "false") and actual == self.values[0].lower()
            )
        if self.op == "!=":
            hit = actual is not None and not hit
        return hit != self.negated


_TOKEN_RE = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>!=|=|:|\(|\)|,)|(?P<word>[A-Za-z0-9_][A-Za-z0-9_.\-/]*))'
)
_FUNCTIONS = ("starts_with", "ends_with", "has_substring", "one_of", "monitoring.regex.full_match")


def parse_filter(text: str) -> list[Clause]:
    """Parse a Cloud Monitoring filter made of comparisons joined by ``AND`` (or juxtaposition).

    Raises:
        RpcError: INVALID_ARGUMENT for a filter the service would reject or the fake does not know
            (``OR`` and parentheses around clauses are not supported here).
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise _invalid(f"Could not parse filter {text!r} at position {pos}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    clauses: list[Clause] = []
    i = 0

    def take() -> tuple[str, str]:
        nonlocal i
        if i >= len(tokens):
            raise _invalid(f"Filter {text!r} ends early")
        tok = tokens[i]
        i += 1
        return tok

    while i < len(tokens):
        kind, value = take()
        if kind == "word" and value == "AND":
            continue
        if kind == "word" and value == "OR":
            raise _invalid(f"Filter {text!r}: OR is not supported by this fake")
        negated = False
        if kind == "word" and value == "NOT":
            negated = True
            kind, value = take()
        if kind != "word":
            raise _invalid(f"Filter {text!r}: expected a field name, got {value!r}")
        name = value
        kind, op = take()
        if kind != "op" or op not in ("=", "!=", ":"):
            raise _invalid(f"Filter {text!r}: expected =, != or : after {name!r}")
        kind, value = take()
        if kind == "word" and value in _FUNCTIONS:
            function = value
            if take() != ("op", "("):
                raise _invalid(f"Filter {text!r}: {function} needs (...)")
            args: list[str] = []
            while True:
                kind, arg = take()
                if kind != "string":
                    raise _invalid(f"Filter {text!r}: {function} takes quoted strings")
                args.append(arg)
                kind, sep = take()
                if (kind, sep) == ("op", ")"):
                    break
                if (kind, sep) != ("op", ","):
                    raise _invalid(f"Filter {text!r}: expected , or ) in {function}")
            if function != "one_of" and len(args) != 1:
                raise _invalid(f"Filter {text!r}: {function} takes one argument")
            clauses.append(Clause(name, op, function, tuple(args), negated))
        elif kind in ("string", "word"):
            clauses.append(Clause(name, op, "", (value,), negated))
        else:
            raise _invalid(f"Filter {text!r}: expected a value after {name}{op}")
    return clauses


def matches_filter(clauses: Iterable[Clause], lookup: Callable[[str], str | None]) -> bool:
    """Whether every clause holds for the object whose fields ``lookup`` reads."""
    return all(c.matches(lookup(c.field)) for c in clauses)


def metric_types_in(clauses: Sequence[Clause]) -> list[Clause]:
    """The ``metric.type`` clauses of a filter."""
    return [c for c in clauses if c.field == "metric.type"]


def check_metric_filter(text: str, what: str) -> list[Clause]:
    """Parse a time series filter and require one ``metric.type = ...`` in it, as the service does."""
    if not text.strip():
        raise _invalid(f"{what}: a filter is required")
    clauses = parse_filter(text)
    for clause in clauses:
        _series_field(clause.field)  # unknown fields are rejected
    types = metric_types_in(clauses)
    if len(types) != 1 or types[0].op != "=" or types[0].negated:
        raise _invalid(f"{what}: the filter {text!r} must name exactly one metric.type with =")
    return clauses


def _series_field(name: str) -> tuple[str, str]:
    for prefix, where in (
        ("metric.labels.", "metric"),
        ("metric.label.", "metric"),
        ("resource.labels.", "resource"),
        ("resource.label.", "resource"),
        ("metadata.user_labels.", "none"),
        ("metadata.system_labels.", "none"),
    ):
        if name.startswith(prefix):
            return where, name[len(prefix) :]
    if name in ("metric.type", "resource.type", "project"):
        return name, ""
    raise _invalid(f"Unknown field {name!r} in a time series filter")


def _map_lookup(prefixes: Sequence[str], mapping: Mapping[str, str], name: str) -> str | None:
    for prefix in prefixes:
        if name.startswith(prefix):
            return mapping.get(name[len(prefix) :])
    raise KeyError(name)


def _check_labels(labels: Mapping[str, str], what: str) -> None:
    if len(labels) > 64:
        raise _invalid(f"{what}: at most 64 labels")
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(key):
            raise _invalid(
                f"{what}: label key {key!r} must start with a lowercase letter and hold only lowercase "
                "letters, digits, '_' and '-' (at most 63)"
            )
        if not _LABEL_VALUE_RE.match(value):
            raise _invalid(
                f"{what}: label value {value!r} of {key!r} may hold only lowercase letters, digits, '_' and "
                "'-' (at most 63)"
            )


# ---------------------------------------------------------------------------------------- time series
@dataclass
class _Series:
    project: str
    metric_type: str
    metric_labels: dict[str, str]
    resource_type: str
    resource_labels: dict[str, str]
    metric_kind: int
    value_type: int
    unit: str
    # (start seconds, end seconds, value); start == end for GAUGE points.
    points: list[tuple[float, float, Any]] = field(default_factory=list)

    def key(self) -> tuple[Any, ...]:
        return (
            self.project,
            self.metric_type,
            tuple(sorted(self.metric_labels.items())),
            self.resource_type,
            tuple(sorted(self.resource_labels.items())),
        )

    def lookup(self, name: str) -> str | None:
        where, key = _series_field(name)
        if where == "metric.type":
            return self.metric_type
        if where == "resource.type":
            return self.resource_type
        if where == "project":
            return self.project
        if where == "metric":
            return self.metric_labels.get(key)
        if where == "resource":
            return self.resource_labels.get(key)
        return None

    def to_proto(self, points: Sequence[tuple[float, float, Any]]) -> Any:
        ts = monitoring_v3.TimeSeries.pb()(
            metric=metric_pb2.Metric(type=self.metric_type, labels=self.metric_labels),
            resource=monitored_resource_pb2.MonitoredResource(
                type=self.resource_type, labels=self.resource_labels
            ),
            metric_kind=self.metric_kind,  # type: ignore[arg-type]
            value_type=self.value_type,  # type: ignore[arg-type]
            unit=self.unit,
        )
        for start, end, value in points:
            point = ts.points.add()
            point.interval.end_time.CopyFrom(_timestamp(end))
            if self.metric_kind != metric_pb2.MetricDescriptor.GAUGE:
                point.interval.start_time.CopyFrom(_timestamp(start))
            point.value.CopyFrom(value)
        return ts


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return float(ts.seconds + ts.nanos / 1e9)


def distribution(
    samples: Sequence[float], bounds: Sequence[float] | None = None
) -> distribution_pb2.Distribution:
    """A ``Distribution`` of ``samples`` as Cloud Monitoring stores one (counts per bucket, no samples).

    Args:
        samples: The values (e.g. latencies in ms).
        bounds: Explicit finite bucket bounds; default: exponential buckets (scale 1, growth 1.25,
            64 finite buckets: 1 ms .. ~1.6e6 ms, each about 25% wide).
    """
    dist = distribution_pb2.Distribution(count=len(samples))
    if samples:
        mean = sum(samples) / len(samples)
        dist.mean = mean
        dist.sum_of_squared_deviation = sum((s - mean) ** 2 for s in samples)
        dist.range.min = min(samples)
        dist.range.max = max(samples)
    if bounds is None:
        exp = dist.bucket_options.exponential_buckets
        exp.num_finite_buckets, exp.growth_factor, exp.scale = 64, 1.25, 1.0
        upper = [exp.scale * exp.growth_factor**i for i in range(exp.num_finite_buckets + 1)]
    else:
        dist.bucket_options.explicit_buckets.bounds.extend(bounds)
        upper = list(bounds)
    counts = [0] * (len(upper) + 1)
    for s in samples:
        # Bucket i holds [upper[i-1], upper[i]); bucket 0 is the underflow, the last the overflow.
        counts[next((i for i, u in enumerate(upper) if s < u), len(upper))] += 1
    dist.bucket_counts.extend(counts)
    return dist


_VALUE_TYPES = {
    "BOOL": metric_pb2.MetricDescriptor.BOOL,
    "INT64": metric_pb2.MetricDescriptor.INT64,
    "DOUBLE": metric_pb2.MetricDescriptor.DOUBLE,
    "DISTRIBUTION": metric_pb2.MetricDescriptor.DISTRIBUTION,
}
_METRIC_KINDS = {
    "GAUGE": metric_pb2.MetricDescriptor.GAUGE,
    "DELTA": metric_pb2.MetricDescriptor.DELTA,
    "CUMULATIVE": metric_pb2.MetricDescriptor.CUMULATIVE,
}


def _typed_value(value: Any, value_type: str) -> Any:
    tv = monitoring_v3.TypedValue.pb()()
    if value_type == "DOUBLE":
        tv.double_value = float(value)
    elif value_type == "INT64":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"INT64 point {value!r} is not an integer")
        tv.int64_value = int(value)
    elif value_type == "BOOL":
        tv.bool_value = bool(value)
    elif value_type == "DISTRIBUTION":
        tv.distribution_value.CopyFrom(
            value if isinstance(value, distribution_pb2.Distribution) else distribution(list(value))
        )
    else:
        raise ValueError(f"value_type {value_type!r} is not one of {sorted(_VALUE_TYPES)}")
    return tv


# ------------------------------------------------------------------------------------------- the fake
@dataclass
class Call:
    """One RPC the fake received: method name (e.g. ``CreateAlertPolicy``), request and metadata."""

    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class _Fault:
    method: str | None
    code: grpc.StatusCode
    message: str
    remaining: int
    after_commit: bool


class FakeMonitoring:
    """Cloud Monitoring's AlertPolicy, NotificationChannel and Metric services on a loopback port.

    Use as ``with FakeMonitoring() as fake:`` or ``fake.start()`` / ``fake.stop()``; clients reach it
    at :attr:`address`. All introspection returns copies as proto-plus messages.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._server: grpc.Server | None = None
        self._port = 0
        self._ids = itertools.count(int(time.time()) % 100000 * 1000 + 1)
        self._policies: dict[str, Any] = {}
        self._channels: dict[str, Any] = {}
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._faults: list[_Fault] = []
        self.calls: list[Call] = []

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the running server."""
        if self._server is None:
            raise RuntimeError("FakeMonitoring is not started")
        return f"127.0.0.1:{self._port}"

    def start(self) -> FakeMonitoring:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers(self._handlers())
        self._port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> FakeMonitoring:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------ test-facing API
    def add_time_series(
        self,
        project: str,
        metric_type: str,
        resource_labels: Mapping[str, str],
        metric_labels: Mapping[str, str],
        points: Sequence[tuple[float, Any] | tuple[float, float, Any]],
        value_type: str = "DOUBLE",
        *,
        metric_kind: str | None = None,
        resource_type: str = ENDPOINT_RESOURCE_TYPE,
        unit: str = "",
    ) -> None:
        """Store points of one time series (merged with earlier points of the same labels).

        Args:
            project: Project id, as in ``projects/{project}`` of ``ListTimeSeries``.
            metric_type: e.g. ``aiplatform.googleapis.com/prediction/online/response_count``.
            resource_labels: e.g. ``{"endpoint_id": "123", "location": "us-central1"}``.
            metric_labels: e.g. ``{"deployed_model_id": "456", "response_code": "200"}``.
            points: ``(end time in epoch seconds, value)``, or ``(start, end, value)`` to give a
                DELTA/CUMULATIVE point's start; for ``DISTRIBUTION`` the value is a
                ``google.api.distribution_pb2.Distribution`` or a list of samples (see
                :func:`distribution`).
            value_type: ``"DOUBLE"``, ``"INT64"``, ``"BOOL"`` or ``"DISTRIBUTION"``.
            metric_kind: ``"GAUGE"``, ``"DELTA"`` or ``"CUMULATIVE"``; default ``GAUGE`` for DOUBLE
                and BOOL, ``DELTA`` for INT64 and DISTRIBUTION (what Vertex AI's counts and latencies
                are). A DELTA point covers the time since the series' previous point (60 s for the
                first).
            resource_type: The monitored resource type (default: Vertex AI endpoint).
            unit: The metric's unit, returned with the series (e.g. ``"ms"``).
        """
        kind = metric_kind or ("GAUGE" if value_type in ("DOUBLE", "BOOL") else "DELTA")
        if kind not in _METRIC_KINDS:
            raise ValueError(f"metric_kind {kind!r} is not one of {sorted(_METRIC_KINDS)}")
        if value_type not in _VALUE_TYPES:
            raise ValueError(f"value_type {value_type!r} is not one of {sorted(_VALUE_TYPES)}")
        series = _Series(
            project=project,
            metric_type=metric_type,
            metric_labels={str(k): str(v) for k, v in metric_labels.items()},
            resource_type=resource_type,
            resource_labels={str(k): str(v) for k, v in resource_labels.items()},
            metric_kind=_METRIC_KINDS[kind],
            value_type=_VALUE_TYPES[value_type],
            unit=unit,
        )
        with self._lock:
            stored = self._series.setdefault(series.key(), series)
            if (stored.metric_kind, stored.value_type) != (series.metric_kind, series.value_type):
                raise ValueError(f"{metric_type} already holds {kind}/{value_type} points of another type")
            for point in sorted(points, key=lambda p: float(p[-2])):
                t, value = float(point[-2]), point[-1]
                previous = max((p[1] for p in stored.points if p[1] < t), default=t - 60.0)
                start = t if kind == "GAUGE" else (float(point[0]) if len(point) == 3 else previous)
                if start > t:
                    raise ValueError(f"point start {start} is after its end {t}")
                stored.points.append((start, t, _typed_value(value, value_type)))
            stored.points.sort(key=lambda p: p[1])

    def fail_next(
        self,
        method: str | None = None,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        *,
        times: int = 1,
        message: str = "injected fault",
        after_commit: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``method`` (any method when None) fail with ``code``.

        With ``after_commit`` the change is applied first and the answer is lost: what a client sees
        when a connection drops after the server acted.
        """
        with self._lock:
            self._faults.append(_Fault(method, code, message, times, after_commit))

    def seed_notification_channel(
        self,
        project: str,
        type_: str = "email",
        labels: Mapping[str, str] | None = None,
        display_name: str = "",
        user_labels: Mapping[str, str] | None = None,
    ) -> str:
        """Create a channel as if someone had made it earlier (no call recorded); returns its name."""
        channel = _NC(type_=type_, display_name=display_name, labels=dict(labels or {}))
        channel.user_labels.update(dict(user_labels or {}))
        with self._lock:
            return str(self._create_channel(f"projects/{project}", channel).name)

    def alert_policies(self, project: str | None = None) -> list[monitoring_v3.AlertPolicy]:
        """The stored alert policies (of ``project`` when given), oldest first."""
        with self._lock:
            return [
                monitoring_v3.AlertPolicy.wrap(_copy(p))
                for name, p in self._policies.items()
                if project is None or name.startswith(f"projects/{project}/")
            ]

    def notification_channels(self, project: str | None = None) -> list[monitoring_v3.NotificationChannel]:
        """The stored notification channels (of ``project`` when given), oldest first."""
        with self._lock:
            return [
                monitoring_v3.NotificationChannel.wrap(_copy(c))
                for name, c in self._channels.items()
                if project is None or name.startswith(f"projects/{project}/")
            ]

    def time_series(self, project: str | None = None) -> list[monitoring_v3.TimeSeries]:
        """Every stored series with all its points, newest point first."""
        with self._lock:
            return [
                monitoring_v3.TimeSeries.wrap(s.to_proto(list(reversed(s.points))))
                for s in self._series.values()
                if project is None or s.project == project
            ]

    def calls_of(self, method: str) -> list[Call]:
        """The recorded calls of one method, in order."""
        with self._lock:
            return [c for c in self.calls if c.method == method]

    # ----------------------------------------------------------------------------- plumbing
    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        m = monitoring_v3
        alert = {
            "CreateAlertPolicy": (m.CreateAlertPolicyRequest, self._rpc_create_policy),
            "GetAlertPolicy": (m.GetAlertPolicyRequest, self._rpc_get_policy),
            "ListAlertPolicies": (m.ListAlertPoliciesRequest, self._rpc_list_policies),
            "UpdateAlertPolicy": (m.UpdateAlertPolicyRequest, self._rpc_update_policy),
            "DeleteAlertPolicy": (m.DeleteAlertPolicyRequest, self._rpc_delete_policy),
        }
        channels = {
            "CreateNotificationChannel": (m.CreateNotificationChannelRequest, self._rpc_create_channel),
            "GetNotificationChannel": (m.GetNotificationChannelRequest, self._rpc_get_channel),
            "ListNotificationChannels": (m.ListNotificationChannelsRequest, self._rpc_list_channels),
            "UpdateNotificationChannel": (m.UpdateNotificationChannelRequest, self._rpc_update_channel),
            "DeleteNotificationChannel": (m.DeleteNotificationChannelRequest, self._rpc_delete_channel),
        }
        metrics = {
            "ListTimeSeries": (m.ListTimeSeriesRequest, self._rpc_list_time_series),
            "CreateTimeSeries": (m.CreateTimeSeriesRequest, self._rpc_create_time_series),
        }
        return [
            grpc.method_handlers_generic_handler(
                service, {name: self._unary(name, req, fn) for name, (req, fn) in methods.items()}
            )
            for service, methods in (
                ("google.monitoring.v3.AlertPolicyService", alert),
                ("google.monitoring.v3.NotificationChannelService", channels),
                ("google.monitoring.v3.MetricService", metrics),
            )
        ]

    def _unary(self, method: str, request_type: Any, fn: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            with self._lock:
                self.calls.append(Call(method, request, metadata))
                fault = self._take_fault(method)
                if fault is not None and not fault.after_commit:
                    context.abort(fault.code, fault.message)
                try:
                    response = fn(request_type.pb(request))
                except RpcError as err:
                    context.abort(err.code, err.message)
                if fault is not None:
                    context.abort(fault.code, fault.message)
                return response

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_type.deserialize,
            response_serializer=lambda pb: pb.SerializeToString(),
        )

    def _take_fault(self, method: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method in (None, method):
                fault.remaining -= 1
                return fault
        return None

    def _new_id(self) -> str:
        return str(next(self._ids))

    # ------------------------------------------------------------------------- alert policies
    def _rpc_create_policy(self, req: Any) -> Any:
        project = _project_of(req.name)
        policy = _copy(req.alert_policy)
        if policy.name:
            raise _invalid("alert_policy.name must be empty on create; the service assigns it")
        self._check_policy(project, policy)
        name = f"projects/{project}/alertPolicies/{self._new_id()}"
        policy.name = name
        if not policy.HasField("enabled"):
            policy.enabled.value = True
        for condition in policy.conditions:
            condition.name = f"{name}/conditions/{self._new_id()}"
        now = _timestamp(time.time())
        policy.creation_record.mutate_time.CopyFrom(now)
        policy.creation_record.mutated_by = "fake-monitoring"
        policy.mutation_record.CopyFrom(policy.creation_record)
        self._policies[name] = policy
        return _copy(policy)

    def _rpc_get_policy(self, req: Any) -> Any:
        return _copy(self._policy(req.name))

    def _rpc_list_policies(self, req: Any) -> Any:
        project = _project_of(req.name)
        clauses = parse_filter(req.filter) if req.filter else []
        found = [
            p
            for name, p in self._policies.items()
            if name.startswith(f"projects/{project}/")
            and matches_filter(clauses, functools.partial(_policy_field, p))
        ]
        page, token = _page(found, req.page_size, req.page_token)
        resp = monitoring_v3.ListAlertPoliciesResponse.pb()(next_page_token=token, total_size=len(found))
        resp.alert_policies.extend(page)
        return resp

    def _rpc_update_policy(self, req: Any) -> Any:
        existing = self._policy(req.alert_policy.name)
        project = _project_of(existing.name.split("/alertPolicies/")[0])
        updated = _copy(existing)
        _apply_update(
            updated, req.alert_policy, req.update_mask if req.HasField("update_mask") else None, _AP
        )
        updated.name = existing.name
        updated.creation_record.CopyFrom(existing.creation_record)
        self._check_policy(project, updated)
        known = {c.name for c in existing.conditions}
        for condition in updated.conditions:
            if condition.name and condition.name not in known:
                raise _invalid(f"condition {condition.name!r} does not belong to {existing.name}")
            if not condition.name:
                condition.name = f"{existing.name}/conditions/{self._new_id()}"
        if not updated.HasField("enabled"):
            updated.enabled.value = True
        updated.mutation_record.mutate_time.CopyFrom(_timestamp(time.time()))
        updated.mutation_record.mutated_by = "fake-monitoring"
        self._policies[existing.name] = updated
        return _copy(updated)

    def _rpc_delete_policy(self, req: Any) -> Any:
        self._policy(req.name)
        del self._policies[req.name]
        return empty_pb2.Empty()

    def _policy(self, name: str) -> Any:
        if not re.match(r"^projects/[^/]+/alertPolicies/[^/]+$", name):
            raise _invalid(f"{name!r} is not an alert policy name (projects/P/alertPolicies/ID)")
        if name not in self._policies:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"Alert policy {name} does not exist")
        return self._policies[name]

    def _check_policy(self, project: str, policy: Any) -> None:
        if not policy.display_name:
            raise _invalid("alert_policy.display_name is required")
        if not policy.conditions:
            raise _invalid("An alert policy needs at least one condition")
        if len(policy.conditions) > _MAX_CONDITIONS:
            raise _invalid(f"An alert policy holds at most {_MAX_CONDITIONS} conditions")
        if len(policy.conditions) > 1 and policy.combiner == _AP.COMBINE_UNSPECIFIED:
            raise _invalid("A policy with several conditions needs a combiner (AND, OR, ...)")
        _check_labels(policy.user_labels, "alert_policy.user_labels")
        if policy.documentation.content and policy.documentation.mime_type not in ("", "text/markdown"):
            raise _invalid("documentation.mime_type must be text/markdown")
        if len(policy.documentation.content.encode()) > 10240:
            raise _invalid("documentation.content is longer than 10240 bytes")
        for i, condition in enumerate(policy.conditions):
            _check_condition(condition, f"conditions[{i}]")
        for channel in policy.notification_channels:
            if channel not in self._channels or not channel.startswith(f"projects/{project}/"):
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND, f"Notification channel {channel} does not exist in {project}"
                )

    # ------------------------------------------------------------------- notification channels
    def _rpc_create_channel(self, req: Any) -> Any:
        if req.notification_channel.name:
            raise _invalid("notification_channel.name must be empty on create; the service assigns it")
        return _copy(self._create_channel(req.name, req.notification_channel))

    def _create_channel(self, parent: str, requested: Any) -> Any:
        project = _project_of(parent)
        channel = _copy(requested)
        _check_channel(channel)
        name = f"projects/{project}/notificationChannels/{self._new_id()}"
        channel.name = name
        if not channel.HasField("enabled"):
            channel.enabled.value = True
        channel.creation_record.mutate_time.CopyFrom(_timestamp(time.time()))
        self._channels[name] = channel
        return channel

    def _rpc_get_channel(self, req: Any) -> Any:
        return _copy(self._channel(req.name))

    def _rpc_list_channels(self, req: Any) -> Any:
        project = _project_of(req.name)
        clauses = parse_filter(req.filter) if req.filter else []
        found = [
            c
            for name, c in self._channels.items()
            if name.startswith(f"projects/{project}/")
            and matches_filter(clauses, functools.partial(_channel_field, c))
        ]
        page, token = _page(found, req.page_size, req.page_token)
        resp = monitoring_v3.ListNotificationChannelsResponse.pb()(
            next_page_token=token, total_size=len(found)
        )
        resp.notification_channels.extend(page)
        return resp

    def _rpc_update_channel(self, req: Any) -> Any:
        existing = self._channel(req.notification_channel.name)
        updated = _copy(existing)
        mask = req.update_mask if req.HasField("update_mask") else None
        _apply_update(updated, req.notification_channel, mask, _NC)
        updated.name = existing.name
        updated.creation_record.CopyFrom(existing.creation_record)
        if updated.type_ != existing.type_:
            raise _invalid("notification_channel.type cannot change")
        _check_channel(updated)
        if not updated.HasField("enabled"):
            updated.enabled.value = True
        self._channels[existing.name] = updated
        return _copy(updated)

    def _rpc_delete_channel(self, req: Any) -> Any:
        self._channel(req.name)
        users = [p.name for p in self._policies.values() if req.name in p.notification_channels]
        if users and not req.force:
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Notification channel {req.name} is used by {users}; delete with force=true",
            )
        for name in users:
            policy = self._policies[name]
            kept = [c for c in policy.notification_channels if c != req.name]
            del policy.notification_channels[:]
            policy.notification_channels.extend(kept)
        del self._channels[req.name]
        return empty_pb2.Empty()

    def _channel(self, name: str) -> Any:
        if not re.match(r"^projects/[^/]+/notificationChannels/[^/]+$", name):
            raise _invalid(
                f"{name!r} is not a notification channel name (projects/P/notificationChannels/ID)"
            )
        if name not in self._channels:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"Notification channel {name} does not exist")
        return self._channels[name]

    # ------------------------------------------------------------------------------ time series
    def _rpc_list_time_series(self, req: Any) -> Any:
        project = _project_of(req.name)
        clauses = check_metric_filter(req.filter, "ListTimeSeries")
        if not req.interval.HasField("end_time"):
            raise _invalid("ListTimeSeries: interval.end_time is required")
        end = _seconds(req.interval.end_time)
        start = _seconds(req.interval.start_time) if req.interval.HasField("start_time") else end
        if start > end:
            raise _invalid("ListTimeSeries: interval.start_time is after interval.end_time")
        if req.HasField("aggregation"):
            _check_aggregation(req.aggregation, "aggregation")
        headers_only = req.view == monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS
        found = []
        for series in self._series.values():
            if series.project != project or not matches_filter(clauses, series.lookup):
                continue
            # Reads cover (start, end]; a point in time (no start) selects points ending exactly then.
            points = [p for p in series.points if (start < p[1] <= end) or (start == end == p[1])]
            if points:
                found.append(series.to_proto([] if headers_only else list(reversed(points))))
        page, token = _page(found, req.page_size, req.page_token)
        resp = monitoring_v3.ListTimeSeriesResponse.pb()(next_page_token=token)
        resp.time_series.extend(page)
        return resp

    def _rpc_create_time_series(self, req: Any) -> Any:
        project = _project_of(req.name)
        if not 1 <= len(req.time_series) <= 200:
            raise _invalid("CreateTimeSeries takes 1 to 200 time series")
        for i, ts in enumerate(req.time_series):
            if not ts.metric.type or not ts.resource.type:
                raise _invalid(f"time_series[{i}]: metric.type and resource.type are required")
            if len(ts.points) != 1:
                raise _invalid(f"time_series[{i}]: write exactly one point per time series")
        for i, ts in enumerate(req.time_series):
            point = ts.points[0]
            which = point.value.WhichOneof("value") or ""
            value_type = which.removesuffix("_value").upper()
            if value_type not in _VALUE_TYPES:
                raise _invalid(f"time_series[{i}]: value {which or 'unset'} is not supported by this fake")
            value: Any = getattr(point.value, which)
            kind = metric_pb2.MetricDescriptor.MetricKind.Name(
                ts.metric_kind or metric_pb2.MetricDescriptor.GAUGE
            )
            try:
                self.add_time_series(
                    project,
                    ts.metric.type,
                    dict(ts.resource.labels),
                    dict(ts.metric.labels),
                    [
                        (_seconds(point.interval.start_time), _seconds(point.interval.end_time), value)
                        if point.interval.HasField("start_time")
                        else (_seconds(point.interval.end_time), value)
                    ],
                    value_type,
                    metric_kind=kind,
                    resource_type=ts.resource.type,
                    unit=ts.unit,
                )
            except ValueError as exc:
                raise _invalid(str(exc)) from None
        return empty_pb2.Empty()


# ------------------------------------------------------------------------------------------- checks
def _check_aggregation(agg: Any, what: str) -> None:
    aligned = agg.per_series_aligner not in (_Aligner.ALIGN_NONE,)
    if aligned and not agg.HasField("alignment_period"):
        raise _invalid(
            f"{what}: per_series_aligner {_Aligner(agg.per_series_aligner).name} needs an alignment_period"
        )
    if agg.HasField("alignment_period") and agg.alignment_period.seconds < 1:
        raise _invalid(f"{what}: alignment_period must be at least 1 s")
    if agg.cross_series_reducer != _Reducer.REDUCE_NONE and not aligned:
        raise _invalid(f"{what}: cross_series_reducer needs a per_series_aligner")
    if agg.group_by_fields and agg.cross_series_reducer == _Reducer.REDUCE_NONE:
        raise _invalid(f"{what}: group_by_fields needs a cross_series_reducer")
    for f in agg.group_by_fields:
        if not re.match(r"^(metric|resource)\.labels?\.[A-Za-z0-9_-]+$|^(metric|resource)\.type$", f):
            raise _invalid(f"{what}: cannot group by {f!r}")


def _check_condition(condition: Any, what: str) -> None:
    if not condition.display_name:
        raise _invalid(f"{what}.display_name is required")
    which = condition.WhichOneof("condition")
    if which is None:
        raise _invalid(f"{what} needs a condition (condition_threshold, condition_absent, ...)")
    if which != "condition_threshold":
        return
    threshold = condition.condition_threshold
    check_metric_filter(threshold.filter, f"{what}.condition_threshold.filter")
    if threshold.comparison == monitoring_v3.ComparisonType.COMPARISON_UNSPECIFIED:
        raise _invalid(f"{what}.condition_threshold.comparison is required")
    if threshold.duration.seconds % 60 or threshold.duration.nanos:
        raise _invalid(f"{what}.condition_threshold.duration must be a whole number of minutes")
    if not math.isfinite(threshold.threshold_value):
        raise _invalid(f"{what}.condition_threshold.threshold_value must be finite")
    for j, agg in enumerate(threshold.aggregations):
        _check_aggregation(agg, f"{what}.condition_threshold.aggregations[{j}]")
        if agg.HasField("alignment_period") and agg.alignment_period.seconds < 60:
            raise _invalid(f"{what}: alert conditions align over at least 60 s")
    if threshold.denominator_filter:
        check_metric_filter(threshold.denominator_filter, f"{what}.condition_threshold.denominator_filter")
        periods = {a.alignment_period.seconds for a in threshold.aggregations}
        den_periods = {a.alignment_period.seconds for a in threshold.denominator_aggregations}
        if not threshold.denominator_aggregations or periods != den_periods:
            raise _invalid(
                f"{what}: denominator_aggregations must align over the same period as aggregations"
            )
    elif threshold.denominator_aggregations:
        raise _invalid(f"{what}: denominator_aggregations without a denominator_filter")


def _check_channel(channel: Any) -> None:
    # The generated message names the field type_ (``type`` is a Python builtin); the wire name is type.
    kind = channel.type_
    if kind not in _CHANNEL_TYPES:
        raise _invalid(f"notification_channel.type {kind!r} is not one of {sorted(_CHANNEL_TYPES)}")
    for label in _CHANNEL_TYPES[kind]:
        if not channel.labels.get(label):
            raise _invalid(f"A {kind} channel needs labels.{label}")
    if kind == "email" and not _EMAIL_RE.match(channel.labels["email_address"]):
        raise _invalid(f"labels.email_address {channel.labels['email_address']!r} is not an e-mail address")
    _check_labels(channel.user_labels, "notification_channel.user_labels")


def _policy_field(policy: Any, name: str) -> str | None:
    if name in ("name", "display_name"):
        return str(getattr(policy, name))
    if name == "enabled":
        return "true" if policy.enabled.value else "false"
    if name == "documentation.content":
        return str(policy.documentation.content)
    try:
        return _map_lookup(("user_labels.", "user_label."), policy.user_labels, name)
    except KeyError:
        raise _invalid(f"Unknown field {name!r} in an alert policy filter") from None


def _channel_field(channel: Any, name: str) -> str | None:
    if name == "type":
        return str(channel.type_)
    if name in ("name", "display_name", "description"):
        return str(getattr(channel, name))
    if name == "enabled":
        return "true" if channel.enabled.value else "false"
    for prefixes, mapping in (
        (("user_labels.", "user_label."), channel.user_labels),
        (("labels.", "label."), channel.labels),
    ):
        try:
            return _map_lookup(prefixes, mapping, name)
        except KeyError:
            continue
    raise _invalid(f"Unknown field {name!r} in a notification channel filter")


def _project_of(parent: str) -> str:
    m = _PROJECT_RE.match(parent)
    if m is None:
        raise _invalid(f"{parent!r} is not a project name (projects/PROJECT_ID_OR_NUMBER)")
    return m.group(1)


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _apply_update(target: Any, source: Any, mask: field_mask_pb2.FieldMask | None, pb_type: Any) -> None:
    """Apply an update: the fields in ``mask``, or every field the request set when no mask is given."""
    if mask is None or not mask.paths:
        target.CopyFrom(source)
        return
    for path in mask.paths:
        if path.split(".")[0] not in pb_type.DESCRIPTOR.fields_by_name:
            raise _invalid(f"update_mask path {path!r} is not a field of {pb_type.DESCRIPTOR.name}")
    mask.MergeMessage(source, target, replace_message_field=True, replace_repeated_field=True)


def _page(items: list[Any], page_size: int, page_token: str) -> tuple[list[Any], str]:
    try:
        offset = int(page_token) if page_token else 0
    except ValueError:
        raise _invalid(f"page_token {page_token!r} is not one this service issued") from None
    size = page_size if page_size > 0 else 1000
    page = items[offset : offset + size]
    token = str(offset + size) if offset + size < len(items) else ""
    return [_copy(i) for i in page], token


__all__ = [
    "ENDPOINT_RESOURCE_TYPE",
    "Call",
    "Clause",
    "FakeMonitoring",
    "RpcError",
    "check_metric_filter",
    "distribution",
    "parse_filter",
]
