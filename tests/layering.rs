//! The pure core stays pure: the trader's state machine and risk gate (`src/trader/`), the signal
//! guards (`src/guards/`), the health module (`src/failure_points/`: catalog, observations,
//! judgement, healing planner, explanations, trends) and the records they share (`src/records.rs`)
//! import no actor runtime, no async runtime, no SQL driver, no actor and no persistence. Effects
//! live at the edges (`src/actors/`, `src/persistence/`); these are tested without them.

use std::path::{Path, PathBuf};

/// What a pure module may not name (outside comments).
const FORBIDDEN: [&str; 5] = ["actix", "tokio", "rusqlite", "crate::actors", "crate::persistence"];

fn rust_files(path: &Path, found: &mut Vec<PathBuf>) {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "rs") {
            found.push(path.to_owned());
        }
        return;
    }
    for entry in std::fs::read_dir(path).unwrap() {
        rust_files(&entry.unwrap().path(), found);
    }
}

#[test]
fn the_pure_modules_import_no_actor_runtime_database_or_persistence() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for pure in ["trader", "guards", "failure_points", "records.rs"] {
        rust_files(&root.join(pure), &mut files);
    }
    assert!(files.len() >= 10, "the pure modules were found: {files:?}");
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for forbidden in FORBIDDEN {
                if code.contains(forbidden) {
                    violations.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "pure modules reach for effects:\n{}", violations.join("\n"));
}

#[test]
fn the_layering_check_itself_sees_a_violation() {
    // The check must be able to fail: a line naming persistence is caught, a comment is not.
    let caught = |line: &str| FORBIDDEN.iter().any(|f| line.split("//").next().unwrap_or("").contains(f));
    assert!(caught("use crate::persistence::Store;"));
    assert!(caught("use actix::prelude::*;"));
    assert!(!caught("// the persistence module (crate::persistence) stores these"));
}
