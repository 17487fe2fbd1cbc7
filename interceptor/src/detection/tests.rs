//! Engine and masker tests over the project's own rule files.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::check::{check_dir, contains, mask_all};
use super::*;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/rules")
}

fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Arc::new(Engine::compile(&load_dir(&rules_dir()).unwrap()).unwrap()))
        .clone()
}

#[test]
fn rules_check_passes_for_every_rule() {
    let report = check_dir(&rules_dir()).unwrap();
    assert!(report.problems.is_empty(), "{}", report.problems.join("\n"));
    assert!(report.rules >= 120, "{} rules", report.rules);
    assert!(report.examples >= report.rules);
    assert!(report.negative_examples >= report.rules);
}

#[test]
fn a_broken_rule_is_reported_by_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        r#"rules:
  - id: t.no-capture
    name: no capture group
    pattern: 'tok_[a-z]{8}'
    examples: ['tok_abcdefgh']
  - id: t.lookahead
    name: hyperscan rejects lookahead
    pattern: 'key_(?=x)([a-z]{8})'
    examples: ['key_xabcdefg']
  - id: t.wrong-secret
    name: example names another capture
    pattern: 'id_([a-z]{8})'
    examples: [{text: 'id_abcdefgh', secret: 'abcdefgX'}]
  - id: t.negative-matches
    name: negative example matches
    pattern: 'pw_([a-z]{8})'
    examples: ['pw_abcdefgh']
    negative_examples: ['pw_zzzzzzzz']
"#,
    )
    .unwrap();
    let report = check_dir(dir.path()).unwrap();
    let text = report.problems.join("\n");
    assert_eq!(report.problems.len(), 4, "{text}");
    for id in [
        "t.no-capture",
        "t.lookahead",
        "t.wrong-secret",
        "t.negative-matches",
    ] {
        assert!(text.contains(id), "{id} missing in:\n{text}");
    }
}
