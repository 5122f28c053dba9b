//! The SFU with real webrtc-rs peers on 127.0.0.1: forwarding, keyframe requests, renegotiation,
//! and that nothing is left behind when members go.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::media::{MediaPeer, PeerConfig, TrackKey};
use common::TestServer;

/// Media scenarios run one at a time: each one alone keeps both cores busy with real SRTP,
/// and running them side by side would test the machine's scheduler rather than forwarding.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn video(p: &MediaPeer) -> TrackKey {
    (p.id.clone(), "video")
}

fn audio(p: &MediaPeer) -> TrackKey {
    (p.id.clone(), "audio")
}

async fn wait_metric(server: &TestServer, series: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let v = server.metric(series).await;
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {v}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_subscribers_receive_everything_in_order_and_intact() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "r", "pub").await;
    let subs = [
        MediaPeer::join(&url, "r", "s1").await,
        MediaPeer::join(&url, "r", "s2").await,
        MediaPeer::join(&url, "r", "s3").await,
    ];
    publisher.publish(200).await;
    // Wait until every subscriber is receiving, then count a window of markers.
    for s in &subs {
        s.wait_received(&video(&publisher), Duration::from_secs(10), |r| {
            r.packets > 20
        })
        .await;
        s.wait_received(&audio(&publisher), Duration::from_secs(10), |r| {
            r.packets > 5
        })
        .await;
    }
    let start = publisher.video_sent.load(Ordering::SeqCst) + 10;
    let end = start + 600; // 3 s at 200 packets/s
    for s in &subs {
        let r = s
            .wait_received(&video(&publisher), Duration::from_secs(15), |r| {
                r.markers.last().is_some_and(|&m| m >= end)
            })
            .await;
        let window: Vec<u32> = r
            .markers
            .iter()
            .copied()
            .filter(|m| (start..end).contains(m))
            .collect();
        assert!(
            window.len() as f64 >= 0.99 * f64::from(end - start),
            "{} of {} packets arrived",
            window.len(),
            end - start
        );
        assert!(
            window.windows(2).all(|w| w[0] < w[1]),
            "in order, no duplicates"
        );
        assert_eq!(r.corrupt, 0, "payload bytes intact");
        assert_eq!(r.ssrcs.len(), 1, "one SSRC as negotiated: {:?}", r.ssrcs);
        assert_ne!(
            r.ssrcs[0],
            common::media::VIDEO_SSRC,
            "rewritten for the subscriber"
        );
        assert_eq!(
            r.payload_types,
            vec![96],
            "the payload type the subscriber negotiated"
        );
        let a = s.received(&audio(&publisher));
        assert_eq!(a.payload_types, vec![111]);
        assert_eq!(a.corrupt, 0);
    }
    assert!(server.metric("yoom_packets_forwarded_total").await > 1800.0);
    assert_eq!(
        server
            .metric("yoom_track_published_total{kind=\"video\"}")
            .await,
        1.0
    );
    drop(subs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_gets_a_keyframe_request_sent_to_the_publisher() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "r", "pub").await;
    let first = MediaPeer::join(&url, "r", "early").await;
    publisher.publish(100).await;
    first
        .wait_received(&video(&publisher), Duration::from_secs(10), |r| {
            r.packets > 10
        })
        .await;
    // Let the throttle window of the early subscriber's requests pass.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = publisher.plis_received.load(Ordering::SeqCst);
    let joined_at = Instant::now();
    let late = MediaPeer::join(&url, "r", "late").await;
    late.wait_received(&video(&publisher), Duration::from_secs(10), |r| {
        r.packets > 0
    })
    .await;
    let pli_at = loop {
        let times = publisher.pli_times.lock().unwrap().clone();
        if let Some(t) = times.get(before) {
            break *t;
        }
        assert!(
            joined_at.elapsed() < Duration::from_secs(3),
            "no PLI reached the publisher"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let delay = pli_at.duration_since(joined_at);
    assert!(delay < Duration::from_secs(1), "PLI after {delay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pli_storm_from_ten_subscribers_is_throttled() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "r", "pub").await;
    let mut subs = Vec::new();
    for i in 0..10 {
        subs.push(MediaPeer::join(&url, "r", &format!("s{i}")).await);
    }
    publisher.publish(100).await;
    for s in &subs {
        s.wait_received(&video(&publisher), Duration::from_secs(15), |r| {
            r.packets > 5
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let before = publisher.plis_received.load(Ordering::SeqCst);
    let before_in = server.metric("yoom_keyframe_requests_in_total").await;
    // Every subscriber asks for a keyframe every 20 ms for 3 s.
    while start.elapsed() < Duration::from_secs(3) {
        for s in &subs {
            s.send_pli(&video(&publisher)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = publisher.plis_received.load(Ordering::SeqCst) - before;
    let secs = start.elapsed().as_secs_f64();
    let asked = server.metric("yoom_keyframe_requests_in_total").await - before_in;
    assert!(
        asked > 300.0,
        "the storm reached the server ({asked} requests)"
    );
    assert!(got >= 1, "requests are merged, not lost");
    assert!(
        (got as f64) / secs <= 3.0,
        "{got} PLIs in {secs:.1} s reached the publisher"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_leaving_is_removed_from_subscribers_by_a_re_offer() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "r", "pub").await;
    let mut sub = MediaPeer::join(&url, "r", "sub").await;
    publisher.publish(100).await;
    sub.wait_received(&video(&publisher), Duration::from_secs(10), |r| {
        r.packets > 5
    })
    .await;
    let offers = sub.offers_received.load(Ordering::SeqCst);
    let pub_id = publisher.id.clone();
    assert!(sub
        .last_offer_sdp
        .lock()
        .unwrap()
        .contains(&format!("a=msid:{pub_id} ")));
    publisher.leave().await;
    let left = sub.recv_type("member_left").await;
    assert_eq!(left["id"], pub_id.as_str());
    // Its two tracks go away in one or two re-offers (a change arriving while an offer is
    // outstanding rides on the next one); in the end nothing is sent to the subscriber.
    sub.wait_offer_without(offers, &pub_id).await;
    wait_metric(
        &server,
        "yoom_peer_connections",
        1.0,
        Duration::from_secs(5),
    )
    .await;
}

/// Waits until the subscriber's latest offer no longer carries `publisher`'s tracks.
async fn wait_unoffered(sub: &MediaPeer, publisher: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let msid = format!("a=msid:{publisher} ");
    while sub.last_offer_sdp.lock().unwrap().contains(&msid) {
        assert!(
            Instant::now() < deadline,
            "{publisher}'s tracks are still offered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member who stays while others come and go must not cost the server one more SSRC (and
/// webrtc-rs' per-SSRC state) per track it was ever sent: freed SSRCs are reused, never on the
/// transceiver that carried them last (Chromium would not render that), and each reuse
/// continues the numbering, or the subscriber's SRTP replay window would drop the new track's
/// packets as replays of the old one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staying_subscriber_gets_freed_ssrcs_reused_with_continuous_numbering() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let sub = MediaPeer::join(&url, "r", "stays").await;
    // SSRC → the last sequence number the subscriber got on it, per kind.
    let mut ended: HashMap<(&str, u32), u16> = HashMap::new();
    let mut used: Vec<(u32, u32)> = Vec::new();
    let mut reused = 0;
    for cycle in 0..6 {
        let mut publisher = MediaPeer::join(&url, "r", &format!("pub{cycle}")).await;
        publisher.publish(50).await;
        let keys = [video(&publisher), audio(&publisher)];
        for key in &keys {
            sub.wait_received(key, Duration::from_secs(10), |r| r.packets > 10)
                .await;
        }
        let mut ssrcs = [0; 2];
        for (i, key) in keys.iter().enumerate() {
            let r = sub.received(key);
            assert_eq!(r.ssrcs.len(), 1, "one SSRC per track: {r:?}");
            assert_eq!(r.corrupt, 0);
            ssrcs[i] = r.ssrcs[0];
            if let Some(&before) = ended.get(&(key.1, r.ssrcs[0])) {
                reused += 1;
                // Continued right after the last number the egress wrote; a packet or two of
                // the departed track may have been numbered and then refused by the removed
                // sender, hence a small gap rather than exactly +1.
                let first = r.first_seq.unwrap();
                assert!(
                    (1..=16).contains(&first.wrapping_sub(before)),
                    "cycle {cycle} {}: SSRC {} numbered {before} last, then {first}",
                    key.1,
                    r.ssrcs[0]
                );
            }
        }
        if let Some(&(v, a)) = used.last() {
            // The previous publisher's tracks sat in the same two transceivers.
            assert_ne!(
                (v, a),
                (ssrcs[0], ssrcs[1]),
                "cycle {cycle}: an SSRC back on its transceiver"
            );
        }
        used.push((ssrcs[0], ssrcs[1]));
        let id = publisher.id.clone();
        publisher.leave().await;
        wait_unoffered(&sub, &id, Duration::from_secs(5)).await;
        // What the subscriber got of the departed tracks, now that they are gone.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for key in keys {
            let r = sub.received(&key);
            ended.insert((key.1, r.last_ssrc), r.last_seq);
        }
    }
    let distinct = |pick: fn(&(u32, u32)) -> u32| {
        used.iter()
            .map(pick)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert_eq!(
        distinct(|u| u.0),
        2,
        "video SSRCs over 6 publishers: {used:?}"
    );
    assert_eq!(
        distinct(|u| u.1),
        2,
        "audio SSRCs over 6 publishers: {used:?}"
    );
    assert_eq!(reused, 8, "cycles 2–5 reuse both SSRCs: {used:?}");
}

/// A client that lost the subscribe offer is sent the same offer again (after the server's
/// 10 s answer timeout), and media flows once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_subscribe_offer_is_sent_again() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "r", "pub").await;
    publisher.publish(50).await;
    let cfg = PeerConfig {
        ignore_offers: 1,
        ..PeerConfig::default()
    };
    let sub = MediaPeer::join_with(&url, "r", "forgetful", cfg).await;
    let wait_offers = |n: usize, within: Duration| {
        let offers = sub.offers_received.clone();
        async move {
            let deadline = Instant::now() + within;
            while offers.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "no offer #{n} within {within:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_offers(1, Duration::from_secs(5)).await;
    let first = sub.last_offer_sdp.lock().unwrap().clone();
    let lost_at = Instant::now();
    wait_offers(2, Duration::from_secs(15)).await;
    let again = lost_at.elapsed();
    assert!(
        again >= Duration::from_secs(8),
        "offered again after only {again:?}"
    );
    // The same offer (same session version); it now carries the candidates gathered since.
    let without_candidates = |sdp: &str| {
        sdp.lines()
            .filter(|l| !l.starts_with("a=candidate") && !l.starts_with("a=end-of-candidates"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_candidates(&sub.last_offer_sdp.lock().unwrap()),
        without_candidates(&first),
        "the same offer again"
    );
    sub.wait_received(&video(&publisher), Duration::from_secs(10), |r| {
        r.packets > 5
    })
    .await;
    assert_eq!(sub.offers_received.load(Ordering::SeqCst), 2);
}

/// Moves the first section's `a=mid` line to the session level.
fn mid_moved_to_session(sdp: &str) -> String {
    let mut lines: Vec<&str> = sdp.split("\r\n").collect();
    if let Some(i) = lines.iter().position(|l| l.starts_with("a=mid:")) {
        let mid = lines.remove(i);
        let t = lines.iter().position(|l| l.starts_with("t=")).unwrap();
        lines.insert(t + 1, mid);
    }
    lines.join("\r\n")
}

/// Waits for `member` to be told why, then to leave with `media_failed`.
async fn wait_media_failed(member: &mut MediaPeer, why: &str) {
    let error = member.recv_type("error").await;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains(why), "{error}");
    let left = member.recv_type("left").await;
    assert_eq!(left["reason"], "media_failed", "{left}");
}

/// A subscribe answer webrtc-rs refuses half-way through (a section without `a=mid`, found by
/// tests/parser_fuzz.rs) also drops the server's offer, after which nothing can be negotiated
/// on that connection: the member is told why and leaves with `media_failed` (its client can
/// join again) instead of waiting forever; the publisher and other subscribers carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_answer_refused_half_way_fails_only_that_members_media() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "r", "pub").await;
    publisher.publish(50).await;
    let fine = MediaPeer::join(&url, "r", "fine").await;
    let cfg = PeerConfig {
        tamper_first_answer: Some(mid_moved_to_session),
        ..PeerConfig::default()
    };
    let mut sloppy = MediaPeer::join_with(&url, "r", "sloppy", cfg).await;
    wait_media_failed(&mut sloppy, "answer refused").await;
    fine.wait_received(&video(&publisher), Duration::from_secs(10), |r| {
        r.packets > 5
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_publishers_is_coalesced_into_few_offers() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    // This subscriber answers slowly, so changes pile up while an offer is outstanding.
    let watcher = MediaPeer::join_with(
        &url,
        "r",
        "watcher",
        PeerConfig {
            answer_delay: Duration::from_millis(400),
            ..PeerConfig::default()
        },
    )
    .await;
    let mut publishers = Vec::new();
    for i in 0..10 {
        let mut p = MediaPeer::join(&url, "r", &format!("p{i}")).await;
        p.publish(50).await;
        publishers.push(p);
    }
    for p in &publishers {
        watcher
            .wait_received(&video(p), Duration::from_secs(20), |r| r.packets > 3)
            .await;
        watcher
            .wait_received(&audio(p), Duration::from_secs(20), |r| r.packets > 3)
            .await;
    }
    let offers = watcher.offers_received.load(Ordering::SeqCst);
    assert!(offers < 10, "20 new tracks took {offers} offers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_cycles_leave_no_connection_or_task_behind() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut host = MediaPeer::join(&url, "r", "host").await;
    host.publish(50).await;
    for i in 0..50 {
        let mut guest = MediaPeer::join(&url, "r", &format!("g{i}")).await;
        if i % 5 == 0 {
            // Some guests publish too, and get the host's media before leaving.
            guest.publish(50).await;
            guest
                .wait_received(&video(&host), Duration::from_secs(10), |r| r.packets > 0)
                .await;
        }
        guest.leave().await;
    }
    host.leave().await;
    wait_metric(
        &server,
        "yoom_peer_connections",
        0.0,
        Duration::from_secs(10),
    )
    .await;
    wait_metric(&server, "yoom_media_tasks", 0.0, Duration::from_secs(10)).await;
    wait_metric(
        &server,
        "yoom_participant_total",
        0.0,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_feedback_and_congestion_control_are_negotiated_and_nacks_answered() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "r", "pub").await;
    let sub = MediaPeer::join(&url, "r", "sub").await;
    publisher.publish(100).await;
    // Towards the publisher: NACK generation, PLI/FIR and TWCC feedback.
    let answer = publisher.publish_answer_sdp.clone();
    for needle in [
        "a=rtcp-fb:96 nack\r",
        "a=rtcp-fb:96 nack pli",
        "a=rtcp-fb:96 ccm fir",
        "a=rtcp-fb:96 transport-cc",
        "transport-wide-cc",
    ] {
        assert!(
            answer.contains(needle),
            "publish answer lacks {needle:?}:\n{answer}"
        );
    }
    let r = sub
        .wait_received(&video(&publisher), Duration::from_secs(10), |r| {
            r.packets > 50
        })
        .await;
    let offer = sub.last_offer_sdp.lock().unwrap().clone();
    assert!(offer.contains("a=rtcp-fb:96 nack\r"), "{offer}");
    assert!(r.markers.len() > 50);

    // A subscriber behind a link that loses every 25th packet still gets everything: its NACKs
    // are answered from the server's retransmission buffer for it.
    let lossy = MediaPeer::join_with(
        &url,
        "r",
        "lossy",
        PeerConfig {
            subscribe_drop_every: Some(25),
            ..PeerConfig::default()
        },
    )
    .await;
    lossy
        .wait_received(&video(&publisher), Duration::from_secs(10), |r| {
            r.packets > 20
        })
        .await;
    let start = publisher.video_sent.load(Ordering::SeqCst) + 10;
    let end = start + 400;
    let r = lossy
        .wait_received(&video(&publisher), Duration::from_secs(15), |r| {
            r.markers.iter().any(|&m| m >= end + 50)
        })
        .await;
    let mut window: Vec<u32> = r
        .markers
        .iter()
        .copied()
        .filter(|m| (start..end).contains(m))
        .collect();
    window.sort_unstable();
    window.dedup();
    let dropped = lossy.relay_dropped.load(Ordering::SeqCst);
    assert!(dropped >= 15, "the relay dropped {dropped} packets");
    assert!(
        window.len() as u32 >= end - start - 1,
        "{} of {} packets arrived despite {dropped} drops: NACKs were not answered; missing {:?}",
        window.len(),
        end - start,
        (start..end)
            .filter(|m| window.binary_search(m).is_err())
            .collect::<Vec<_>>()
    );
    assert_eq!(r.corrupt, 0, "retransmissions are intact");
}
