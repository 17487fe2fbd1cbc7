//! `interceptor rules check` as an operator runs it: exit 0 on the project's rules, 1 with
//! the problem named on a broken rule file.

use std::path::Path;
use std::process::Command;

fn rules_check(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_interceptor"))
        .args(["rules", "check"])
        .arg(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

#[test]
fn project_rules_pass_and_a_broken_file_fails() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/rules");
    let (code, text) = rules_check(&dir);
    assert_eq!(code, 0, "{text}");
    assert!(text.trim_end().ends_with(": ok"), "{text}");

    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("x.yaml"),
        "rules:\n  - id: x.bad\n    name: x\n    pattern: 'tok_([a-z]{8})'\n    examples: ['tok_ABC']\n",
    )
    .unwrap();
    let (code, text) = rules_check(bad.path());
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("x.bad") && text.contains("regex does not match"),
        "{text}"
    );
}
