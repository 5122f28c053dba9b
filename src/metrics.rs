//! Every metric Yoom exports, named once. Labels never carry room or member ids, so the number
//! of series stays bounded however many rooms come and go.
//!
//! One `Metrics` per server instance (not a global), so tests can run several servers in one
//! process and read each one's numbers.

use prometheus::{
    Counter, Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// WebSocket connections accepted since start.
    pub ws_connections_total: IntCounter,
    /// WebSocket connections open now.
    pub ws_connections: IntGauge,
    /// Client messages by `type` (unknown types are counted as `invalid`).
    pub ws_messages_total: IntCounterVec,
    /// Errors sent to clients, by code.
    pub signal_errors_total: IntCounterVec,
    /// Connections closed by the server, by reason (slow_consumer, rate_limited, idle, shutdown).
    pub ws_disconnects_total: IntCounterVec,
    /// Rooms with at least one member.
    pub rooms: IntGauge,
    /// Members in rooms.
    pub room_members: IntGauge,
    /// Joins accepted / refused (`state` = joined, room_full).
    pub participant_join_total: IntCounterVec,
    /// Chat messages delivered to the room.
    pub chat_messages_total: IntCounter,
    /// Peer connections built and not yet closed.
    pub peer_connections: IntGauge,
    /// Media tasks (ingress, egress, keyframe, member media) running now.
    pub media_tasks: IntGauge,
    /// Tracks published, by kind.
    pub track_published_total: IntCounterVec,
    /// Forwarded tracks set up for a subscriber, by kind.
    pub track_subscribed_total: IntCounterVec,
    /// RTP packets received from publishers.
    pub packets_in_total: IntCounter,
    /// RTP bytes (payload) received from publishers.
    pub bytes_in_total: IntCounter,
    /// RTP packets handed to subscribers' connections.
    pub packets_forwarded_total: IntCounter,
    /// RTP payload bytes handed to subscribers' connections.
    pub bytes_forwarded_total: IntCounter,
    /// Packets not forwarded to a subscriber because its queue was full.
    pub drops_queue_full_total: IntCounter,
    /// Datagrams the shared UDP socket dropped, by reason.
    pub udp_mux_drops: IntCounterVec,
    /// Keyframe requests (PLI) sent to publishers.
    pub pli_sent_total: IntCounter,
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests_in_total: IntCounter,
    /// This process's CPU time (user + system), refreshed at every scrape.
    process_cpu_seconds_total: Counter,
    /// This process's resident memory, refreshed at every scrape.
    process_resident_memory_bytes: IntGauge,
    cpu_seconds_seen: std::sync::Mutex<f64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("yoom".into()), None)
            // OK because the prefix is a constant, valid metric name prefix.
            .expect("valid registry prefix");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        Metrics {
            ws_connections_total: counter(
                "ws_connections_total",
                "WebSocket connections accepted since start",
            ),
            ws_connections: gauge("ws_connections", "WebSocket connections open now"),
            ws_messages_total: counter_vec(
                "ws_messages_total",
                "Client signaling messages received, by type",
                &["type"],
            ),
            signal_errors_total: counter_vec(
                "signal_errors_total",
                "Signaling errors sent to clients, by code",
                &["code"],
            ),
            ws_disconnects_total: counter_vec(
                "ws_disconnects_total",
                "Connections closed by the server, by reason",
                &["reason"],
            ),
            rooms: gauge("room_total", "Rooms with at least one member"),
            room_members: gauge("participant_total", "Members in rooms"),
            participant_join_total: counter_vec(
                "participant_join_total",
                "Join attempts, by outcome",
                &["state"],
            ),
            chat_messages_total: counter("chat_messages_total", "Chat messages sent to rooms"),
            peer_connections: gauge("peer_connections", "Peer connections open now"),
            media_tasks: gauge("media_tasks", "Media tasks running now"),
            track_published_total: counter_vec(
                "track_published_total",
                "Tracks published, by kind",
                &["kind"],
            ),
            track_subscribed_total: counter_vec(
                "track_subscribed_total",
                "Tracks forwarded to a subscriber, by kind",
                &["kind"],
            ),
            packets_in_total: counter("packets_in_total", "RTP packets received from publishers"),
            bytes_in_total: counter(
                "bytes_in_total",
                "RTP payload bytes received from publishers",
            ),
            packets_forwarded_total: counter(
                "packets_forwarded_total",
                "RTP packets forwarded to subscribers",
            ),
            bytes_forwarded_total: counter(
                "bytes_forwarded_total",
                "RTP payload bytes forwarded to subscribers",
            ),
            drops_queue_full_total: counter(
                "forward_drops_queue_full_total",
                "Packets dropped for a subscriber whose queue was full",
            ),
            udp_mux_drops: counter_vec(
                "udp_mux_drops_total",
                "Datagrams dropped by the shared media UDP socket: unknown_source (not a \
                 connectivity check for a live connection), connection_behind (its inbox was \
                 full), send_buffer_full",
                &["reason"],
            ),
            pli_sent_total: counter("pli_sent_total", "Keyframe requests sent to publishers"),
            keyframe_requests_in_total: counter(
                "keyframe_requests_in_total",
                "PLI/FIR received from subscribers",
            ),
            process_cpu_seconds_total: {
                let c = Counter::new(
                    "process_cpu_seconds_total",
                    "CPU time (user + system) of the Yoom process, in seconds",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            process_resident_memory_bytes: gauge(
                "process_resident_memory_bytes",
                "Resident memory of the Yoom process",
            ),
            cpu_seconds_seen: std::sync::Mutex::new(0.0),
            registry,
        }
    }

    fn refresh_process(&self) {
        let sample = crate::proc_stat::ProcessSample::of_self();
        self.process_resident_memory_bytes
            .set(sample.rss_bytes as i64);
        let mut seen = self
            .cpu_seconds_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if sample.cpu_seconds > *seen {
            self.process_cpu_seconds_total
                .inc_by(sample.cpu_seconds - *seen);
            *seen = sample.cpu_seconds;
        }
    }

    /// Counts a running task in `media_tasks` until the guard is dropped.
    pub fn task_guard(&self) -> GaugeGuard {
        GaugeGuard::new(self.media_tasks.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.refresh_process();
        let mut buf = Vec::new();
        // OK because encoding into a Vec cannot fail and the text format is UTF-8.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encode metrics");
        String::from_utf8(buf).expect("metrics text is utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Increments a gauge now and decrements it when dropped, so a count of live things cannot
/// drift whichever way a task ends.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
