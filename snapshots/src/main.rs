//! `cargo run -p abx-snapshots [-- --check]`: regenerates the conformance suite in
//! `snapshots/`, or with `--check` verifies that the committed files are what it produces.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let suite = abx_snapshots::generate();
    let mut stale = 0;
    for artifact in &suite.artifacts {
        let path = root.join(&artifact.path);
        let current = std::fs::read(&path).ok();
        if current.as_deref() == Some(artifact.bytes.as_slice()) {
            continue;
        }
        if check {
            eprintln!("differs: snapshots/{}", artifact.path);
            stale += 1;
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("creating the output directory");
        }
        std::fs::write(&path, &artifact.bytes).expect("writing a generated file");
        println!("wrote snapshots/{}", artifact.path);
    }
    println!(
        "{} files, {} conformance cases",
        suite.artifacts.len(),
        suite.cases
    );
    if stale > 0 {
        eprintln!("{stale} files differ; run `cargo run -p abx-snapshots` and review the diff");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
