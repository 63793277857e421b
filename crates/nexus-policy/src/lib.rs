//! The policy engine: the seed's architecture rules (`policies/*.rego`, `package
//! nexus.architecture`) evaluated in-process by an embedded Rego interpreter (regorus).
//!
//! It owns three things: loading a directory of Rego files ([`PolicyEngine::load_dir`]),
//! running their unit tests the way `opa test` would ([`PolicyEngine::run_tests`]), and judging
//! facts against `data.nexus.architecture.deny` ([`PolicyEngine::check_facts`]). [`ServiceGraph`]
//! is the vocabulary the server describes itself in; [`ServiceGraph::facts`] turns it into the
//! facts the rules read.
//!
//! **Invariant:** evaluation happens in-process and is pure; the only I/O is reading the policy
//! directory handed to [`PolicyEngine::load_dir`]. No network, no `opa` binary, no clock.
//!
//! **Rego syntax:** the policies are Rego v1 (`deny contains msg if { … }`) with `import rego.v1`,
//! which OPA 0.59+ and OPA 1.x both accept. The engine stays in regorus's default v1 mode, so
//! old-style `deny[msg] { … }` files are rejected at load time rather than half-understood.

mod graph;

use std::fmt;
use std::path::{Path, PathBuf};

pub use graph::{ApiEndpoint, PublishedEvent, ServiceCall, ServiceGraph, TableOperations};

/// The rule every fact is judged against (contract §1, `nexus policy check`).
pub const DENY_RULE: &str = "data.nexus.architecture.deny";

/// Why loading or evaluating policies failed. Violations are not errors: they are the
/// [`Violation`]s [`PolicyEngine::check_facts`] returns.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy directory or one of its files could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The directory holds no `*.rego` file: judging against nothing would pass everything.
    #[error("no .rego files in {}", dir.display())]
    NoPolicies { dir: PathBuf },
    /// A policy file is not valid Rego (v1).
    #[error("invalid policy {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// The facts are not a JSON object or an array of objects.
    #[error("fact {index} is not a JSON object: {found}")]
    InvalidFact { index: usize, found: String },
    /// The engine failed to evaluate a rule, or the rule is missing or not a set of messages.
    #[error("evaluating {rule}: {message}")]
    Evaluation { rule: String, message: String },
}

/// The outcome of one `test_` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// Full rule path, e.g. `data.nexus.architecture.test_delete_on_event_store_is_denied`.
    pub name: String,
    /// True when the rule evaluated to `true`; undefined, `false` or an error is a failure.
    pub passed: bool,
    /// The evaluation error, if the rule could not be evaluated at all.
    pub error: Option<String>,
}

/// One denial: the message of a `deny` rule and the fact that triggered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Index of the fact in the array given to [`PolicyEngine::check_facts`] (0 for a single fact).
    pub fact_index: usize,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fact {}: {}", self.fact_index, self.message)
    }
}

/// The loaded policies. Parsing is the expensive part (~hundreds of µs per file), so load once
/// and keep the engine; each call evaluates on a clone, which leaves `self` untouched.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: regorus::Engine,
    /// Each loaded file with its package path (`data.nexus.architecture`) and source label.
    modules: Vec<LoadedModule>,
}

#[derive(Debug, Clone)]
struct LoadedModule {
    /// The label the file was added under; `has_declared_rule_rooted_at` looks modules up by it.
    source_label: String,
    package: String,
    test_candidates: Vec<String>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine").field("modules", &self.modules).finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Loads every `*.rego` file under `dir` (recursively, in path order), tests included.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<PolicyEngine, PolicyError> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        collect_rego_files(dir, &mut files)?;
        if files.is_empty() {
            return Err(PolicyError::NoPolicies { dir: dir.to_path_buf() });
        }
        files.sort();

        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| PolicyError::Io { path: path.clone(), source })?;
            sources.push((path, text));
        }
        Self::from_sources(sources)
    }

    /// The repository's own `policies/`, compiled into the binary, so `nexus serve` can judge
    /// itself wherever it runs. `nexus policy test|check` load a directory instead.
    pub fn bundled() -> Result<PolicyEngine, PolicyError> {
        Self::from_sources(
            BUNDLED_POLICIES.iter().map(|(path, text)| (PathBuf::from(path), text.to_string())).collect(),
        )
    }

    /// Loads policies from `(path, text)` pairs; the path only labels messages.
    fn from_sources(sources: Vec<(PathBuf, String)>) -> Result<PolicyEngine, PolicyError> {
        let mut engine = regorus::Engine::new();
        // Builtin errors (e.g. `upper` of a number in a malformed fact) make the expression
        // undefined, as in OPA's default mode, instead of aborting the whole evaluation.
        engine.set_strict_builtin_errors(false);
        let mut modules = Vec::with_capacity(sources.len());
        for (path, text) in sources {
            let source_label = path.display().to_string();
            let test_candidates = test_rule_candidates(&text);
            let package = engine
                .add_policy(source_label.clone(), text)
                .map_err(|e| PolicyError::Parse { path: path.clone(), message: e.to_string() })?;
            modules.push(LoadedModule { source_label, package, test_candidates });
        }
        Ok(PolicyEngine { engine, modules })
    }

    /// The packages loaded, e.g. `["data.nexus.architecture"]`, one per file.
    pub fn packages(&self) -> Vec<String> {
        self.modules.iter().map(|m| m.package.clone()).collect()
    }

    /// Runs every `test_*` rule of every loaded package, as `opa test` does: a test passes when
    /// it evaluates to `true`. Results are ordered by package, then rule name.
    pub fn run_tests(&self) -> Vec<TestOutcome> {
        let mut engine = self.engine.clone();
        let mut names = Vec::new();
        for module in &self.modules {
            for candidate in &module.test_candidates {
                // The text scan over-approximates (comments, strings, references): keep only
                // names the parser saw declared as a rule head of this module.
                let declared =
                    engine.has_declared_rule_rooted_at(&module.source_label, candidate).unwrap_or(false);
                if declared {
                    names.push(format!("{}.{candidate}", module.package));
                }
            }
        }
        // A package split over several files declares each test once per file at most; OPA
        // runs a rule path once.
        names.sort();
        names.dedup();

        names
            .into_iter()
            .map(|name| match engine.eval_rule(name.clone()) {
                Ok(value) => TestOutcome { passed: value == regorus::Value::Bool(true), name, error: None },
                Err(e) => TestOutcome { name, passed: false, error: Some(e.to_string()) },
            })
            .collect()
    }

    /// Judges each fact against [`DENY_RULE`]. `facts` is a JSON array of facts or one fact;
    /// each fact must be a JSON object. Returns every violation, in fact order (messages of
    /// one fact sorted); an empty vector means the facts comply.
    pub fn check_facts(&self, facts: &serde_json::Value) -> Result<Vec<Violation>, PolicyError> {
        let facts: Vec<&serde_json::Value> = match facts {
            serde_json::Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for (index, fact) in facts.iter().enumerate() {
            if !fact.is_object() {
                return Err(PolicyError::InvalidFact { index, found: truncate(&fact.to_string()) });
            }
        }

        let mut engine = self.engine.clone();
        let mut violations = Vec::new();
        for (fact_index, fact) in facts.into_iter().enumerate() {
            engine.set_input(regorus::Value::from((*fact).clone()));
            for message in eval_deny(&mut engine)? {
                violations.push(Violation { fact_index, message });
            }
        }
        Ok(violations)
    }

    /// Judges a [`ServiceGraph`]: [`PolicyEngine::check_facts`] on [`ServiceGraph::facts`], so
    /// `fact_index` indexes that vector.
    pub fn check_graph(&self, graph: &ServiceGraph) -> Result<Vec<Violation>, PolicyError> {
        self.check_facts(&serde_json::Value::Array(graph.facts()))
    }
}

/// `policies/*.rego` at build time; keep in step with the directory (a test checks it).
const BUNDLED_POLICIES: [(&str, &str); 2] = [
    ("policies/architecture.rego", include_str!("../../../policies/architecture.rego")),
    ("policies/architecture_test.rego", include_str!("../../../policies/architecture_test.rego")),
];

/// Evaluates [`DENY_RULE`] on the engine's current input. A missing rule is an error, never
/// "no violations": a policy directory without the rules must not pass everything.
fn eval_deny(engine: &mut regorus::Engine) -> Result<Vec<String>, PolicyError> {
    let evaluation = |message: String| PolicyError::Evaluation { rule: DENY_RULE.to_string(), message };
    let value = engine.eval_rule(DENY_RULE.to_string()).map_err(|e| evaluation(e.to_string()))?;
    let set = match &value {
        // A partial set rule with no members at all may come back undefined.
        regorus::Value::Undefined => return Ok(Vec::new()),
        regorus::Value::Set(set) => set,
        other => return Err(evaluation(format!("expected a set of messages, got {other}"))),
    };
    set.iter_sorted()
        .map(|message| match message {
            regorus::Value::String(s) => Ok(s.to_string()),
            other => Err(evaluation(format!("expected a string message, got {other}"))),
        })
        .collect()
}

fn collect_rego_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let io_error = |source| PolicyError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        if path.is_dir() {
            collect_rego_files(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "rego") {
            files.push(path);
        }
    }
    Ok(())
}

/// Every identifier in `text` that starts with `test_`: a superset of the test rule names,
/// narrowed by the parser in [`PolicyEngine::run_tests`]. Scanning the text keeps us on
/// regorus's public API (its AST is unstable).
fn test_rule_candidates(text: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("test_") {
        let preceded_by_ident = rest[..start].chars().next_back().is_some_and(is_ident);
        let tail = &rest[start..];
        let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !preceded_by_ident {
            names.push(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names.sort();
    names.dedup();
    names
}

fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_whole_identifiers_starting_with_test() {
        let text = "test_a if { true }\n# test_b in a comment\nnot_test_c := 1\ntest_d.e if true";
        assert_eq!(test_rule_candidates(text), ["test_a", "test_b", "test_d"]);
    }

    #[test]
    fn engine_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PolicyEngine>();
    }
}
