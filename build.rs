// The web client is embedded into the binary (rust-embed); rebuild when any file under web/
// is added, removed or edited, not only when Rust sources change.
fn main() {
    println!("cargo:rerun-if-changed=web");
    if let Ok(entries) = std::fs::read_dir("web") {
        for entry in entries.flatten() {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
}
