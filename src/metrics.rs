//! Prometheus metrics of a node, served at `/metrics` in the text format.
//!
//! Invariant: counters are incremented where the event happens (cheap atomics); gauges that
//! describe state elsewhere (Redis backlog, hub registry) are read at scrape time, so a scrape
//! never reports a stale cached value.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of an attempt's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// Label of an operational event (`merchant.failing`, `notification.dead`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

/// Every metric of the node. Cheap to clone (handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Notifications enqueued through this node (API and intake).
    pub enqueued: Counter,
    /// Attempts finished by this node's worker, by outcome (delivered, retry, dead).
    pub attempts: Family<Outcome, Counter>,
    /// Attempts in flight on this node.
    pub in_flight: Gauge,
    /// Entries due (or with expired leases) that nobody holds, all partitions (read at scrape).
    pub due_backlog: Gauge,
    /// Order results published through this node.
    pub results_published: Counter,
    /// Result frames handed to local followers.
    pub results_pushed: Counter,
    /// Followers cut off because their send queue was full.
    pub slow_followers_cut: Counter,
    /// Open websocket connections.
    pub ws_connections: Gauge,
    /// Order subscriptions held by local followers (read at scrape).
    pub ws_subscriptions: Gauge,
    /// Distinct orders this node is subscribed to in Redis (read at scrape).
    pub orders_followed: Gauge,
    /// 1 when the pub/sub connection is up (read at scrape).
    pub pubsub_connected: Gauge,
    /// Redis commands that failed.
    pub redis_errors: Counter,
    /// Delivered and dead notifications this node's retention sweep forgot.
    pub forgotten: Counter,
    /// Seconds from an attempt's due time to its start on this node.
    pub lateness: Histogram,
    /// Seconds an attempt's HTTP exchange took (connect to response body).
    pub attempt_duration: Histogram,
    /// Intake entries read by no consumer yet, plus those read but not acknowledged (read at scrape).
    pub intake_lag: Gauge,
    /// Devices connected to this node (read at scrape).
    pub devices_online: Gauge,
    /// Device calls made through this node that wait for their reply (read at scrape).
    pub device_calls_waiting: Gauge,
    /// Device calls made through this node, by outcome (ok, device_error, offline, timeout,
    /// busy).
    pub device_calls: Family<Outcome, Counter>,
    /// Circuit breakers this node saw open (or open again after a failed probe).
    pub breaker_opened: Counter,
    /// Destinations whose breaker is open or half-open, as this node last read them.
    pub breakers_open: Gauge,
    /// Operational events this node enqueued for `--ops-events-url`, by event.
    pub ops_events: Family<EventLabel, Counter>,
    /// 0 while the node drains for shutdown, else 1.
    pub ready: Gauge,
    /// When the Redis-backed gauges were last read (ms since the epoch; not exported): scrapes
    /// closer together than [`STATS_EVERY_MS`] reuse them, so `/metrics` (unauthenticated)
    /// cannot be used to load Redis.
    pub stats_read_ms: Arc<std::sync::atomic::AtomicI64>,
}

/// Least time between two reads of the Redis-backed gauges.
pub const STATS_EVERY_MS: i64 = 2_000;

/// Buckets (seconds) for lateness and attempt latency: 1 ms to about 65 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // long: one registration per metric, each with its help text; splitting it would only
    // separate a metric from its help.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("paynotify");
        let m = Self {
            registry: Arc::new(Registry::default()),
            enqueued: Counter::default(),
            attempts: Family::default(),
            in_flight: Gauge::default(),
            due_backlog: Gauge::default(),
            results_published: Counter::default(),
            results_pushed: Counter::default(),
            slow_followers_cut: Counter::default(),
            ws_connections: Gauge::default(),
            ws_subscriptions: Gauge::default(),
            orders_followed: Gauge::default(),
            pubsub_connected: Gauge::default(),
            redis_errors: Counter::default(),
            forgotten: Counter::default(),
            lateness: Histogram::new(latency_buckets()),
            attempt_duration: Histogram::new(latency_buckets()),
            intake_lag: Gauge::default(),
            devices_online: Gauge::default(),
            device_calls_waiting: Gauge::default(),
            device_calls: Family::default(),
            ops_events: Family::default(),
            breaker_opened: Counter::default(),
            breakers_open: Gauge::default(),
            ready: Gauge::default(),
            stats_read_ms: Arc::default(),
        };
        // Every known label value exists from the start at 0: Prometheus then sees the first
        // event of each as a step (rate() and increase() count it), and dashboards find every
        // series. The words are those of `Settled::as_str`, `http::v1::devices` and
        // `merchants::health::Event`.
        for outcome in ["delivered", "retry", "dead"] {
            let _ = m.attempts.get_or_create(&Outcome { outcome });
        }
        for outcome in ["ok", "device_error", "offline", "timeout", "busy"] {
            let _ = m.device_calls.get_or_create(&Outcome { outcome });
        }
        for event in [
            "notification.dead",
            "merchant.failing",
            "merchant.recovered",
            "merchant.disabled",
        ] {
            let _ = m.ops_events.get_or_create(&EventLabel { event });
        }
        r.register(
            "enqueued",
            "Notifications enqueued through this node",
            m.enqueued.clone(),
        );
        r.register(
            "attempts",
            "Delivery attempts finished on this node, by outcome",
            m.attempts.clone(),
        );
        r.register(
            "breaker_opened",
            "Circuit breakers of destinations this node saw open",
            m.breaker_opened.clone(),
        );
        r.register(
            "breakers_open",
            "Destinations whose circuit breaker is open or half-open (this node's view)",
            m.breakers_open.clone(),
        );
        r.register(
            "ops_events",
            "Operational events enqueued for --ops-events-url, by event",
            m.ops_events.clone(),
        );
        r.register(
            "in_flight",
            "Delivery attempts in flight on this node",
            m.in_flight.clone(),
        );
        r.register(
            "due_backlog",
            "Due notifications nobody holds yet (all partitions)",
            m.due_backlog.clone(),
        );
        r.register(
            "results_published",
            "Order results published through this node",
            m.results_published.clone(),
        );
        r.register(
            "results_pushed",
            "Result frames handed to local followers",
            m.results_pushed.clone(),
        );
        r.register(
            "slow_followers_cut",
            "Followers cut off for reading too slowly",
            m.slow_followers_cut.clone(),
        );
        r.register(
            "ws_connections",
            "Open websocket connections",
            m.ws_connections.clone(),
        );
        r.register(
            "ws_subscriptions",
            "Order subscriptions of local followers",
            m.ws_subscriptions.clone(),
        );
        r.register(
            "orders_followed",
            "Orders this node is subscribed to in Redis",
            m.orders_followed.clone(),
        );
        r.register(
            "pubsub_connected",
            "1 when the pub/sub connection is up",
            m.pubsub_connected.clone(),
        );
        r.register(
            "redis_errors",
            "Redis commands that failed",
            m.redis_errors.clone(),
        );
        r.register(
            "retention_forgotten",
            "Delivered and dead notifications forgotten by this node's retention sweep",
            m.forgotten.clone(),
        );
        r.register(
            "lateness_seconds",
            "Seconds from an attempt's due time to its start",
            m.lateness.clone(),
        );
        r.register(
            "attempt_duration_seconds",
            "Seconds one delivery attempt's HTTP exchange took",
            m.attempt_duration.clone(),
        );
        r.register(
            "intake_lag",
            "Intake stream entries not yet read or not yet acknowledged",
            m.intake_lag.clone(),
        );
        r.register(
            "devices_online",
            "Devices connected to this node",
            m.devices_online.clone(),
        );
        r.register(
            "device_calls_waiting",
            "Device calls made through this node that wait for their reply",
            m.device_calls_waiting.clone(),
        );
        r.register(
            "device_calls",
            "Device calls made through this node, by outcome",
            m.device_calls.clone(),
        );
        r.register(
            "ready",
            "1 when the node takes work, 0 while it drains for shutdown",
            m.ready.clone(),
        );
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
