//! Tokenization vault: workloads hold placeholders, interceptor swaps in the real credential
//! on the way out, only for the identities and destinations the vault allows.
//!
//! The vault is a YAML file (or a directory of them), mode 0600, reloadable:
//! ```yaml
//! credentials:
//!   - name: openai-prod
//!     placeholder: itk_live_openai_7f3a9c
//!     secret: sk-proj-...
//!     identities: [{exe: /usr/bin/python3, uid: 1000}, {container: 3f2a}]
//!     destinations: [{host: api.openai.com, path_prefix: /v1/}]
//! ```
//! An identity entry matches when every field it gives matches (`cgroup` and `container` by
//! prefix); a destination matches by host (exact, or `*.suffix`) and path prefix. A credential
//! with no identities or no destinations can be used by nobody.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Deserialize;

use crate::detection::Rule;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: mode {mode:o} lets others read it; the vault must be 0600")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("{path}: credential {name:?}: {problem}")]
    Invalid {
        path: PathBuf,
        name: String,
        problem: String,
    },
}

/// A credential value: never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    credentials: Vec<Credential>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub name: String,
    pub placeholder: String,
    pub secret: Secret,
    #[serde(default)]
    pub identities: Vec<IdentityMatch>,
    #[serde(default)]
    pub destinations: Vec<DestinationMatch>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityMatch {
    pub exe: Option<String>,
    pub uid: Option<u32>,
    /// cgroup path prefix (relative to the cgroup2 mount, as sessions record it).
    pub cgroup: Option<String>,
    /// Container id prefix.
    pub container: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationMatch {
    /// Exact host, or `*.example.com` for any subdomain.
    pub host: String,
    #[serde(default = "root_path")]
    pub path_prefix: String,
}

fn root_path() -> String {
    "/".into()
}

/// Who is sending: the connection's process identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub exe: Option<&'a str>,
    pub uid: u32,
    pub cgroup: Option<&'a str>,
    pub container: Option<&'a str>,
}

/// Where the request goes.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub host: &'a str,
    pub path: &'a str,
}

/// Why a placeholder was not swapped; the request must be refused (403) with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("credential {name:?} is not allowed for this identity ({caller})")]
    Identity { name: String, caller: String },
    #[error("credential {name:?} is not allowed toward {host}{path}")]
    Destination {
        name: String,
        host: String,
        path: String,
    },
    #[error("credential {name:?} is not allowed by policy rule {rule:?} (vault_credentials)")]
    Policy { name: String, rule: String },
}

/// The result of a swap: the bytes to send, and which credentials were used (by name).
#[derive(Debug, PartialEq, Eq)]
pub struct Swapped {
    pub bytes: Vec<u8>,
    pub used: Vec<String>,
}

#[derive(Debug)]
pub struct Vault {
    credentials: Vec<Credential>,
    /// Every placeholder, longest first so none shadows a longer one.
    placeholders: regex::bytes::Regex,
    /// Files and their modification times, to reload on change.
    sources: Vec<(PathBuf, Option<SystemTime>)>,
}

impl Vault {
    /// Loads a vault file, or every `*.yaml` file of a directory.
    pub fn load(path: &Path) -> Result<Vault, VaultError> {
        let read = |source| VaultError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut sources = Vec::new();
        let files = if path.is_dir() {
            // The directory's own time changes when a file is added or removed.
            sources.push((path.to_path_buf(), modified(path)));
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(read)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut credentials = Vec::new();
        for file in files {
            let (creds, modified) = load_file(&file)?;
            for c in &creds {
                validate(&file, c, &credentials)?;
                credentials.push(c.clone());
            }
            sources.push((file, modified));
        }
        let mut alternatives: Vec<&str> =
            credentials.iter().map(|c| c.placeholder.as_str()).collect();
        alternatives.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let pattern = if alternatives.is_empty() {
            // Matches nothing.
            "[^\\x00-\\xff]".to_string()
        } else {
            alternatives
                .iter()
                .map(|p| regex::escape(p))
                .collect::<Vec<_>>()
                .join("|")
        };
        let placeholders = regex::bytes::RegexBuilder::new(&pattern)
            .unicode(false)
            .build()
            .expect("escaped literals always compile");
        Ok(Vault {
            credentials,
            placeholders,
            sources,
        })
    }

    pub fn credentials(&self) -> &[Credential] {
        &self.credentials
    }

    /// Replaces every placeholder in `data` (a header value or a body) with its credential,
    /// if `check` allows that credential (see [`Credential::authorize`]); otherwise refuses,
    /// naming the first credential that is not allowed. `None` when `data` holds no
    /// placeholder.
    pub fn swap(&self, data: &[u8], check: &mut Check) -> Result<Option<Swapped>, Refusal> {
        let mut bytes = Vec::new();
        let mut used: Vec<String> = Vec::new();
        self.swap_into(data, true, check, &mut bytes, &mut used)?;
        Ok((!used.is_empty()).then_some(Swapped { bytes, used }))
    }

    /// Copies `data` to `out` with every placeholder in it swapped (and its credential's
    /// name added to `used`). Unless `at_end`, stops before a tail that could be the start
    /// of a placeholder cut by the end of `data`, and returns where that tail starts.
    /// Nothing is written when a credential is refused.
    fn swap_into(
        &self,
        data: &[u8],
        at_end: bool,
        check: &mut Check,
        out: &mut Vec<u8>,
        used: &mut Vec<String>,
    ) -> Result<usize, Refusal> {
        let start = out.len();
        let mut at = 0;
        for m in self.placeholders.find_iter(data) {
            let Some(c) = self
                .credentials
                .iter()
                .find(|c| c.placeholder.as_bytes() == m.as_bytes())
            else {
                continue;
            };
            if let Err(refusal) = check(c) {
                out.truncate(start);
                return Err(refusal);
            }
            out.extend_from_slice(&data[at..m.start()]);
            out.extend_from_slice(c.secret.expose().as_bytes());
            at = m.end();
            if !used.contains(&c.name) {
                used.push(c.name.clone());
            }
        }
        let keep = if at_end {
            data.len()
        } else {
            self.open_prefix(data, at)
        };
        out.extend_from_slice(&data[at..keep]);
        Ok(keep)
    }

    /// Where the bytes from `from` on could begin a placeholder that continues past the end
    /// of `data`; `data.len()` when none can.
    fn open_prefix(&self, data: &[u8], from: usize) -> usize {
        let longest = self.credentials.iter().map(|c| c.placeholder.len()).max();
        let from = from.max(data.len().saturating_sub(longest.unwrap_or(0)));
        (from..data.len())
            .find(|&i| {
                let rest = &data[i..];
                self.credentials.iter().any(|c| {
                    c.placeholder.len() > rest.len() && c.placeholder.as_bytes().starts_with(rest)
                })
            })
            .unwrap_or(data.len())
    }

    /// Every placeholder: never a secret (the masking engine exempts them, so a placeholder
    /// in a body reaches the swap that runs after masking).
    pub fn placeholders(&self) -> Vec<Vec<u8>> {
        self.credentials
            .iter()
            .map(|c| c.placeholder.clone().into_bytes())
            .collect()
    }

    /// One detection rule per real credential, so a response that echoes it is masked.
    pub fn echo_rules(&self) -> Vec<Rule> {
        self.credentials
            .iter()
            .map(|c| Rule {
                id: format!("vault.{}", c.name),
                name: format!("vault credential {}", c.name),
                pattern: format!("({})", regex::escape(c.secret.expose())),
                prefilter: None,
                stream_prefilter: None,
                keywords: Vec::new(),
                min_entropy: None,
                examples: Vec::new(),
                negative_examples: Vec::new(),
                references: Vec::new(),
                source: PathBuf::from("<vault>"),
            })
            .collect()
    }

    /// Whether a source file changed (or vanished) since this vault was loaded.
    pub fn changed_on_disk(&self) -> bool {
        self.sources
            .iter()
            .any(|(path, then)| modified(path) != *then)
    }
}

/// Decides whether a credential may be injected into the traffic at hand.
pub type Check<'a> = dyn FnMut(&Credential) -> Result<(), Refusal> + Send + 'a;

impl Credential {
    /// The vault's own rule: this caller may send this credential to this destination.
    pub fn authorize(&self, caller: &Caller, destination: &Destination) -> Result<(), Refusal> {
        if !self.identities.iter().any(|i| i.matches(caller)) {
            return Err(Refusal::Identity {
                name: self.name.clone(),
                caller: format!(
                    "exe {}, uid {}, cgroup {}, container {}",
                    caller.exe.unwrap_or("?"),
                    caller.uid,
                    caller.cgroup.unwrap_or("?"),
                    caller.container.unwrap_or("none"),
                ),
            });
        }
        if !self.destinations.iter().any(|d| d.matches(destination)) {
            return Err(Refusal::Destination {
                name: self.name.clone(),
                host: destination.host.to_string(),
                path: destination.path.to_string(),
            });
        }
        Ok(())
    }
}

impl IdentityMatch {
    fn matches(&self, caller: &Caller) -> bool {
        let prefix = |want: &Option<String>, have: Option<&str>| {
            want.as_deref()
                .is_none_or(|w| have.is_some_and(|h| h.starts_with(w)))
        };
        self.exe.as_deref().is_none_or(|e| caller.exe == Some(e))
            && self.uid.is_none_or(|u| caller.uid == u)
            && prefix(&self.cgroup, caller.cgroup)
            && prefix(&self.container, caller.container)
    }

    fn is_empty(&self) -> bool {
        self.exe.is_none()
            && self.uid.is_none()
            && self.cgroup.is_none()
            && self.container.is_none()
    }
}

impl DestinationMatch {
    fn matches(&self, d: &Destination) -> bool {
        let host = d.host.trim_end_matches('.').to_ascii_lowercase();
        let want = self.host.to_ascii_lowercase();
        let host_ok = match want.strip_prefix("*.") {
            Some(suffix) => host.strip_suffix(suffix).is_some_and(|h| h.ends_with('.')),
            None => host == want,
        };
        host_ok && d.path.starts_with(&self.path_prefix)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_file(path: &Path) -> Result<(Vec<Credential>, Option<SystemTime>), VaultError> {
    let read = |source| VaultError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(VaultError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let file: VaultFile = serde_norway::from_str(&text).map_err(|source| VaultError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((file.credentials, meta.modified().ok()))
}

fn validate(path: &Path, c: &Credential, earlier: &[Credential]) -> Result<(), VaultError> {
    let invalid = |problem: &str| VaultError::Invalid {
        path: path.to_path_buf(),
        name: c.name.clone(),
        problem: problem.into(),
    };
    if c.placeholder.len() < 8 {
        return Err(invalid("placeholder shorter than 8 characters"));
    }
    if c.secret.expose().is_empty() {
        return Err(invalid("empty secret"));
    }
    if c.secret.expose().contains(&c.placeholder) {
        return Err(invalid("the secret contains its own placeholder"));
    }
    if c.identities.iter().any(IdentityMatch::is_empty) {
        return Err(invalid(
            "an identity entry with no field would match everyone",
        ));
    }
    if earlier
        .iter()
        .any(|e| e.name == c.name || e.placeholder == c.placeholder)
    {
        return Err(invalid("name or placeholder defined twice"));
    }
    Ok(())
}

/// The daemon's current vault, swapped whole on reload.
#[derive(Clone)]
pub struct SharedVault {
    path: PathBuf,
    current: Arc<RwLock<Arc<Vault>>>,
}

impl SharedVault {
    pub fn open(path: &Path) -> Result<SharedVault, VaultError> {
        Ok(SharedVault {
            current: Arc::new(RwLock::new(Arc::new(Vault::load(path)?))),
            path: path.to_path_buf(),
        })
    }

    pub fn current(&self) -> Arc<Vault> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the vault again; on error the previous one stays in force.
    pub fn reload(&self) -> Result<(), VaultError> {
        let fresh = Arc::new(Vault::load(&self.path)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads if a file changed; true when it did.
    pub fn reload_if_changed(&self) -> Result<bool, VaultError> {
        if !self.current().changed_on_disk() {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }
}

/// Swaps placeholders in a stream (a request body) chunk by chunk. Only a tail that could
/// be the start of a placeholder split across chunks is held back (shorter than the longest
/// placeholder), so a body is never buffered whole.
pub struct StreamSwap {
    vault: Arc<Vault>,
    check: Box<Check<'static>>,
    held: Vec<u8>,
    used: Vec<String>,
}

impl StreamSwap {
    pub fn new(vault: Arc<Vault>, check: Box<Check<'static>>) -> StreamSwap {
        StreamSwap {
            vault,
            check,
            held: Vec::new(),
            used: Vec::new(),
        }
    }

    /// Appends to `out` what can go on now, placeholders swapped.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), Refusal> {
        if self.held.is_empty() {
            let keep = self.swap(chunk, false, out)?;
            self.held.extend_from_slice(&chunk[keep..]);
        } else {
            let mut data = std::mem::take(&mut self.held);
            data.extend_from_slice(chunk);
            let keep = self.swap(&data, false, out)?;
            data.drain(..keep);
            self.held = data;
        }
        Ok(())
    }

    /// End of the stream: the held tail.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let held = std::mem::take(&mut self.held);
        self.swap(&held, true, out).map(|_| ())
    }

    fn swap(&mut self, data: &[u8], at_end: bool, out: &mut Vec<u8>) -> Result<usize, Refusal> {
        self.vault
            .swap_into(data, at_end, &mut self.check, out, &mut self.used)
    }

    /// Names of the credentials swapped in so far.
    pub fn used(&self) -> &[String] {
        &self.used
    }
}

#[cfg(test)]
mod tests;
