//! Runs the Chromium tests in `tests/browser/*.test.mjs` (Node's test runner driving Debian's
//! headless Chromium through playwright-core) against the real `yoom` binary (and, for the relay
//! tests, a real coturn), inside a loopback-only network namespace so that no test traffic can
//! leave the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `unshare -n` (root) or `unshare -rn` (an unprivileged user namespace) wrapping `script`.
fn in_loopback_namespace(script: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut cmd = Command::new("unshare");
    cmd.arg(if root { "-n" } else { "-rn" })
        .args(["bash", "-c"])
        .arg(format!("ip link set lo up && {script}"));
    cmd
}

/// Every `*.test.mjs` in `tests/browser/`, run by one `node --test` (which runs files one at a
/// time on a 2-core machine, so Chromium instances do not compete for the CPU).
fn browser_test_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(browser_dir())
        .expect("tests/browser exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.mjs"))
        .collect();
    files.sort();
    files
}

#[test]
fn web_client_in_chromium() {
    let files = browser_test_files();
    assert!(!files.is_empty(), "no browser tests found");
    let deps = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/browser-deps.sh"))
        .status()
        .expect("run browser-deps.sh");
    assert!(
        deps.success(),
        "installing the browser test dependencies failed"
    );

    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&screenshots).unwrap();
    let status = in_loopback_namespace(&format!(
        "exec node --test --test-concurrency=1 --test-reporter=spec {}",
        files.join(" ")
    ))
    .current_dir(browser_dir())
    .env("YOOM_BIN", env!("CARGO_BIN_EXE_yoom"))
    .env("SCREENSHOT_DIR", &screenshots)
    .status()
    .expect("run node");
    assert!(
        status.success(),
        "browser tests {files:?} failed (see their output above)"
    );
}
