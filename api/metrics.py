"""Prometheus metrics, one registry per app (tests build many apps in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "TRANSPORT_LIMIT_HITS"]

# Limits the WebSocket transport (server/lean_ws.py) enforced, by name: process-wide
# counts (the transport has no gateway), exported by every app's registry as
# ``syncline_ws_transport_limits_total{limit}``.
TRANSPORT_LIMIT_HITS: dict[str, int] = {}


class _TransportLimits:
    def collect(self):  # (prometheus_client's collector protocol)
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("syncline_ws_transport_limits", "WebSocket transport limits hit: "
                                     "message_size, preauth_size, message_timeout, handshake_timeout, "
                                     "close_discard", labels=["limit"])
        for name, n in sorted(TRANSPORT_LIMIT_HITS.items()):
            family.add_metric([name], n)
        yield family


STORE_OPS = ("append", "commit", "read")
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "syncline_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.http_latency = Histogram(
            "syncline_http_request_seconds", "HTTP request latency", ["method", "route"], registry=r
        )
        self.ws_connections = Gauge("syncline_ws_connections", "Open WebSocket connections", ["endpoint"], registry=r)
        self.ws_messages = Counter(
            "syncline_ws_messages_total", "WebSocket messages", ["endpoint", "direction"], registry=r
        )
        self.ws_closes = Counter(
            "syncline_ws_closes_total", "WebSocket closes by code", ["endpoint", "code"], registry=r
        )
        self.events_appended = Counter(
            "syncline_events_appended_total", "Events appended by the gateway", ["via"], registry=r
        )
        self.rate_limited = Counter(
            "syncline_rate_limited_total", "Rate-limit warnings and disconnects", ["action"], registry=r
        )
        self.auth_failures = Counter("syncline_auth_failures_total", "Refused authentications", ["code"], registry=r)
        self.security_events = Counter("syncline_security_events_total", "Security events", ["kind"], registry=r)
        self.security_recorded = Counter(
            "syncline_security_events_recorded_total",
            "Security events written to $security (first of a window, or a window's summary)", ["kind"], registry=r)
        self.audit_checkpoints = Gauge("syncline_audit_checkpoints_written",
                                       "Signed audit checkpoints this process wrote", registry=r)
        self.audit_checkpoint_failures = Gauge("syncline_audit_checkpoint_failures",
                                               "Audit checkpoints this process failed to write", registry=r)
        self.security_overflow = Counter(
            "syncline_security_aggregate_overflow_total",
            "Refused attempts not aggregated per principal because the window table was full", registry=r)
        self.yjs_updates = Counter("syncline_yjs_updates_total", "Yjs updates appended and relayed", registry=r)
        self.yjs_updates_from_log = Counter(
            "syncline_yjs_updates_from_log_total",
            "Yjs updates a loaded room applied from the log (written by another gateway, REST or the bus, "
            "or missed by the Redis relay)", registry=r)
        self.yjs_refused = Counter("syncline_yjs_refused_total",
                                   "Yjs updates refused before the log (update_never_fits, pending_overflow, "
                                   "undecodable), each closing its client", ["code"], registry=r)
        self.messages_stored = Counter("syncline_messages_total", "Room and direct messages stored in the log",
                                       ["kind"], registry=r)
        self.follower_position = Gauge("syncline_follower_position",
                                       "Log position the gateway's realtime follower has read up to", registry=r)
        self.docs_loaded = Gauge("syncline_docs_loaded", "Yjs documents held in memory", registry=r)
        self.hub_queue_depth = Gauge("syncline_hub_queue_depth", "Hub messages waiting for the Redis publisher",
                                     registry=r)
        self.hub_published = Counter("syncline_hub_published_total", "Hub messages published to Redis", registry=r)
        self.hub_dropped = Counter("syncline_hub_dropped_total",
                                   "Hub messages not published to Redis (delivered locally only)", ["reason"],
                                   registry=r)
        self.ban_redis_fallback = Counter("syncline_ban_redis_fallback_total",
                                          "Shared-ban Redis operations that failed (local ban list used alone)",
                                          ["op"], registry=r)
        # (engine/access.py; docs/security.md#access)
        self.access_refused = Counter("syncline_access_refused_total",
                                      "Reads and writes refused by the access rule (system streams, inboxes, "
                                      "token scopes)", ["path", "code"], registry=r)
        self.access_hidden = Counter("syncline_access_hidden_events_total",
                                     "Events left out of a read because the caller may not read their stream",
                                     ["path"], registry=r)

        self.revocations = Counter("syncline_token_revocations_total",
                                   "Token revocations applied by this gateway (recorded here or read from the log)",
                                   registry=r)
        self.revoked_sessions = Counter("syncline_revoked_sessions_total",
                                        "Open connections closed because their token was revoked", registry=r)
        self.token_expired_sessions = Counter("syncline_token_expired_sessions_total",
                                              "Open connections closed at their token's exp", ["endpoint"],
                                              registry=r)
        self.auth_refreshes = Counter("syncline_auth_refreshes_total",
                                      "In-band token refreshes (native 'auth'), by outcome", ["outcome"], registry=r)
        self.origin_refused = Counter("syncline_ws_origin_refused_total",
                                      "WebSocket handshakes refused (403) for an Origin not on the allow-list",
                                      registry=r)
        self.ops_rejected = Counter("syncline_ops_rejected_total",
                                    "Record ops refused, by reason (clock_skew, clock_unseen, invalid_clock...)",
                                    ["reason"], registry=r)

        self.errors_masked = Counter("syncline_errors_masked_total",
                                     "Server-side failures answered with a generic message (the details are logged)",
                                     ["code"], registry=r)
        self.bodies_refused = Counter("syncline_bodies_refused_total",
                                      "Request bodies refused before any handler ran (invalid_json, too_deep)",
                                      ["code"], registry=r)
        self.limits_hit = Counter(
            "syncline_limits_hit_total",
            "Limits hit (docs/security.md#limits): connections_per_user, connections_per_ip, presence_state, "
            "rooms_per_connection, yjs_rate, doc_quota, rest_rate, ws_message_size, ...", ["limit"], registry=r)

        # -- docs/observability.md#metrics (issue 17) ----------------------------------
        self.events_delivered = Counter(
            "syncline_events_delivered_total",
            "Events written to subscribers: native WebSocket pages and poll responses (path), Yjs updates "
            "relayed to a room's connections (yjs)", ["path"], registry=r)
        self.delivery_latency = Histogram(
            "syncline_delivery_latency_seconds",
            "From an event's commit (its server time) to the frame that carries it written to the socket; "
            "native: the newest event of each page, yjs: each update, timed at its first reader", ["endpoint"],
            buckets=DELIVERY_BUCKETS, registry=r)
        self.store_latency = Histogram(
            "syncline_store_latency_seconds",
            "Event store latency by op: append (a caller's wait, group commit included), commit (one "
            "group-commit transaction), read (one page of the log or a stream)", ["op"],
            buckets=STORE_BUCKETS, registry=r)
        self.conflicts = Counter(
            "syncline_conflicts_total",
            "Record ops that met a concurrent write, by the field's strategy (lww, merge, manual) and outcome "
            "(merged: settled, superseded: this write lost under LWW, kept: a manual conflict opened or grew, "
            "resolved: a manual conflict closed)", ["strategy", "outcome"], registry=r)
        self.redis_up = Gauge("syncline_redis_up",
                              "Redis as the hub sees it: 1 up, 0 down or connecting, -1 not configured", registry=r)
        self.traceparent_invalid = Counter(
            "syncline_traceparent_invalid_total",
            "W3C traceparent values ignored because they were malformed (rest, ws_upgrade, ws_hello, ws_message)",
            ["path"], registry=r)
        # every series present from the start (a scrape shows 0, not nothing); bound once
        self._store_ops = {op: self.store_latency.labels(op) for op in STORE_OPS}
        self._delivery = {ep: self.delivery_latency.labels(ep) for ep in ("native", "yjs")}

        r.register(_TransportLimits())

    def observe_delivery(self, endpoint: str, seconds: float) -> None:
        """A frame carrying events was written (api/wsbase.py Outbox)."""
        child = self._delivery.get(endpoint)
        if child is None:
            child = self._delivery[endpoint] = self.delivery_latency.labels(endpoint)
        child.observe(seconds)

    def observe_store(self, op: str, seconds: float) -> None:
        """The store's latency hook (store/instruments.py)."""
        self._store_ops[op].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
