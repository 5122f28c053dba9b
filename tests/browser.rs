//! Runs the Chromium tests in `tests/browser/*.test.mjs` (Node's test runner driving Debian's
//! headless Chromium through playwright-core) against the real `yoom` binary, inside a
//! loopback-only network namespace so that no test traffic can leave the machine.

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

fn run_browser_test(file: &str) {
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
    let status = in_loopback_namespace(&format!("exec node --test --test-reporter=spec {file}"))
        .current_dir(browser_dir())
        .env("YOOM_BIN", env!("CARGO_BIN_EXE_yoom"))
        .env("SCREENSHOT_DIR", &screenshots)
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "browser test {file} failed (see its output above)"
    );
}

#[test]
fn lobby_and_chat_in_chromium() {
    run_browser_test("lobby_chat.test.mjs");
}
