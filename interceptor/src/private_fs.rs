//! Files only the daemon may read: the data directory holds every recorded body, the CA key
//! and the checkpoint key. Directories are 0700 and files 0600 whatever the umask the daemon
//! was started with (the daemon also sets its umask to 077 for what other modules create).
//! And the checks for files only the daemon may have written, before it trusts what they hold.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::unistd::geteuid;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) 0700, or narrows an existing one to 0700. A directory
/// other users may create files in (sticky, like /tmp) is refused: it is not ours to narrow.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let meta = fs::metadata(dir)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if mode & 0o1000 != 0 {
        return Err(io::Error::other(format!(
            "{} is a shared directory (mode {mode:o}); give the daemon a directory of its own",
            dir.display()
        )));
    }
    tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "narrowing the directory to 0700");
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Options that create a file 0600 (an existing file keeps its mode).
pub fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Writes `path` whole, atomically: `tmp` (created 0600 beside it) fsynced, then renamed.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file: File = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    io::Write::write_all(&mut file, bytes)?;
    file.sync_data()?;
    fs::rename(tmp, path)
}

/// Fails unless `dir` is a directory only root and the daemon's user can change, and so is every
/// directory above it (one that others may add to but only owners remove from, sticky like
/// /tmp, is fine above it): nothing in it was put there by anyone else.
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    let dir = fs::canonicalize(dir)?;
    let meta = fs::metadata(&dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    only_ours(&dir, &meta, false)?;
    for above in dir.ancestors().skip(1) {
        only_ours(above, &fs::metadata(above)?, true)?;
    }
    Ok(())
}

/// `path` opened for reading if it is a file (not a link) only root and the daemon's user can
/// change; checked on the open file, so what is read is what was checked.
pub fn open_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a file",
            path.display()
        )));
    }
    only_ours(path, &meta, false)?;
    Ok(file)
}

/// Whether only root and the daemon's user can change `path`; `sticky_ok`: or it is a sticky
/// directory, whose entries only their owners can replace.
fn only_ours(path: &Path, meta: &fs::Metadata, sticky_ok: bool) -> io::Result<()> {
    let owner = meta.uid();
    if owner != 0 && owner != geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} is owned by uid {owner}",
            path.display()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && !(sticky_ok && mode & 0o1000 != 0) {
        return Err(io::Error::other(format!(
            "{} is writable by others (mode {mode:o})",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_open_directory_is_narrowed_and_a_shared_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        let nested = dir.join("a/b");
        private_dir(&nested).unwrap();
        assert_eq!(fs::metadata(&nested).unwrap().mode() & 0o7777, 0o700);
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(private_dir(&shared).is_err());
    }
}
