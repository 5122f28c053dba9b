//! Smoke run of the documented side-by-side command, `benches/compare.sh`: a seconds-long
//! 1 → 2 scenario and two rooms of 1 → 1 against Yoom (this build) and a real Janus, both
//! started by the script in its network namespace, in two rounds. Asserts only that both
//! servers carried media in every round, that the tool counted it, and that the side-by-side
//! table came out with each round's figures; speed is the benchmark's business.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn compare_sh_runs_both_servers_and_prints_the_table() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("yoom-compare-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("report dir");
    let run = Command::new("bash")
        .arg(repo.join("benches/compare.sh"))
        .args(["1x2", "2r1x1"])
        .current_dir(repo)
        .env("DURATION", "3")
        .env("ROUNDS", "2")
        .env("YOOM_BIN", env!("CARGO_BIN_EXE_yoom"))
        .env("OUT", &out)
        .output()
        .expect("run benches/compare.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "compare.sh failed\n{stdout}\n{stderr}"
    );

    let read = |name: String| -> Value {
        let path = out.join(name);
        serde_json::from_slice(
            &std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}\n{stdout}\n{stderr}", path.display())),
        )
        .expect("the report is JSON")
    };
    let runs = ["1x2", "2r1x1"]
        .into_iter()
        .flat_map(|s| ["yoom", "janus"].map(|t| (s, t)))
        .flat_map(|(s, t)| [1, 2].map(|round| (s, t, round)));
    for (scenario, target, round) in runs {
        let report = read(format!("{target}-{scenario}.round{round}.json"));
        let rooms = if scenario == "1x2" { 1 } else { 2 };
        assert_eq!(report["target"], target);
        assert_eq!(report["rooms"], rooms, "{target}: {report}");
        assert_eq!(report["members_failed"], 0, "{target}: {report}");
        assert_eq!(report["video"]["tracks"], 2, "{target}: {report}");
        assert!(
            report["video"]["packets_received"].as_u64().unwrap_or(0) > 100,
            "{target}: {report}"
        );
        assert!(
            report["server_cpu_us_per_delivered_packet"]
                .as_f64()
                .is_some(),
            "{target}: server CPU was not measured: {report}"
        );
        // With the server's pid, its own code's share is split out of the steady figure.
        let steady = report["server_cpu_us_per_delivered_packet_steady"].as_f64();
        let user = report["server_user_cpu_us_per_delivered_packet_steady"].as_f64();
        assert!(
            steady.zip(user).is_some_and(|(s, u)| u <= s),
            "{target}: no user/system split of the steady figure: {report}"
        );
    }
    // The table's row is one of the rounds, and its report is kept under the scenario's name.
    for target in ["yoom", "janus"] {
        let shown = read(format!("{target}-1x2.json"));
        assert!(
            [1, 2]
                .iter()
                .any(|round| read(format!("{target}-1x2.round{round}.json")) == shown),
            "{target}-1x2.json is none of the rounds' reports"
        );
        assert!(
            stdout.contains(&format!("{target}: steady µs/pkt by round")),
            "{stdout}"
        );
    }
    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with("1x2 ")).collect();
    assert_eq!(table.len(), 2, "one row per server:\n{stdout}");
    assert!(
        table[0].contains("yoom") && table[1].contains("janus"),
        "{stdout}"
    );
    assert!(stdout.contains("ratio: Janus needs"), "{stdout}");
    let by_round: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("ratio in steady state by round"))
        .collect();
    assert_eq!(by_round.len(), 2, "one per scenario:\n{stdout}");
    assert!(
        by_round.iter().all(|l| l.matches('×').count() == 2),
        "{stdout}"
    );
    let rooms_rows = stdout.lines().filter(|l| l.starts_with("2r1x1 ")).count();
    assert_eq!(rooms_rows, 2, "one row per server for 2r1x1:\n{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}
