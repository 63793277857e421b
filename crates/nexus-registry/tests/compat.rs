//! Table-driven compatibility cases: every `tests/compat/*.json` file is one case,
//!
//! ```json
//! {"description": "...", "mode": "BACKWARD", "previous": [{...}, ...], "new": {...},
//!  "compatible": false, "violations": [{"path": "$.x", "rule": "FIELD_REMOVED"}]}
//! ```
//!
//! `previous` is oldest first; `violations`, optional, is the exact set of (path, rule) pairs
//! expected. A failing case is reported with its file name, after all cases have run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nexus_registry::compat::{self, Compatibility, Rule};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[allow(dead_code)] // documentation for people reading the file
    description: String,
    mode: String,
    previous: Vec<Value>,
    new: Value,
    compatible: bool,
    violations: Option<Vec<Expected>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    path: String,
    rule: String,
}

struct Loaded {
    name: String,
    case: Case,
    mode: Compatibility,
    expected: Option<BTreeSet<(String, Rule)>>,
}

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("compat")
}

fn load_all() -> Vec<Loaded> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(case_dir())
        .expect("tests/compat exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files.iter().map(|file| load(file)).collect()
}

fn load(file: &Path) -> Loaded {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{name}: {e}"));
    let case: Case = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not a case file: {e}"));
    let mode = case.mode.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected = case.violations.as_ref().map(|violations| {
        violations
            .iter()
            .map(|v| (v.path.clone(), v.rule.parse().unwrap_or_else(|e| panic!("{name}: {e}"))))
            .collect()
    });
    if case.compatible && expected.as_ref().is_some_and(|e: &BTreeSet<_>| !e.is_empty()) {
        panic!("{name}: a compatible case cannot expect violations");
    }
    Loaded { name, case, mode, expected }
}

fn run(loaded: &Loaded) -> Result<(), String> {
    let found = compat::check(loaded.mode, &loaded.case.new, &loaded.case.previous);
    let pairs: BTreeSet<(String, Rule)> = found.iter().map(|v| (v.path.clone(), v.rule)).collect();
    let listing = || found.iter().map(|v| format!("\n    {v}")).collect::<String>();
    if found.is_empty() != loaded.case.compatible {
        let verdict = if found.is_empty() { "compatible" } else { "incompatible" };
        return Err(format!("{} found {verdict}:{}", loaded.case.mode, listing()));
    }
    match &loaded.expected {
        Some(expected) if &pairs != expected => Err(format!(
            "expected {:?}\n  found {:?}:{}",
            expected.iter().map(|(p, r)| format!("{r} at {p}")).collect::<Vec<_>>(),
            pairs.iter().map(|(p, r)| format!("{r} at {p}")).collect::<Vec<_>>(),
            listing()
        )),
        _ => Ok(()),
    }
}

#[test]
fn every_case_holds() {
    let cases = load_all();
    assert!(cases.len() >= 30, "only {} case files in {}", cases.len(), case_dir().display());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|loaded| run(loaded).err().map(|e| format!("{}: {e}", loaded.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The table is meant to cover every rule and every level; this keeps it that way.
#[test]
fn cases_cover_every_rule_and_every_level() {
    let cases = load_all();
    let rules: BTreeSet<Rule> =
        cases.iter().filter_map(|c| c.expected.as_ref()).flatten().map(|(_, rule)| *rule).collect();
    let uncovered: Vec<Rule> = Rule::ALL.into_iter().filter(|rule| !rules.contains(rule)).collect();
    assert!(uncovered.is_empty(), "no case expects {uncovered:?}");

    for level in Compatibility::ALL {
        let of_level: Vec<&Loaded> = cases.iter().filter(|c| c.mode == level).collect();
        assert!(of_level.iter().any(|c| c.case.compatible), "no compatible {level} case");
        if level != Compatibility::None {
            assert!(of_level.iter().any(|c| !c.case.compatible), "no incompatible {level} case");
        }
    }

    // Each transitive level has a case that only it catches: the same schemas pass the
    // non-transitive level (the latest version is fine, an older one is not).
    let pairs = [
        (Compatibility::BackwardTransitive, Compatibility::Backward),
        (Compatibility::ForwardTransitive, Compatibility::Forward),
        (Compatibility::FullTransitive, Compatibility::Full),
    ];
    for (transitive, plain) in pairs {
        let caught = cases.iter().any(|c| {
            c.mode == transitive
                && !c.case.compatible
                && compat::check(plain, &c.case.new, &c.case.previous).is_empty()
        });
        assert!(caught, "no {transitive} case that {plain} lets through");
    }
}
