//! Where the command's Python would import `certifi` from, whose `cacert.pem` is what
//! `requests`, `httpx` and most of PyPI verify against instead of the system store.
//!
//! The rule (documented in docs/architecture.md): every `certifi/cacert.pem` in the
//! `lib*/python*/{site,dist}-packages` directories of these prefixes:
//! - the system's `/usr` and `/usr/local`, and the user's `~/.local`;
//! - `$VIRTUAL_ENV`, `$CONDA_PREFIX`, and every pyenv version (`$PYENV_ROOT` or `~/.pyenv`);
//! - for every `python*` on the command's `PATH` and for the command itself (when it names
//!   a file): the prefix it is in (a virtualenv's `bin/python` is a symlink, so both the
//!   link's own prefix and its target's);
//! - the command's working directory and its direct subdirectories that are virtualenvs
//!   (hold a `pyvenv.cfg`: `.venv`, `venv`, ...).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// What the command will see of its environment.
pub struct CommandSite<'a> {
    pub program: &'a OsStr,
    pub cwd: &'a Path,
    pub var: &'a dyn Fn(&str) -> Option<std::ffi::OsString>,
}

/// The canonical paths of the certifi bundles the command may use.
pub fn bundles(site: &CommandSite) -> BTreeSet<PathBuf> {
    prefixes(site)
        .iter()
        .flat_map(|p| bundles_under(p))
        .collect()
}

fn prefixes(site: &CommandSite) -> BTreeSet<PathBuf> {
    let var = |name: &str| {
        (site.var)(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = var("HOME");
    let mut out: BTreeSet<PathBuf> = ["/usr", "/usr/local"].iter().map(PathBuf::from).collect();
    out.extend(home.as_ref().map(|h| h.join(".local")));
    out.extend(var("VIRTUAL_ENV"));
    out.extend(var("CONDA_PREFIX"));
    if let Some(pyenv) = var("PYENV_ROOT").or_else(|| home.map(|h| h.join(".pyenv"))) {
        out.extend(subdirs(&pyenv.join("versions")));
    }
    let mut interpreters: Vec<PathBuf> = Vec::new();
    if let Some(path) = (site.var)("PATH") {
        for dir in std::env::split_paths(&path) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            interpreters.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().as_encoded_bytes().starts_with(b"python"))
                    .map(|e| e.path()),
            );
        }
    }
    let program = Path::new(site.program);
    if program.components().count() > 1 {
        interpreters.push(site.cwd.join(program));
    }
    for exe in interpreters {
        out.extend(prefix_of(&exe));
        out.extend(std::fs::canonicalize(&exe).ok().and_then(|e| prefix_of(&e)));
    }
    let cwd = site.cwd.to_path_buf();
    out.extend(
        std::iter::once(cwd.clone())
            .chain(subdirs(&cwd))
            .filter(|d| d.join("pyvenv.cfg").is_file()),
    );
    out
}

/// `P` for an executable at `P/bin/NAME`.
fn prefix_of(exe: &Path) -> Option<PathBuf> {
    let bin = exe.parent()?;
    (bin.file_name()? == "bin").then(|| bin.parent().map(Path::to_path_buf))?
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn bundles_under(prefix: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().as_encoded_bytes().starts_with(b"python") {
                continue;
            }
            for packages in ["site-packages", "dist-packages"] {
                let pem = entry.path().join(packages).join("certifi/cacert.pem");
                out.extend(std::fs::canonicalize(&pem).ok().filter(|p| p.is_file()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "pem").unwrap();
    }

    #[test]
    fn finds_virtualenvs_in_the_working_directory_and_on_path_and_the_command_itself() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let venv_pem = r.join("project/.venv/lib/python3.12/site-packages/certifi/cacert.pem");
        touch(&venv_pem);
        touch(&r.join("project/.venv/pyvenv.cfg"));
        let on_path = r.join("tools/lib/python3.11/dist-packages/certifi/cacert.pem");
        touch(&on_path);
        touch(&r.join("tools/bin/python3"));
        let named = r.join("elsewhere/lib64/python3.9/site-packages/certifi/cacert.pem");
        touch(&named);
        touch(&r.join("elsewhere/bin/agent"));
        let unrelated = r.join("unrelated/lib/python3.12/site-packages/certifi/cacert.pem");
        touch(&unrelated);

        let path = OsString::from(r.join("tools/bin"));
        let var = move |name: &str| (name == "PATH").then(|| path.clone());
        let cwd = r.join("project");
        let program = r.join("elsewhere/bin/agent");
        let found = bundles(&CommandSite {
            program: program.as_os_str(),
            cwd: &cwd,
            var: &var,
        });
        for want in [&venv_pem, &on_path, &named] {
            assert!(
                found.contains(&want.canonicalize().unwrap()),
                "{want:?} not in {found:?}"
            );
        }
        assert!(!found.contains(&unrelated.canonicalize().unwrap()));
    }
}
