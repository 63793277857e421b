//! The framework's crates name nothing of this domain: routing, process managers and schemas
//! come from the `Domain` a service hands over, so a service of its own needs no fork. This test
//! reads every source file of the framework's crates for a command type, an
//! event type, a process manager or a saga type of the reference domain, as a whole word.

use std::path::{Path, PathBuf};

/// The framework's library code, by path under `crates/`: every crate but this domain and the
/// benches (which measure it). Their integration tests and examples may use this domain as a
/// fixture: they are not what a service links.
const FRAMEWORK: &[&str] = &[
    "nexus-core/src",
    "nexus-runtime/src",
    "nexus-server/src",
    "nexus-sqlite/src",
    "nexus-postgres/src",
    "nexus-nats/src",
    "nexus-rabbitmq/src",
    "nexus-registry/src",
    "nexus-policy/src",
    "nexus-conformance/src",
    // The stock binary's load generator (`bench.rs`) drives the reference workload on purpose.
    "nexus/src/cli.rs",
    "nexus/src/lib.rs",
];

fn rust_files(path: &Path, found: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), found);
        }
    } else if path.extension().is_some_and(|ext| ext == "rs") {
        found.push(path.to_owned());
    }
}

fn names_word(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

#[test]
fn no_framework_crate_names_the_reference_domain() {
    let domain = nexus_domain::domain();
    let mut names: Vec<String> = domain.commands().map(|spec| spec.name.to_owned()).collect();
    names.extend(domain.events().map(|spec| spec.name.to_owned()));
    for manager in domain.process_managers() {
        names.push(manager.name().to_owned());
        names.push(manager.saga_type().to_owned());
    }
    names.push("nexus_domain".to_owned());
    assert!(names.len() > 20, "the reference domain's names were not collected: {names:?}");

    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for part in FRAMEWORK {
        let path = crates.join(part);
        assert!(path.exists(), "{} is gone: update FRAMEWORK", path.display());
        rust_files(&path, &mut files);
    }
    assert!(files.len() > 50, "too few framework sources found: {}", files.len());
    let mut leaks = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line_number, line) in text.lines().enumerate() {
            for name in names.iter().filter(|name| names_word(line, name)) {
                leaks.push(format!("{}:{}: {name}", file.display(), line_number + 1));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "framework code names the reference domain (take it from the Domain instead):\n{}",
        leaks.join("\n")
    );
}
