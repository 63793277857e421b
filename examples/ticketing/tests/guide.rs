//! Keeps the user guide `docs/build-your-own-service.md` true: every code block it quotes from a
//! file of this crate must still be in that file, verbatim.
//!
//! The guide introduces a quote with a line that ends in a link to the file and a colon,
//! ``From [`examples/ticketing/src/agents.rs`](../examples/ticketing/src/agents.rs):``; the code
//! blocks after it, up to the next heading, whose language is the file's (`rust` for `.rs`,
//! `toml`, `json`), are quoted from that file.

use std::path::Path;

fn language_of(file: &str) -> &'static str {
    match Path::new(file).extension().and_then(|e| e.to_str()) {
        Some("rs") => "rust",
        Some("toml") => "toml",
        Some("json") => "json",
        _ => "",
    }
}

/// (file, language, text) of every quoted block, in order.
fn quotes(guide: &str) -> Vec<(String, String, String)> {
    let mut quotes = Vec::new();
    let mut source: Option<String> = None;
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(language) = trimmed.strip_prefix("```") {
            let indent = line.len() - trimmed.len();
            let mut text = String::new();
            for inner in lines.by_ref() {
                if inner.trim() == "```" {
                    break;
                }
                text.push_str(inner.get(indent..).unwrap_or(inner.trim_start()));
                text.push('\n');
            }
            if let Some(file) = &source {
                quotes.push((file.clone(), language.trim().to_owned(), text));
            }
        } else if trimmed.starts_with('#') {
            source = None;
        } else if line.ends_with("):")
            && let Some(start) = line.rfind("[`examples/ticketing/")
        {
            let path = &line[start + 2..];
            source = Some(path[..path.find("`]").expect("a link text in backticks")].to_owned());
        }
    }
    quotes
}

#[test]
fn every_quote_in_the_guide_is_still_in_its_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let guide = std::fs::read_to_string(root.join("docs/build-your-own-service.md")).expect("the guide");
    let mut checked = 0;
    for (file, language, text) in quotes(&guide) {
        if language != language_of(&file) {
            continue;
        }
        let source = std::fs::read_to_string(root.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(source.contains(&text), "the guide quotes from {file} what it no longer holds:\n{text}");
        checked += 1;
    }
    // The quotes of every file the guide walks through; fewer means the convention above broke.
    assert!(checked >= 18, "only {checked} quotes found in the guide");
}

#[test]
fn the_parser_finds_quotes_and_their_files() {
    let guide = "## A\nFrom [`examples/ticketing/src/main.rs`](../examples/ticketing/src/main.rs):\n\n\
                 ```rust\nfn main() {}\n```\n\n```sh\nls\n```\n## B\n```rust\nnot quoted\n```\n";
    let found = quotes(guide);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0], ("examples/ticketing/src/main.rs".into(), "rust".into(), "fn main() {}\n".into()));
    assert_eq!(found[1].1, "sh");
}
