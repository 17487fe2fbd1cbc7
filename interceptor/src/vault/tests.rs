use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use super::*;
use crate::detection::check::{contains, mask_all};
use crate::detection::{Engine, load_dir};

const REAL: &str = "sk-proj-REALvalue0123456789abcdefghijklmnopqrstuv";
const PLACEHOLDER: &str = "itk_live_openai_7f3a9c";

fn write_vault(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn vault_text(secret: &str) -> String {
    format!(
        r#"credentials:
  - name: openai-prod
    placeholder: {PLACEHOLDER}
    secret: {secret}
    identities:
      - exe: /usr/bin/python3
        uid: 1000
      - container: 3f2a
    destinations:
      - host: api.openai.com
        path_prefix: /v1/
      - host: "*.openai.azure.com"
"#
    )
}

fn python() -> Caller<'static> {
    Caller {
        exe: Some("/usr/bin/python3"),
        uid: 1000,
        cgroup: Some("/interceptor/agent"),
        container: None,
    }
}

/// The vault's own check for `caller` toward `to` (no policy on top).
fn allow<'a>(
    caller: &'a Caller<'a>,
    to: &'a Destination<'a>,
) -> impl FnMut(&Credential) -> Result<(), Refusal> + Send + 'a {
    move |c| c.authorize(caller, to)
}

const OPENAI: Destination = Destination {
    host: "api.openai.com",
    path: "/v1/chat/completions",
};

#[test]
fn swaps_for_an_allowed_identity_and_destination() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::load(&write_vault(dir.path(), "v.yaml", &vault_text(REAL))).unwrap();
    let header = format!("Bearer {PLACEHOLDER}");
    let swapped = vault
        .swap(header.as_bytes(), &mut allow(&python(), &OPENAI))
        .unwrap()
        .unwrap();
    assert_eq!(swapped.bytes, format!("Bearer {REAL}").as_bytes());
    assert_eq!(swapped.used, ["openai-prod"]);
    // A container by id prefix, a subdomain by wildcard, two placeholders in one body.
    let container = Caller {
        container: Some("3f2a99"),
        ..Caller::default()
    };
    let azure = Destination {
        host: "acme.openai.azure.com",
        path: "/openai/deployments",
    };
    let body = format!("{{\"k\":\"{PLACEHOLDER}\",\"k2\":\"{PLACEHOLDER}\"}}");
    let swapped = vault
        .swap(body.as_bytes(), &mut allow(&container, &azure))
        .unwrap()
        .unwrap();
    assert_eq!(
        swapped.bytes,
        format!("{{\"k\":\"{REAL}\",\"k2\":\"{REAL}\"}}").as_bytes()
    );
    assert_eq!(
        vault.swap(b"no placeholder here", &mut allow(&python(), &OPENAI)),
        Ok(None)
    );
}

#[test]
fn refuses_the_wrong_identity_or_destination_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::load(&write_vault(dir.path(), "v.yaml", &vault_text(REAL))).unwrap();
    let data = PLACEHOLDER.as_bytes();
    let curl = Caller {
        exe: Some("/usr/bin/curl"),
        ..python()
    };
    let err = vault.swap(data, &mut allow(&curl, &OPENAI)).unwrap_err();
    assert!(matches!(err, Refusal::Identity { .. }));
    let reason = err.to_string();
    assert!(
        reason.contains("openai-prod") && reason.contains("/usr/bin/curl"),
        "{reason}"
    );
    assert!(!reason.contains(REAL));
    let other_uid = Caller { uid: 0, ..python() };
    assert!(matches!(
        vault.swap(data, &mut allow(&other_uid, &OPENAI)),
        Err(Refusal::Identity { .. })
    ));
    for (host, path) in [
        ("evil.example", "/v1/chat"),
        ("api.openai.com", "/v2/other"),
        ("evilopenai.azure.com", "/"),
        ("openai.azure.com.evil", "/"),
    ] {
        let err = vault
            .swap(data, &mut allow(&python(), &Destination { host, path }))
            .unwrap_err();
        assert!(matches!(err, Refusal::Destination { .. }), "{host}{path}");
        assert!(err.to_string().contains(host), "{err}");
    }
}

#[test]
fn the_file_must_be_0600_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_vault(dir.path(), "v.yaml", &vault_text(REAL));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Vault::load(&path).unwrap_err();
    assert!(
        matches!(err, VaultError::Permissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0600"));

    let open_identity = vault_text(REAL).replace("      - container: 3f2a\n", "      - {}\n");
    let path = write_vault(dir.path(), "v.yaml", &open_identity);
    let err = Vault::load(&path).unwrap_err().to_string();
    assert!(err.contains("would match everyone"), "{err}");
    assert!(!err.contains(REAL), "{err}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::load(&write_vault(dir.path(), "v.yaml", &vault_text(REAL))).unwrap();
    let debug = format!("{vault:?}");
    assert!(!debug.contains(REAL), "{debug}");
    assert!(debug.contains("<redacted>"));
}

#[test]
fn reloads_a_changed_vault_and_keeps_the_old_one_on_error() {
    let dir = tempfile::tempdir().unwrap();
    write_vault(dir.path(), "a.yaml", &vault_text(REAL));
    let shared = SharedVault::open(dir.path()).unwrap();
    assert!(!shared.reload_if_changed().unwrap());
    let rotated = "sk-proj-ROTATED9876543210zyxwvutsrqponmlkjihgfedcba";
    // mtime granularity: make sure the change is visible.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_vault(dir.path(), "a.yaml", &vault_text(rotated));
    assert!(shared.reload_if_changed().unwrap());
    let swapped = shared
        .current()
        .swap(PLACEHOLDER.as_bytes(), &mut allow(&python(), &OPENAI))
        .unwrap()
        .unwrap();
    assert_eq!(swapped.bytes, rotated.as_bytes());
    // A broken file: the reload fails, the rotated vault stays in force.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_vault(dir.path(), "a.yaml", "credentials: [");
    assert!(shared.reload_if_changed().is_err());
    assert_eq!(shared.current().credentials()[0].secret.expose(), rotated);
}

#[test]
fn a_response_echoing_the_real_value_is_masked() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::load(&write_vault(dir.path(), "v.yaml", &vault_text(REAL))).unwrap();
    let rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/rules");
    let mut rules = load_dir(&rules_dir).unwrap();
    rules.extend(vault.echo_rules());
    let engine = Arc::new(Engine::compile(&rules).unwrap());
    let response = format!("{{\"error\": \"invalid key {REAL} for org\"}}");
    let masked = mask_all(&engine, response.as_bytes()).unwrap();
    assert!(!contains(&masked, REAL.as_bytes()));
    assert_eq!(masked.len(), response.len());
}

/// A body with placeholders, cut at every point: the stream swaps them all, holds back at
/// most one placeholder's length, and a refusal names the credential.
#[test]
fn a_stream_swaps_placeholders_split_at_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let vault =
        Arc::new(Vault::load(&write_vault(dir.path(), "v.yaml", &vault_text(REAL))).unwrap());
    let body = format!("{{\"key\": \"{PLACEHOLDER}\", \"again\": \"{PLACEHOLDER}\", \"itk_\": 1}}");
    let want = body.replace(PLACEHOLDER, REAL);
    let check =
        || -> Box<Check<'static>> { Box::new(|c: &Credential| c.authorize(&python(), &OPENAI)) };
    for split in 0..=body.len() {
        for second in [split, (split + 5).min(body.len())] {
            let mut s = StreamSwap::new(vault.clone(), check());
            let mut out = Vec::new();
            for piece in [&body[..split], &body[split..second], &body[second..]] {
                s.push(piece.as_bytes(), &mut out).unwrap();
                assert!(s.held.len() < PLACEHOLDER.len(), "split {split}");
            }
            s.finish(&mut out).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                want,
                "split {split}/{second}"
            );
            assert_eq!(s.used(), ["openai-prod"]);
        }
    }
    // Plain text is not held back at all.
    let mut s = StreamSwap::new(vault.clone(), check());
    let mut out = Vec::new();
    s.push(b"plain text, nothing to swap", &mut out).unwrap();
    assert_eq!(out, b"plain text, nothing to swap");
    // The policy refuses: nothing of the refused chunk is written.
    let mut s = StreamSwap::new(
        vault,
        Box::new(|c: &Credential| {
            Err(Refusal::Policy {
                name: c.name.clone(),
                rule: "ci".into(),
            })
        }),
    );
    let mut out = Vec::new();
    let err = s.push(body.as_bytes(), &mut out).unwrap_err();
    assert!(out.is_empty());
    assert!(
        err.to_string()
            .contains("\"openai-prod\" is not allowed by policy rule \"ci\""),
        "{err}"
    );
}

#[test]
fn the_sample_vault_loads_and_serves_the_example_policys_credential() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(examples.join("vault.yaml")).unwrap();
    let vault = Vault::load(&write_vault(dir.path(), "vault.yaml", &text)).unwrap();
    let policy = std::fs::read_to_string(examples.join("ai-agent.toml")).unwrap();
    for c in vault.credentials() {
        assert!(policy.contains(&format!("\"{}\"", c.name)), "{}", c.name);
    }
    let caller = Caller {
        exe: Some("/usr/bin/python3.11"),
        uid: 1000,
        cgroup: None,
        container: None,
    };
    let to = |host| Destination {
        host,
        path: "/v1/chat/completions",
    };
    let key = &vault.credentials()[0];
    assert!(key.authorize(&caller, &to("api.openai.com")).is_ok());
    assert!(key.authorize(&caller, &to("example.com")).is_err());
}
