//! Every metric Yoom exports, named once. Labels never carry room or member ids, so the number
//! of series stays bounded however many rooms come and go.
//!
//! One `Metrics` per server instance (not a global), so tests can run several servers in one
//! process and read each one's numbers.

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
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
    /// Connections closed by the server, by reason (slow_consumer, rate_limited, idle, shutdown,
    /// kicked, invalid_utf8, too_large).
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
    /// Media tasks (ingress, keyframe-request relay, member media) running now.
    pub media_tasks: IntGauge,
    /// Tracks published, by kind.
    pub track_published_total: IntCounterVec,
    /// Published tracks live now.
    pub published_tracks: IntGauge,
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
    /// `forward_drops_total{reason}`: packets not forwarded to a subscriber because its queue
    /// was full, its connection was not up yet, or the track is muted by an administrator.
    /// Children resolved once: no label lookup on the packet path.
    pub drops_queue_full: IntCounter,
    pub drops_not_connected: IntCounter,
    pub drops_server_muted: IntCounter,
    /// RTP on the wire, `packet_total{direction,transmission}` and `packet_bytes{…}`.
    pub wire: WireCounters,
    /// Round-trip time from subscribers' receiver reports.
    pub rtt_ms: Histogram,
    /// Interarrival jitter subscribers report for what Yoom sends them.
    pub jitter_us: Histogram,
    /// From a packet's arrival at the ingress to its hand-over to a subscriber's connection.
    pub forward_latency_us: Histogram,
    /// Offer to applied answer, by connection (`pc` = publish, subscribe).
    pub negotiation_seconds: HistogramVec,
    /// From a member's join to the first video packet forwarded to it.
    pub join_to_first_video_seconds: Histogram,
    /// Peer connections created, by `pc`.
    pub connection_total: IntCounterVec,
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
    /// Bytes the allocator has handed out and not had back, refreshed at every scrape; `None`
    /// where the allocator cannot say (not glibc).
    heap_in_use_bytes: Option<IntGauge>,
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
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let forward_drops = counter_vec(
            "forward_drops_total",
            "Packets not forwarded to a subscriber, by reason (queue_full: its connection's send \
             queue was full; not_connected; server_muted)",
            &["reason"],
        );
        let packet_total = counter_vec(
            "packet_total",
            "RTP packets on the wire, by direction (incoming from publishers, outgoing to \
             subscribers) and transmission (original, retransmit)",
            &["direction", "transmission"],
        );
        let packet_bytes = counter_vec(
            "packet_bytes",
            "RTP bytes on the wire (header and payload, before encryption), by direction and \
             transmission",
            &["direction", "transmission"],
        );
        let nack = counter_vec(
            "nack_total",
            "RTCP NACK packets, by direction (incoming: from subscribers; outgoing: to publishers)",
            &["direction"],
        );
        let pli = counter_vec(
            "pli_total",
            "RTCP PLI packets, by direction (incoming: from subscribers; outgoing: to publishers)",
            &["direction"],
        );
        let fir = counter_vec(
            "fir_total",
            "RTCP FIR packets, by direction (incoming: from subscribers; outgoing: to publishers)",
            &["direction"],
        );
        let loss = counter_vec(
            "packet_loss_total",
            "Packets lost according to receiver reports, by direction (incoming: from publishers, \
             as Yoom reports; outgoing: to subscribers, as they report)",
            &["direction"],
        );
        let metrics = Metrics {
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
            published_tracks: gauge("published_tracks", "Published tracks live now"),
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
            drops_queue_full: forward_drops.with_label_values(&["queue_full"]),
            drops_not_connected: forward_drops.with_label_values(&["not_connected"]),
            drops_server_muted: forward_drops.with_label_values(&["server_muted"]),
            wire: WireCounters::new(&packet_total, &packet_bytes, &nack, &pli, &fir, &loss),
            rtt_ms: histogram(
                "rtt_ms",
                "Round-trip time to subscribers, from their RTCP receiver reports (ms)",
                vec![
                    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0,
                ],
            ),
            jitter_us: histogram(
                "jitter_us",
                "Interarrival jitter subscribers report for forwarded streams (µs)",
                vec![
                    100.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0,
                    100_000.0,
                ],
            ),
            forward_latency_us: histogram(
                "forward_latency_us",
                "Time from a packet's arrival to its hand-over to a subscriber's connection \
                 (µs; one packet in 16 is sampled)",
                vec![
                    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
                    50_000.0,
                ],
            ),
            negotiation_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "negotiation_seconds",
                        "Offer to applied answer (publish: the client's offer to the server's \
                         answer; subscribe: the server's offer to the client's answer)",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                    &["pc"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                for pc in ["publish", "subscribe"] {
                    h.with_label_values(&[pc]);
                }
                h
            },
            join_to_first_video_seconds: histogram(
                "join_to_first_video_seconds",
                "From a member's join to the first video packet forwarded to it",
                vec![0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0],
            ),
            connection_total: {
                let c = counter_vec(
                    "connection_total",
                    "Peer connections created, by pc",
                    &["pc"],
                );
                for pc in ["publish", "subscribe"] {
                    c.with_label_values(&[pc]);
                }
                c
            },
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
            // Unlike the resident size, this does not move with the allocator's caching and
            // fragmentation: a leak shows here, as a trend, long before it shows in RSS.
            heap_in_use_bytes: crate::allocator::heap_in_use_bytes().map(|_| {
                gauge(
                    "heap_in_use_bytes",
                    "Heap memory allocated and not yet freed (glibc mallinfo2)",
                )
            }),
            cpu_seconds_seen: std::sync::Mutex::new(0.0),
            registry,
        };
        // Every known label value starts at 0, so series exist (and dashboards show them)
        // before the first event.
        let known: [(&IntCounterVec, &[&str]); 6] = [
            (&metrics.track_published_total, &["audio", "video"]),
            (&metrics.track_subscribed_total, &["audio", "video"]),
            (&metrics.participant_join_total, &["joined", "room_full"]),
            (
                &metrics.udp_mux_drops,
                &["unknown_source", "connection_behind", "send_buffer_full"],
            ),
            (
                &metrics.ws_disconnects_total,
                &[
                    "slow_consumer",
                    "rate_limited",
                    "idle",
                    "shutdown",
                    "kicked",
                    "invalid_utf8",
                    "too_large",
                ],
            ),
            (
                &metrics.signal_errors_total,
                &[
                    "bad_json",
                    "unknown_type",
                    "invalid_field",
                    "too_large",
                    "not_in_room",
                    "room_full",
                    "rate_limited",
                    "unavailable",
                    "no_capacity",
                    "kicked",
                    "unauthorized",
                ],
            ),
        ];
        for (vec, values) in known {
            for value in values {
                vec.with_label_values(&[value]);
            }
        }
        metrics
    }

    fn refresh_process(&self) {
        let sample = crate::proc_stat::ProcessSample::of_self();
        self.process_resident_memory_bytes
            .set(sample.rss_bytes as i64);
        if let (Some(gauge), Some(bytes)) = (
            &self.heap_in_use_bytes,
            crate::allocator::heap_in_use_bytes(),
        ) {
            gauge.set(bytes as i64);
        }
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

/// The wire counters, children resolved once so that counting is one atomic add.
#[derive(Clone)]
pub struct WireCounters {
    pub packets_in: IntCounter,
    pub packets_in_retransmit: IntCounter,
    pub packets_out: IntCounter,
    pub packets_out_retransmit: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_in_retransmit: IntCounter,
    pub bytes_out: IntCounter,
    pub bytes_out_retransmit: IntCounter,
    pub nack_in: IntCounter,
    pub nack_out: IntCounter,
    pub pli_in: IntCounter,
    pub pli_out: IntCounter,
    pub fir_in: IntCounter,
    pub fir_out: IntCounter,
    pub loss_in: IntCounter,
    pub loss_out: IntCounter,
}

impl WireCounters {
    fn new(
        packets: &IntCounterVec,
        bytes: &IntCounterVec,
        nack: &IntCounterVec,
        pli: &IntCounterVec,
        fir: &IntCounterVec,
        loss: &IntCounterVec,
    ) -> WireCounters {
        let dt = |v: &IntCounterVec, d: &str, t: &str| v.with_label_values(&[d, t]);
        WireCounters {
            packets_in: dt(packets, "incoming", "original"),
            packets_in_retransmit: dt(packets, "incoming", "retransmit"),
            packets_out: dt(packets, "outgoing", "original"),
            packets_out_retransmit: dt(packets, "outgoing", "retransmit"),
            bytes_in: dt(bytes, "incoming", "original"),
            bytes_in_retransmit: dt(bytes, "incoming", "retransmit"),
            bytes_out: dt(bytes, "outgoing", "original"),
            bytes_out_retransmit: dt(bytes, "outgoing", "retransmit"),
            nack_in: nack.with_label_values(&["incoming"]),
            nack_out: nack.with_label_values(&["outgoing"]),
            pli_in: pli.with_label_values(&["incoming"]),
            pli_out: pli.with_label_values(&["outgoing"]),
            fir_in: fir.with_label_values(&["incoming"]),
            fir_out: fir.with_label_values(&["outgoing"]),
            loss_in: loss.with_label_values(&["incoming"]),
            loss_out: loss.with_label_values(&["outgoing"]),
        }
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
