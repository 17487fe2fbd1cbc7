//! Making interceptor's CA trusted by a command's TLS stacks, with no flag or variable in
//! the command and nothing changed outside its private mount namespace.
//!
//! Bind mounts over what each stack reads (all copies live in a temporary directory):
//! - the hashed certificate directory (`/etc/ssl/certs`: OpenSSL's `-CApath`/`SSL_CERT_DIR`,
//!   GnuTLS, Go, rustls-native-certs) by a copy holding the same entries plus the CA and its
//!   `<subject hash>.N` link; the system bundle inside it (Debian's `ca-certificates.crt`)
//!   and Java's JKS `cacerts` are rewritten in the copy;
//! - a system bundle or JKS truststore outside that directory, and every certifi
//!   `cacert.pem` the command's Python may import ([`certifi`]), by an extended copy;
//! - Node.js gets `NODE_EXTRA_CA_CERTS` (its bundled roots ignore the system store).
//!
//! What stays impossible: clients that pin certificates or carry compiled-in roots (Rust
//! `webpki-roots`, some Go and mobile SDKs) never trust a local CA; `--passthrough HOST`
//! relays such hosts without decrypting them.

mod certifi;
mod jks;
mod subject_hash;

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub use certifi::CommandSite;

/// The hashed certificate directory OpenSSL-based stacks read.
const CERT_DIR: &str = "/etc/ssl/certs";
/// System CA bundles, by distribution family; the first that exists is extended.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];
/// The name of the CA's PEM inside the directory copy (what the hash link points at).
const CA_FILE: &str = "interceptor-ca.pem";
const NODE_VAR: &str = "NODE_EXTRA_CA_CERTS";
/// Copies of the certificate directory go this deep (Debian's `java/cacerts` is one down).
const MAX_DEPTH: usize = 4;

/// One bind mount, with the message the child prints if it fails (made before fork).
pub struct BindMount {
    source: CString,
    target: CString,
    failure: CString,
}

/// The prepared trust: files in a temporary directory (removed on Drop), the mounts to
/// make in the command's namespace and the variables to set in its environment.
pub struct TrustOverlay {
    dir: PathBuf,
    pub mounts: Vec<BindMount>,
    pub env: Vec<(OsString, OsString)>,
}

impl TrustOverlay {
    pub fn prepare(ca_pem: &str, site: &CommandSite) -> anyhow::Result<TrustOverlay> {
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .context("the daemon's CA certificate is not PEM")?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("interceptor-trust-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| dir.display().to_string())?;
        let mut overlay = TrustOverlay {
            dir,
            mounts: Vec::new(),
            env: Vec::new(),
        };
        std::fs::set_permissions(&overlay.dir, std::fs::Permissions::from_mode(0o755))?;
        overlay.build(ca_pem, &ca_der, site)?;
        Ok(overlay)
    }

    fn build(&mut self, ca_pem: &str, ca_der: &[u8], site: &CommandSite) -> anyhow::Result<()> {
        let pem = ca_pem.trim_end().as_bytes();
        // Canonical path of each file to replace → its new contents.
        let mut rewrites: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        let bundle = SYSTEM_BUNDLES
            .iter()
            .find_map(|p| std::fs::canonicalize(p).ok().filter(|p| p.is_file()));
        let pem_files = bundle.iter().cloned().chain(certifi::bundles(site));
        for path in pem_files {
            if let Some(contents) = read_logged(&path) {
                rewrites
                    .entry(path)
                    .or_insert_with(|| appended(contents, pem));
            }
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        for store in java_truststores(site) {
            let extended = read_logged(&store)
                .and_then(|s| jks::with_trusted_cert(&s, "interceptor-ca", ca_der, now_ms));
            if let Some(extended) = extended {
                rewrites.insert(store, extended);
            }
        }

        match std::fs::canonicalize(CERT_DIR).ok().filter(|d| d.is_dir()) {
            Some(cert_dir) => {
                let copy = self.dir.join("certs");
                copy_tree(&cert_dir, &copy, &mut rewrites, MAX_DEPTH)?;
                write_new(&copy.join(CA_FILE), pem)?;
                let hash = subject_hash::subject_hash(ca_der)?;
                let link = (0..)
                    .map(|n| copy.join(format!("{hash}.{n}")))
                    .find(|l| l.symlink_metadata().is_err())
                    .context("no free hash link name")?;
                std::os::unix::fs::symlink(CA_FILE, link)?;
                self.bind(&copy, &cert_dir)?;
            }
            None if bundle.is_none() => tracing::warn!(
                "no system CA bundle or certificate directory found; only certifi, Java and \
                 Node.js will trust interceptor's CA"
            ),
            None => {}
        }
        for (n, (target, contents)) in std::mem::take(&mut rewrites).into_iter().enumerate() {
            let copy = self.dir.join(format!("file-{n}"));
            write_new(&copy, &contents)?;
            self.bind(&copy, &target)?;
        }
        self.node_extra_ca(pem, site)
    }

    /// Node reads one extra file: ours, or a copy of the user's with the CA appended.
    fn node_extra_ca(&mut self, pem: &[u8], site: &CommandSite) -> anyhow::Result<()> {
        let contents = match (site.var)(NODE_VAR).filter(|v| !v.is_empty()) {
            None => pem.to_vec(),
            Some(existing) => match read_logged(Path::new(&existing)) {
                Some(theirs) => appended(theirs, pem),
                None => return Ok(()),
            },
        };
        let path = self.dir.join("node-extra-ca.pem");
        write_new(&path, &contents)?;
        self.env.push((NODE_VAR.into(), path.into()));
        Ok(())
    }

    fn bind(&mut self, source: &Path, target: &Path) -> anyhow::Result<()> {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte");
        self.mounts.push(BindMount {
            source: c(source)?,
            target: c(target)?,
            failure: CString::new(format!(
                "interceptor exec: cannot bind-mount the CA-extended copy over {}\n",
                target.display()
            ))?,
        });
        Ok(())
    }
}

impl Drop for TrustOverlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// In the child, between fork and exec (no allocation): a private mount namespace that
/// does not propagate back to the host's, with `mounts` made in it.
pub fn enter_private_namespace(mounts: &[BindMount]) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&CStr>,
        c"/",
        None::<&CStr>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&CStr>,
    )?;
    for m in mounts {
        let done = mount(
            Some(m.source.as_c_str()),
            m.target.as_c_str(),
            None::<&CStr>,
            MsFlags::MS_BIND,
            None::<&CStr>,
        );
        if let Err(e) = done {
            let msg = m.failure.as_bytes();
            // SAFETY: write(2) of a buffer we own; async-signal-safe.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            return Err(e.into());
        }
    }
    Ok(())
}

/// JKS truststores a JRE on this host reads by default (canonical paths).
fn java_truststores(site: &CommandSite) -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from(CERT_DIR).join("java/cacerts")];
    let homes = (site.var)("JAVA_HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::fs::read_dir("/usr/lib/jvm")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
    for home in homes {
        candidates.push(home.join("lib/security/cacerts"));
        candidates.push(home.join("jre/lib/security/cacerts"));
    }
    let mut out: Vec<PathBuf> = candidates
        .iter()
        .filter_map(|c| std::fs::canonicalize(c).ok())
        .filter(|c| c.is_file())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn read_logged(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path)
        .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot read a trust file; left as it is"))
        .ok()
}

fn appended(mut contents: Vec<u8>, pem: &[u8]) -> Vec<u8> {
    if !contents.is_empty() && !contents.ends_with(b"\n") {
        contents.push(b'\n');
    }
    contents.extend_from_slice(pem);
    contents.push(b'\n');
    contents
}

fn write_new(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| path.display().to_string())?;
    io::Write::write_all(&mut f, contents).with_context(|| path.display().to_string())
}

/// Copies `from` into the new directory `to`: symlinks as they are (relative ones resolve
/// the same once `to` is mounted at `from`), regular files with their contents or their
/// entry in `rewrites` (taken out of it), subdirectories up to `depth` levels.
fn copy_tree(
    from: &Path,
    to: &Path,
    rewrites: &mut BTreeMap<PathBuf, Vec<u8>>,
    depth: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir(to).with_context(|| to.display().to_string())?;
    let mode = std::fs::metadata(from)?.permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    for entry in std::fs::read_dir(from).with_context(|| from.display().to_string())? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_file() {
            match rewrites.remove(&src) {
                Some(contents) => write_new(&dst, &contents)?,
                None => {
                    std::fs::copy(&src, &dst).with_context(|| src.display().to_string())?;
                }
            }
        } else if kind.is_dir() && depth > 0 {
            copy_tree(&src, &dst, rewrites, depth - 1)?;
        }
    }
    Ok(())
}
