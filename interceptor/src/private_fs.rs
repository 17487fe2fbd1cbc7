//! Files only the daemon may read: the data directory holds every recorded body, the CA key
//! and the checkpoint key. Directories are 0700 and files 0600 whatever the umask the daemon
//! was started with (the daemon also sets its umask to 077 for what other modules create).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

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
