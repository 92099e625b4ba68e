//! The origin's crates keep the direction of their dependencies (ARCHITECTURE.md):
//! domain < store < pipeline < server. These tests read the workspace as cargo sees it and
//! the sources as they are, so a change that breaks the layering fails here, not in review.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The origin's crates, lowest first, with their source folders.
const LAYERS: [(&str, &str); 4] = [
    ("abx-origin-domain", "domain"),
    ("abx-origin-store", "store"),
    ("abx-origin-pipeline", "pipeline"),
    ("abx-origin", "."),
];

/// HTTP server crates: only the server may name them.
const HTTP_SERVER: [&str; 3] = ["axum", "tower", "tower-http"];

/// What the domain must never reach, even through another crate: it does no IO.
const NOT_IN_DOMAIN: [&str; 4] = ["tokio", "sqlx", "axum", "reqwest"];

fn origin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Graph {
    names: HashMap<String, String>,
    /// Normal (not dev or build) dependencies, by package id.
    deps: HashMap<String, Vec<String>>,
}

impl Graph {
    /// The workspace's dependency graph, read once per test run.
    fn get() -> &'static Graph {
        static GRAPH: OnceLock<Graph> = OnceLock::new();
        GRAPH.get_or_init(Graph::load)
    }

    fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // For the platform the tests run on: the other platforms' dependencies need not be
        // downloaded, and the layering does not depend on the platform.
        let rustc = Command::new("rustc")
            .arg("-vV")
            .output()
            .expect("running rustc -vV");
        let version = String::from_utf8(rustc.stdout).expect("rustc's version text");
        let host = version
            .lines()
            .find_map(|line| line.strip_prefix("host: "))
            .expect("rustc names its host");
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", host, "--manifest-path"])
            .arg(origin_dir().join("../Cargo.toml"))
            .output()
            .expect("running cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
        let names = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (string(&p["id"]), string(&p["name"])))
            .collect();
        let deps = metadata["resolve"]["nodes"]
            .as_array()
            .expect("resolve nodes")
            .iter()
            .map(|node| {
                let normal = node["deps"]
                    .as_array()
                    .expect("deps")
                    .iter()
                    .filter(|dep| {
                        dep["dep_kinds"]
                            .as_array()
                            .expect("dep_kinds")
                            .iter()
                            .any(|kind| kind["kind"].is_null())
                    })
                    .map(|dep| string(&dep["pkg"]))
                    .collect();
                (string(&node["id"]), normal)
            })
            .collect();
        Graph { names, deps }
    }

    fn id_of(&self, name: &str) -> &str {
        self.names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id.as_str())
            .unwrap_or_else(|| panic!("{name} is not in the workspace"))
    }

    fn direct(&self, name: &str) -> HashSet<&str> {
        self.deps[self.id_of(name)]
            .iter()
            .map(|id| self.names[id].as_str())
            .collect()
    }

    fn transitive(&self, name: &str) -> HashSet<&str> {
        let mut seen = HashSet::new();
        let mut stack = vec![self.id_of(name)];
        while let Some(id) = stack.pop() {
            for dep in &self.deps[id] {
                if seen.insert(self.names[dep].as_str()) {
                    stack.push(dep);
                }
            }
        }
        seen
    }
}

fn string(value: &Value) -> String {
    value.as_str().expect("a string").to_string()
}

#[test]
fn no_crate_depends_on_a_crate_above_it() {
    let graph = Graph::get();
    let mut problems = Vec::new();
    for (level, (name, _)) in LAYERS.iter().enumerate() {
        let reached = graph.transitive(name);
        for (above, _) in &LAYERS[level..] {
            if reached.contains(above) {
                problems.push(format!("{name} depends on {above}, which is above it"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn only_the_server_uses_http_server_crates() {
    let graph = Graph::get();
    let mut problems = Vec::new();
    for (name, _) in &LAYERS[..LAYERS.len() - 1] {
        let direct = graph.direct(name);
        for http in HTTP_SERVER {
            if direct.contains(http) {
                problems.push(format!("{name} depends on {http}"));
            }
        }
        if graph.transitive(name).contains("axum") {
            problems.push(format!("{name} reaches axum through its dependencies"));
        }
    }
    let domain = graph.transitive(LAYERS[0].0);
    for forbidden in NOT_IN_DOMAIN {
        if domain.contains(forbidden) {
            problems.push(format!("{} reaches {forbidden}", LAYERS[0].0));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Words that start SQL statements (upper case, as the project writes SQL), as they appear
/// at the start of a string literal. Built
/// at run time so that this file does not match itself.
fn sql_starts() -> Vec<String> {
    [
        "SELECT ",
        "INSERT INTO ",
        "UPDATE ",
        "DELETE FROM ",
        "CREATE TABLE",
        "ALTER TABLE",
        "DROP TABLE",
        "WITH ",
        "PRAGMA ",
    ]
    .iter()
    .map(|word| format!("\"{word}"))
    .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_store_and_pipeline_crates_hold_sql() {
    let starts = sql_starts();
    let calls = ["sqlx::query", "sqlx::raw_sql"];
    let mut problems = Vec::new();
    for (name, dir) in [LAYERS[0], LAYERS[3]] {
        let mut files = Vec::new();
        rust_files(&origin_dir().join(dir).join("src"), &mut files);
        assert!(!files.is_empty(), "no sources found for {name}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source file");
            for (number, line) in text.lines().enumerate() {
                let sql = starts.iter().any(|start| line.contains(start.as_str()))
                    || calls.iter().any(|call| line.contains(call));
                if sql {
                    problems.push(format!(
                        "{}:{}: {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "SQL outside abx-origin-store and abx-origin-pipeline:\n{}",
        problems.join("\n")
    );
}
