"""A loopback fake of the Cloud Monitoring dashboards REST API (``projects.dashboards``).

It speaks what ``google.cloud.monitoring_dashboard_v1.DashboardsServiceClient(transport="rest")``
sends: ``POST/GET /v1/projects/P/dashboards``, ``GET/PATCH/DELETE /v1/projects/P/dashboards/ID``,
JSON bodies in the protobuf JSON mapping with ``$alt=json;enum-encoding=int`` (enums as numbers),
and errors as ``{"error": {"code", "message", "status"}}``. Bodies are parsed strictly into the real
``Dashboard`` message (an unknown field is a 400), and checked as the service checks them: a
display name and exactly one layout, mosaic tiles inside the grid and not overlapping, chart
filters naming one ``metric.type``, label format; an update whose ``etag`` is stale is a 409
``ABORTED``.

Fault injection: :meth:`FakeDashboards.fail_next` answers the next call(s) with an HTTP error,
before or after applying the change.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.cloud import monitoring_dashboard_v1
from google.protobuf import json_format

from tests.fakes.loopback import LoopbackHTTPServer
from tests.fakes.monitoring import RpcError, check_metric_filter

_Dashboard = monitoring_dashboard_v1.Dashboard.pb()
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
_COLLECTION_RE = re.compile(r"^/v1/projects/([^/]+)/dashboards$")
_ITEM_RE = re.compile(r"^/v1/projects/([^/]+)/dashboards/([^/]+)$")
_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_MAX_COLUMNS = 48


class HttpError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS.get(code, "UNKNOWN")


@dataclass
class DashboardCall:
    """One HTTP request the fake received."""

    method: str  # CreateDashboard, ListDashboards, GetDashboard, UpdateDashboard, DeleteDashboard
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]


@dataclass
class _Fault:
    method: str | None
    code: int
    message: str
    remaining: int
    after_commit: bool


class FakeDashboards(LoopbackHTTPServer):
    """The dashboards REST API on a loopback port; ``with FakeDashboards() as fake:``.

    Clients reach it at :attr:`address` (``http://127.0.0.1:PORT``). Introspection returns copies
    as proto-plus ``Dashboard`` messages.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._dashboards: dict[str, Any] = {}
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1)
        self.calls: list[DashboardCall] = []

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeDashboards:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._serve(Handler, name="fake-dashboards")
        return self

    # ------------------------------------------------------------------------ test-facing API
    def fail_next(
        self,
        method: str | None = None,
        code: int = 503,
        *,
        times: int = 1,
        message: str = "injected fault",
        after_commit: bool = False,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (any when None) with HTTP ``code``."""
        with self._lock:
            self._faults.append(_Fault(method, code, message, times, after_commit))

    def dashboards(self, project: str | None = None) -> list[monitoring_dashboard_v1.Dashboard]:
        """The stored dashboards (of ``project`` when given), oldest first."""
        with self._lock:
            return [
                monitoring_dashboard_v1.Dashboard.wrap(_copy(d))
                for name, d in self._dashboards.items()
                if project is None or name.startswith(f"projects/{project}/")
            ]

    def calls_of(self, method: str) -> list[DashboardCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def touch(self, name: str) -> None:
        """Change a dashboard's etag, as an edit in the console would."""
        with self._lock:
            dash = self._dashboards[name]
            dash.etag = _etag(dash, salt=str(next(self._ids)))

    # ---------------------------------------------------------------------------- handling
    def handle(self, verb: str, path: str, query: dict[str, list[str]], body: dict[str, Any]) -> Any:
        method, args = _route(verb, path)
        with self._lock:
            self.calls.append(DashboardCall(method, path, query, body))
            fault = next((f for f in self._faults if f.remaining > 0 and f.method in (None, method)), None)
            if fault is not None:
                fault.remaining -= 1
                if not fault.after_commit:
                    raise HttpError(fault.code, fault.message)
            result = getattr(self, f"_{method}")(*args, query=query, body=body)
            if fault is not None:
                raise HttpError(fault.code, fault.message)
            return result

    def _CreateDashboard(self, project: str, *, query: dict[str, list[str]], body: dict[str, Any]) -> Any:  # noqa: N802
        dash = _parse(body)
        if dash.name:
            m = re.match(rf"^projects/{re.escape(project)}/dashboards/([^/]+)$", dash.name)
            if m is None:
                raise HttpError(400, f"dashboard.name {dash.name!r} is not under projects/{project}")
            if dash.name in self._dashboards:
                raise HttpError(409, f"Dashboard {dash.name} already exists", "ALREADY_EXISTS")
        else:
            dash.name = f"projects/{project}/dashboards/{next(self._ids):08x}-vxfake"
        _check_dashboard(dash)
        dash.etag = _etag(dash)
        if _flag(query, "validateOnly"):
            return dash
        self._dashboards[dash.name] = dash
        return _copy(dash)

    def _ListDashboards(self, project: str, *, query: dict[str, list[str]], body: dict[str, Any]) -> Any:  # noqa: N802
        found = [d for n, d in self._dashboards.items() if n.startswith(f"projects/{project}/")]
        size = int(query.get("pageSize", ["0"])[0] or 0) or 1000
        offset = int(query.get("pageToken", ["0"])[0] or 0)
        resp = monitoring_dashboard_v1.ListDashboardsResponse.pb()()
        resp.dashboards.extend(_copy(d) for d in found[offset : offset + size])
        if offset + size < len(found):
            resp.next_page_token = str(offset + size)
        return resp

    def _GetDashboard(
        self, project: str, dash_id: str, *, query: dict[str, list[str]], body: dict[str, Any]
    ) -> Any:  # noqa: N802
        return _copy(self._get(project, dash_id))

    def _UpdateDashboard(
        self, project: str, dash_id: str, *, query: dict[str, list[str]], body: dict[str, Any]
    ) -> Any:  # noqa: N802
        existing = self._get(project, dash_id)
        dash = _parse(body)
        if dash.name and dash.name != existing.name:
            raise HttpError(400, f"dashboard.name {dash.name!r} does not match the URL")
        if dash.etag and dash.etag != existing.etag:
            raise HttpError(409, f"etag {dash.etag!r} is stale: the dashboard changed since it was read")
        dash.name = existing.name
        _check_dashboard(dash)
        dash.etag = _etag(dash, salt=existing.etag)
        if _flag(query, "validateOnly"):
            return dash
        self._dashboards[existing.name] = dash
        return _copy(dash)

    def _DeleteDashboard(
        self, project: str, dash_id: str, *, query: dict[str, list[str]], body: dict[str, Any]
    ) -> Any:  # noqa: N802
        existing = self._get(project, dash_id)
        del self._dashboards[existing.name]
        return None

    def _get(self, project: str, dash_id: str) -> Any:
        name = f"projects/{project}/dashboards/{dash_id}"
        if name not in self._dashboards:
            raise HttpError(404, f"Dashboard {name} does not exist")
        return self._dashboards[name]


def _route(verb: str, path: str) -> tuple[str, tuple[str, ...]]:
    collection = _COLLECTION_RE.match(path)
    item = _ITEM_RE.match(path)
    if collection and verb == "POST":
        return "CreateDashboard", (collection.group(1),)
    if collection and verb == "GET":
        return "ListDashboards", (collection.group(1),)
    if item and verb in ("GET", "PATCH", "DELETE"):
        method = {"GET": "GetDashboard", "PATCH": "UpdateDashboard", "DELETE": "DeleteDashboard"}[verb]
        return method, (item.group(1), item.group(2))
    raise HttpError(404, f"No route for {verb} {path}", "NOT_FOUND")


def _parse(body: dict[str, Any]) -> Any:
    dash = _Dashboard()
    try:
        json_format.ParseDict(body, dash)
    except json_format.ParseError as exc:
        raise HttpError(400, f"Invalid JSON payload received. {exc}") from None
    return dash


def _check_dashboard(dash: Any) -> None:
    if not dash.display_name:
        raise HttpError(400, "dashboard.display_name is required")
    for key, value in dash.labels.items():
        if not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(value):
            raise HttpError(
                400, f"label {key}={value!r}: use lowercase letters, digits, '_' and '-' (at most 63)"
            )
    layout = dash.WhichOneof("layout")
    if layout is None:
        raise HttpError(400, "A dashboard needs a layout (grid, mosaic, row or column)")
    if layout == "mosaic_layout":
        mosaic = dash.mosaic_layout
        columns = mosaic.columns or 12
        if not 1 <= columns <= _MAX_COLUMNS:
            raise HttpError(400, f"mosaic_layout.columns {columns} is outside 1..{_MAX_COLUMNS}")
        taken: set[tuple[int, int]] = set()
        for i, tile in enumerate(mosaic.tiles):
            where = f"mosaic_layout.tiles[{i}]"
            if tile.width < 1 or tile.height < 1 or tile.x_pos < 0 or tile.y_pos < 0:
                raise HttpError(400, f"{where}: position and size must be positive")
            if tile.x_pos + tile.width > columns:
                raise HttpError(
                    400, f"{where}: x_pos + width {tile.x_pos + tile.width} exceeds {columns} columns"
                )
            cells = {
                (x, y)
                for x in range(tile.x_pos, tile.x_pos + tile.width)
                for y in range(tile.y_pos, tile.y_pos + tile.height)
            }
            if cells & taken:
                raise HttpError(400, f"{where} overlaps another tile")
            taken |= cells
            _check_widget(tile.widget, f"{where}.widget")
    else:
        for i, widget in enumerate(_widgets_of(dash, layout)):
            _check_widget(widget, f"{layout}.widgets[{i}]")


def _widgets_of(dash: Any, layout: str) -> list[Any]:
    if layout == "grid_layout":
        return list(dash.grid_layout.widgets)
    if layout == "row_layout":
        return [w for row in dash.row_layout.rows for w in row.widgets]
    return [w for col in dash.column_layout.columns for w in col.widgets]


def _check_widget(widget: Any, where: str) -> None:
    content = widget.WhichOneof("content")
    if content is None:
        raise HttpError(400, f"{where} has no content (xy_chart, scorecard, text, ...)")
    if content == "xy_chart":
        if not widget.xy_chart.data_sets:
            raise HttpError(400, f"{where}.xy_chart needs at least one data set")
        for j, data_set in enumerate(widget.xy_chart.data_sets):
            _check_query(data_set.time_series_query, f"{where}.xy_chart.data_sets[{j}]")
    elif content == "scorecard":
        _check_query(widget.scorecard.time_series_query, f"{where}.scorecard")


def _check_query(query: Any, where: str) -> None:
    source = query.WhichOneof("source")
    if source is None:
        raise HttpError(400, f"{where}.time_series_query has no source")
    try:
        if source == "time_series_filter":
            check_metric_filter(query.time_series_filter.filter, f"{where} filter")
        elif source == "time_series_filter_ratio":
            ratio = query.time_series_filter_ratio
            check_metric_filter(ratio.numerator.filter, f"{where} numerator filter")
            check_metric_filter(ratio.denominator.filter, f"{where} denominator filter")
    except RpcError as err:
        raise HttpError(400, err.message) from None


def _etag(dash: Any, salt: str = "") -> str:
    content = _copy(dash)
    content.etag = ""
    return hashlib.sha256(content.SerializeToString(deterministic=True) + salt.encode()).hexdigest()[:16]


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() == "true"


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


class _Handler(BaseHTTPRequestHandler):
    owner: FakeDashboards
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _serve(self, verb: str) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        # The REST clients ask for enums as numbers with $alt=json;enum-encoding=int.
        ints = "enum-encoding=int" in unquote(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise HttpError(400, "The request body must be a JSON object")
            result = self.owner.handle(verb, unquote(parts.path), query, body)
        except json.JSONDecodeError as exc:
            self._reply(400, _error_body(HttpError(400, f"Invalid JSON payload received. {exc}")))
            return
        except HttpError as err:
            self._reply(err.code, _error_body(err))
            return
        payload = {} if result is None else json_format.MessageToDict(result, use_integers_for_enums=ints)
        self._reply(200, payload)

    def _reply(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")


def _error_body(err: HttpError) -> dict[str, Any]:
    return {"error": {"code": err.code, "message": err.message, "status": err.status}}


__all__ = ["DashboardCall", "FakeDashboards"]
