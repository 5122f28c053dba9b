//! The Grafana dashboard (`deploy/grafana/yoom.json`) charts only what a real server exports:
//! every `yoom_*` name in its queries is a metric family on `/metrics` once a little real traffic
//! went through: media from the load tool, and a flooding client that gets a `rate_limited`
//! error and disconnect (a labelled family appears only once one of its series exists; the
//! server creates the known label values at start, this makes sure real events land there too).
//! Names read through `_bucket` must be histograms, names under `rate(` counters or histograms.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{TestServer, STEP};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use yoom::load::{run, LoadArgs};

/// The whole load run (join, media, report) ends within this.
const LOAD_RUN: Duration = Duration::from_secs(60);
/// Messages a flooding client sends at most; the default rate limit (50/s, burst 100) closes
/// the connection after 100 refusals in a row, long before.
const FLOOD_MESSAGES: usize = 1_000;
/// A Grafana dashboard schema this old still has everything used here (timeseries, stat, rows).
const MIN_SCHEMA_VERSION: u64 = 36;

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/yoom.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL text in the dashboard: panel targets' `expr` and templating queries.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .map(str::to_owned)
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            for q in [&var["definition"], &var["query"], &var["query"]["query"]] {
                if let Some(q) = q.as_str() {
                    out.push(q.to_owned());
                }
            }
        }
    }
    out
}

/// How a metric name is used in a query.
#[derive(Debug, Default, Clone, Copy)]
struct Use {
    bucket: bool,
    rate: bool,
}

/// Every `yoom_[a-z0-9_]+` name in `expr` (a `_bucket`, `_sum` or `_count` suffix stripped),
/// with whether it was read through `_bucket` or directly under `rate(`/`irate(`/`increase(`.
fn metric_names(expr: &str, out: &mut BTreeMap<String, Use>) {
    let bytes = expr.as_bytes();
    let name_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut i = 0;
    while let Some(found) = expr[i..].find("yoom_") {
        let start = i + found;
        let mut end = start + "yoom_".len();
        while end < bytes.len() && name_byte(bytes[end]) {
            end += 1;
        }
        i = end;
        let preceded_by_name =
            start > 0 && (name_byte(bytes[start - 1]) || bytes[start - 1] == b':');
        if preceded_by_name || end == start + "yoom_".len() {
            continue;
        }
        let full = &expr[start..end];
        let (base, bucket) = match full.strip_suffix("_bucket") {
            Some(base) => (base, true),
            None => (
                full.strip_suffix("_sum")
                    .or_else(|| full.strip_suffix("_count"))
                    .unwrap_or(full),
                false,
            ),
        };
        let before = expr[..start].trim_end();
        let rate = ["rate(", "irate(", "increase("]
            .iter()
            .any(|f| before.ends_with(f));
        let entry = out.entry(base.to_owned()).or_default();
        entry.bucket |= bucket;
        entry.rate |= rate;
    }
}

/// `# TYPE <name> <kind>` lines of a Prometheus text exposition.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

#[test]
fn dashboard_is_a_grafana_dashboard_with_queries() {
    let d = dashboard();
    assert!(
        d["title"].as_str().is_some_and(|t| !t.is_empty()),
        "a title"
    );
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "a uid");
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(schema >= MIN_SCHEMA_VERSION, "schemaVersion {schema}");

    // Importable (an `__inputs` data source) and usable as provisioned (a data source variable
    // of the same name), so `${DS_PROMETHEUS}` resolves either way.
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "an __inputs entry DS_PROMETHEUS for Prometheus"
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a datasource variable DS_PROMETHEUS"
    );

    let all = panels(&d);
    let charts: Vec<&Value> = all.iter().copied().filter(|p| p["type"] != "row").collect();
    assert!(charts.len() >= 10, "only {} panels", charts.len());
    let mut ids = BTreeSet::new();
    for p in &all {
        let id = p["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        let g = &p["gridPos"];
        let (x, w) = (
            g["x"].as_u64().expect("gridPos.x"),
            g["w"].as_u64().expect("gridPos.w"),
        );
        assert!(
            x + w <= 24,
            "panel {:?} is wider than the 24-column grid",
            p["title"]
        );
    }
    for p in charts {
        let title = p["title"].as_str().expect("every panel has a title");
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title:?} reads the DS_PROMETHEUS data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("yoom_"), "panel {title:?} query {expr:?}");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "panel {title:?}: unbalanced parentheses in {expr:?}"
            );
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {title:?} target"
            );
        }
    }
}

#[test]
fn metric_names_are_found_and_suffixes_stripped() {
    let mut names = BTreeMap::new();
    metric_names(
        r#"histogram_quantile(0.95, sum by (le) (rate(yoom_rtt_ms_bucket{instance=~"$i"}[5m]))) / rate(yoom_a_total[1m]) + yoom_g + x_yoom_not + yoom_h_sum / yoom_h_count"#,
        &mut names,
    );
    let got: Vec<(&str, bool, bool)> = names
        .iter()
        .map(|(n, u)| (n.as_str(), u.bucket, u.rate))
        .collect();
    assert_eq!(
        got,
        vec![
            ("yoom_a_total", false, true),
            ("yoom_g", false, false),
            ("yoom_h", false, false),
            ("yoom_rtt_ms", true, true),
        ]
    );
}

/// A client that floods `list_rooms` until the server refuses it and closes the connection
/// (a `rate_limited` error and a `rate_limited` disconnect).
async fn flood_until_closed(server: &TestServer) {
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(server.ws_url()))
        .await
        .expect("connect in time")
        .expect("connect");
    for i in 0..FLOOD_MESSAGES {
        let msg = format!(r#"{{"type":"list_rooms","ref":{i}}}"#);
        match tokio::time::timeout(STEP, ws.send(Message::text(msg))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break, // closed by the server: what we wanted
            Err(_) => panic!("send did not finish in time"),
        }
    }
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the server did not close a flooding connection"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_on_the_dashboard_is_exported_by_a_real_server() {
    let d = dashboard();
    let exprs = queries(&d);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    let mut used = BTreeMap::new();
    for e in &exprs {
        metric_names(e, &mut used);
    }
    assert!(
        used.len() >= 10,
        "only {} metric names in the dashboard: {used:?}",
        used.len()
    );

    let server = TestServer::start().await;
    flood_until_closed(&server).await;
    let args = LoadArgs {
        url: format!("http://{}", server.addr),
        rooms: 1,
        publishers: 2,
        subscribers: 1,
        duration: 2,
        join_rate: 20.0,
        video_kbps: 300,
        packet_bytes: 1000,
        audio: true,
        server_pid: None,
        media_ip: "127.0.0.1".parse().unwrap(),
        json: true,
        target: yoom::load::Target::Yoom,
        janus_url: None,
    };
    let report = tokio::time::timeout(LOAD_RUN, run(args))
        .await
        .expect("load run ends in time")
        .expect("load run succeeds");
    assert!(
        report.video.packets_received > 0,
        "media flowed: {report:?}"
    );

    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let exported = families(&body);
    let mut problems = Vec::new();
    for (name, how) in &used {
        match exported.get(name).map(String::as_str) {
            None => problems.push(format!("{name}: not exported")),
            Some(kind) if how.bucket && kind != "histogram" => {
                problems.push(format!("{name}: read as {name}_bucket but it is a {kind}"))
            }
            Some(kind) if how.rate && !matches!(kind, "counter" | "histogram") => {
                problems.push(format!("{name}: under rate() but it is a {kind}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard uses metrics the server does not export as such:\n  {}\nexported families: {:?}",
        problems.join("\n  "),
        exported
    );
    server.shutdown().await;
}
