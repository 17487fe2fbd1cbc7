//! Compiled Hyperscan databases kept between daemon starts: compiling the shipped rules takes
//! seconds, loading them milliseconds.
//!
//! An entry is named by its key, a SHA-256 of everything the databases depend on: this
//! format's version, the Hyperscan library's version, and the rules' patterns and forms
//! exactly as compiled. It holds the key again, the rules' widths, both serialized databases
//! and a SHA-256 of all that. Hyperscan does not guard against crafted databases, so an entry
//! is read only from a directory (and file) nobody but root can change, and only used when
//! its checksum and key match and Hyperscan takes it (which also checks that it was compiled
//! for this library and a CPU like this one). Anything else is compiled again and the entry
//! rewritten (a new file, renamed into place): a bad entry costs a start's compile time,
//! never masking.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use hyperscan::Serialized;
use sha2::{Digest, Sha256};

use super::databases::{Databases, Forms};
use super::engine::{EngineError, MAX_RULE_WIDTH};
use super::rules::Rule;
use crate::private_fs;

/// Changed whenever the entries' layout or the meaning of what they hold changes.
const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"INTCHSDB";
const EXTENSION: &str = "hsdb";
/// Entries kept: writing one removes the oldest beyond this many (a few rule sets in use,
/// about 2 MB each for the shipped rules).
const MAX_ENTRIES: usize = 16;

/// A directory of compiled rule databases.
pub struct DatabaseCache {
    dir: PathBuf,
}

/// Why an entry is not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("its checksum does not match (corrupt or truncated)")]
    Checksum,
    #[error("not an entry of this format")]
    Format,
    #[error("it was written for other rules")]
    Key,
    #[error("its layout is inconsistent")]
    Layout,
    #[error("Hyperscan refuses it: {0}")]
    Hyperscan(hyperscan::Error),
}

impl DatabaseCache {
    /// The cache in `dir` (created 0700 if missing), or None, with a warning, when the
    /// directory cannot be made or is not root's alone: then every start compiles.
    pub fn open(dir: &Path) -> Option<DatabaseCache> {
        let usable = match dir.try_exists() {
            Ok(true) => Ok(()),
            Ok(false) => private_fs::private_dir(dir),
            Err(e) => Err(e),
        }
        .and_then(|()| private_fs::check_private_dir(dir));
        match usable {
            Ok(()) => Some(DatabaseCache {
                dir: dir.to_path_buf(),
            }),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "not using the rule cache: the rules are compiled at every start");
                None
            }
        }
    }

    /// The databases of `rules`, whose forms are `forms`: from the cache if it has a usable
    /// entry, else compiled and stored.
    pub(super) fn databases(
        &self,
        rules: &[Rule],
        forms: &Forms,
    ) -> Result<Databases, EngineError> {
        let key = key(rules, forms);
        let path = self.entry(&key);
        match load(&path, &key, rules.len()) {
            Ok(databases) => {
                tracing::info!(entry = %path.display(), "rule databases loaded from the cache");
                return Ok(databases);
            }
            Err(Unusable::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(why) => {
                tracing::warn!(entry = %path.display(), %why, "not using a rule cache entry: compiling the rules");
            }
        }
        let databases = Databases::compile(rules, forms)?;
        match self.store(&path, &key, &databases) {
            Ok(()) => tracing::info!(entry = %path.display(), "rule databases compiled and cached"),
            Err(e) => {
                tracing::warn!(entry = %path.display(), error = %e, "rule databases compiled but not cached")
            }
        }
        Ok(databases)
    }

    fn entry(&self, key: &[u8; 32]) -> PathBuf {
        let name: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(name).with_extension(EXTENSION)
    }

    fn store(&self, path: &Path, key: &[u8; 32], databases: &Databases) -> io::Result<()> {
        let bytes = encode(key, databases).map_err(io::Error::other)?;
        // Daemons starting at once may each write the entry: each its own temporary file.
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        if let Err(e) = private_fs::replace(path, &tmp, &bytes) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.prune();
        Ok(())
    }

    /// Removes all but the newest [`MAX_ENTRIES`] entries.
    fn prune(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == EXTENSION))
            .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        entries.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, old) in entries.into_iter().skip(MAX_ENTRIES) {
            let _ = fs::remove_file(old);
        }
    }
}

/// What the databases of `rules` depend on, hashed: each field length-prefixed, each list
/// counted, so that no two inputs hash the same bytes.
fn key(rules: &[Rule], forms: &Forms) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(&FORMAT.to_le_bytes());
    field(hyperscan::version_str().to_bytes());
    // The widths are the patterns'.
    field(&rules.len().to_le_bytes());
    for rule in rules {
        field(rule.pattern.as_bytes());
    }
    for patterns in [&forms.block, &forms.stream] {
        field(&patterns.len().to_le_bytes());
        for pattern in patterns.iter() {
            // Every field: expression, flags, id, extensions.
            field(format!("{pattern:?}").as_bytes());
        }
    }
    hash.finalize().into()
}

/// An entry: magic, format, key, the widths, the block and stream databases, checksum.
fn encode(key: &[u8; 32], databases: &Databases) -> Result<Vec<u8>, hyperscan::Error> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(databases.widths.len() as u32).to_le_bytes());
    for &width in &databases.widths {
        out.extend_from_slice(&(width as u32).to_le_bytes());
    }
    for serialized in [databases.block.serialize()?, databases.stream.serialize()?] {
        out.extend_from_slice(&(serialized.len() as u64).to_le_bytes());
        out.extend_from_slice(&serialized);
    }
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    Ok(out)
}

fn load(path: &Path, key: &[u8; 32], rules: usize) -> Result<Databases, Unusable> {
    let mut bytes = Vec::new();
    private_fs::open_private(path)?.read_to_end(&mut bytes)?;
    decode(&bytes, key, rules)
}

/// The databases in `entry` if it is whole, of this format, and for `key` (and so for this
/// many rules).
fn decode(entry: &[u8], key: &[u8; 32], rules: usize) -> Result<Databases, Unusable> {
    let split = entry.len().checked_sub(32).ok_or(Unusable::Checksum)?;
    let (body, checksum) = entry.split_at(split);
    if Sha256::digest(body).as_slice() != checksum {
        return Err(Unusable::Checksum);
    }
    let mut r = Reader(body);
    if r.take(MAGIC.len())? != MAGIC || r.u32()? != FORMAT {
        return Err(Unusable::Format);
    }
    if r.take(key.len())? != key || r.u32()? as usize != rules {
        return Err(Unusable::Key);
    }
    let widths = (0..rules)
        .map(|_| r.u32().map(|w| w as usize))
        .collect::<Result<Vec<_>, _>>()?;
    if widths.iter().any(|&w| w > MAX_RULE_WIDTH) {
        return Err(Unusable::Layout);
    }
    let block = r.database()?;
    let stream = r.database()?;
    if !r.0.is_empty() {
        return Err(Unusable::Layout);
    }
    Ok(Databases {
        block: block.deserialize().map_err(Unusable::Hyperscan)?,
        stream: stream.deserialize().map_err(Unusable::Hyperscan)?,
        widths,
    })
}

/// Reads an entry's fields in order.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unusable> {
        if n > self.0.len() {
            return Err(Unusable::Layout);
        }
        let (field, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(field)
    }

    fn u32(&mut self) -> Result<u32, Unusable> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    /// A serialized database, length first.
    fn database(&mut self) -> Result<&'a [u8], Unusable> {
        let len = self.take(8)?;
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        self.take(usize::try_from(len).map_err(|_| Unusable::Layout)?)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::Arc;

    use super::*;
    use crate::detection::check::mask_all;
    use crate::detection::finding::SecretHasher;
    use crate::detection::tests::{engine, rules_dir};
    use crate::detection::{Engine, load_dir, mask_buffer};

    fn cache_in(dir: &Path) -> DatabaseCache {
        DatabaseCache::open(dir).expect("a private directory is used")
    }

    /// The one entry in `dir`.
    fn entry(dir: &Path) -> PathBuf {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.pop().unwrap()
    }

    /// A few of the shipped rules: enough to compile quickly.
    fn few_rules() -> Vec<Rule> {
        load_dir(&rules_dir())
            .unwrap()
            .into_iter()
            .take(6)
            .collect()
    }

    /// What `engine` makes of `text`: block findings, candidates, and masking.
    fn outcome(engine: &Arc<Engine>, text: &str) -> String {
        let data = text.as_bytes();
        let (masked, findings) =
            mask_buffer(engine, &SecretHasher::with_salt([0; 16]), data).unwrap();
        let findings: Vec<_> = findings
            .iter()
            .map(|f| (&f.rule, f.offset, f.length))
            .collect();
        format!(
            "{:?} {:?} {:?} {findings:?}",
            engine.find(data).unwrap(),
            engine.candidate_rules(data).unwrap(),
            String::from_utf8_lossy(&masked),
        )
    }

    #[test]
    fn an_engine_from_the_cache_finds_exactly_what_a_fresh_compile_finds() {
        let rules = load_dir(&rules_dir()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cold = Engine::compile_cached(&rules, &cache_in(dir.path())).unwrap();
        let path = entry(dir.path());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let inode = fs::metadata(&path).unwrap().ino();
        let warm = Arc::new(Engine::compile_cached(&rules, &cache_in(dir.path())).unwrap());
        // Loaded, not compiled and written again.
        assert_eq!(fs::metadata(entry(dir.path())).unwrap().ino(), inode);
        let fresh = engine();
        assert_eq!(warm.holdback(), fresh.holdback());
        let widths = |e: &Engine| e.rules().iter().map(|r| r.width).collect::<Vec<_>>();
        assert_eq!(widths(&warm), widths(&fresh));
        assert_eq!(widths(&cold), widths(&fresh));
        let mut texts = 0;
        for rule in &rules {
            let examples = rule.examples.iter().map(|e| e.text());
            for text in examples.chain(rule.negative_examples.iter().map(String::as_str)) {
                assert_eq!(
                    outcome(&warm, text),
                    outcome(&fresh, text),
                    "{}: {text:?}",
                    rule.id
                );
                // Escaped, as in a JSON body: the stream forms' work.
                let escaped = serde_json::to_string(text).unwrap().replace('/', "\\/");
                assert_eq!(
                    mask_all(&warm, escaped.as_bytes()).unwrap(),
                    mask_all(&fresh, escaped.as_bytes()).unwrap(),
                    "{}: {escaped:?}",
                    rule.id
                );
                texts += 1;
            }
        }
        assert!(texts >= 2 * rules.len(), "{texts} texts");
    }

    /// `entry` with byte `at` changed and the checksum made to match again.
    fn resealed(entry: &[u8], at: usize) -> Vec<u8> {
        let mut body = entry[..entry.len() - 32].to_vec();
        body[at] ^= 0x55;
        let checksum = Sha256::digest(&body);
        body.extend_from_slice(&checksum);
        body
    }

    #[test]
    fn a_damaged_or_foreign_entry_is_compiled_again_and_rewritten() {
        let rules = few_rules();
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        Engine::compile_cached(&rules, &cache).unwrap();
        let path = entry(dir.path());
        let good = fs::read(&path).unwrap();
        let key = key(&rules, &Forms::of(&rules).unwrap());
        let whole = decode(&good, &key, rules.len()).unwrap();
        let mut other_key = key;
        other_key[0] ^= 1;
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 1;
        // The block database starts after magic, format, key, count, widths and its length.
        let block_at = 8 + 4 + 32 + 4 + 4 * rules.len() + 8;
        let damaged = [
            ("truncated", good[..good.len() / 2].to_vec(), "checksum"),
            ("empty", Vec::new(), "checksum"),
            ("a byte flipped", flipped, "checksum"),
            ("of another format", resealed(&good, 8), "format"),
            (
                "for other rules",
                encode(&other_key, &whole).unwrap(),
                "other rules",
            ),
            (
                "a database Hyperscan refuses",
                resealed(&good, block_at),
                "Hyperscan",
            ),
        ];
        let fresh = Arc::new(Engine::compile(&rules).unwrap());
        for (what, bytes, why) in damaged {
            fs::write(&path, &bytes).unwrap();
            let refused = load(&path, &key, rules.len()).map(|_| ()).unwrap_err();
            assert!(refused.to_string().contains(why), "{what}: {refused}");
            let engine = Arc::new(Engine::compile_cached(&rules, &cache).unwrap());
            assert!(
                load(&path, &key, rules.len()).is_ok(),
                "{what}: not rewritten"
            );
            for example in rules.iter().flat_map(|r| &r.examples) {
                assert_eq!(
                    outcome(&engine, example.text()),
                    outcome(&fresh, example.text())
                );
            }
        }
        // Whole, but others may write it, or a link: not read.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let refused = load(&path, &key, rules.len()).map(|_| ()).unwrap_err();
        assert!(
            refused.to_string().contains("writable by others"),
            "{refused}"
        );
        Engine::compile_cached(&rules, &cache).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let elsewhere = dir.path().join("elsewhere");
        fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(load(&path, &key, rules.len()).is_err());
        Engine::compile_cached(&rules, &cache).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
    }

    #[test]
    fn a_cache_directory_others_can_change_is_not_used() {
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("parent");
        let dir = parent.join("cache");
        assert!(DatabaseCache::open(&dir).is_some());
        assert_eq!(mode(&dir), 0o700);
        for open in [0o777, 0o770, 0o720, 0o702, 0o1777] {
            set(&dir, open);
            assert!(DatabaseCache::open(&dir).is_none(), "mode {open:o}");
            // Not narrowed: whatever others put there stays untrusted.
            assert_eq!(mode(&dir), open);
        }
        // Others may read compiled rules (they are the rule files'), not change them.
        set(&dir, 0o755);
        assert!(DatabaseCache::open(&dir).is_some());
        // A directory above that others can change lets them swap the cache.
        set(&parent, 0o777);
        assert!(DatabaseCache::open(&dir).is_none());
        set(&parent, 0o1777);
        assert!(DatabaseCache::open(&dir).is_some());
        set(&parent, 0o700);
        if nix::unistd::geteuid().is_root() {
            let nobody = Some(nix::unistd::Uid::from_raw(65534));
            nix::unistd::chown(&dir, nobody, None).unwrap();
            assert!(DatabaseCache::open(&dir).is_none());
        }
        // Not a cache at all.
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(DatabaseCache::open(&file).is_none());
    }
}
