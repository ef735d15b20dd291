//! Content hashes of the input files a run's fingerprint covers (its data
//! set's files, the files of a run trained elsewhere), cached by length and
//! time of modification in `<output>/.content-hashes.json`, so that a stage
//! reads a large data set once, not at every start. A file that has gone
//! (an analysis machine without the data) counts as its content when last
//! seen; one never seen enters as "missing", so no stage takes the run as
//! current. The lists of a data set's files are cached too, for the same
//! machine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::artifacts::{content_hash, write_atomic};

/// The cache's file name in the output folder.
pub const CACHE_FILE: &str = ".content-hashes.json";

/// What the cache knows of one file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    len: u64,
    modified_ns: u128,
    sha256: String,
}

/// One output folder's cache: file hashes and file lists, by path.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Cache {
    files: BTreeMap<String, Entry>,
    listings: BTreeMap<String, Vec<PathBuf>>,
}

/// The caches of this process, by cache file, loaded on first use.
static CACHES: Mutex<Option<HashMap<PathBuf, Cache>>> = Mutex::new(None);

/// Runs `f` on the cache of the output folder `output`, and writes the
/// cache back when `f` says it changed it. Only a folder that exists gets
/// the file (a dry run before the first stage creates nothing); a lost
/// update only costs a hash again.
fn with_cache<R>(output: &Path, f: impl FnOnce(&mut Cache) -> (R, bool)) -> R {
    let cache_path = output.join(CACHE_FILE);
    let mut caches = CACHES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = caches.get_or_insert_with(HashMap::new).entry(cache_path.clone()).or_insert_with(|| {
        std::fs::read(&cache_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    });
    let (result, changed) = f(cache);
    if changed && output.is_dir() {
        if let Ok(json) = serde_json::to_vec(cache) {
            let _ = write_atomic(&cache_path, &json);
        }
    }
    result
}

/// The files `list` finds, remembered under `key`: where it fails (the
/// folder is not on this machine), the files it found last.
pub fn remembered_listing<E>(
    output: &Path,
    key: &str,
    list: impl FnOnce() -> Result<Vec<PathBuf>, E>,
) -> Result<Vec<PathBuf>, E> {
    with_cache(output, |cache| match list() {
        Ok(files) => {
            let changed = cache.listings.get(key) != Some(&files);
            cache.listings.insert(key.to_string(), files.clone());
            (Ok(files), changed)
        }
        Err(e) => (cache.listings.get(key).cloned().ok_or(e), false),
    })
}

/// The SHA-256 of each file (absolute or relative to the working folder),
/// in order, through the cache of the output folder `output`.
pub fn file_hashes(output: &Path, files: &[PathBuf]) -> Vec<String> {
    with_cache(output, |cache| file_hashes_in(&mut cache.files, files))
}

fn file_hashes_in(cache: &mut BTreeMap<String, Entry>, files: &[PathBuf]) -> (Vec<String>, bool) {
    let mut changed = false;
    let hashes = files
        .iter()
        .map(|file| {
            let key = file.display().to_string();
            let Ok(meta) = std::fs::metadata(file) else {
                return cache.get(&key).map_or_else(|| format!("missing: {key}"), |e| e.sha256.clone());
            };
            let modified_ns = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            if let Some(entry) = cache.get(&key).filter(|e| e.len == meta.len() && e.modified_ns == modified_ns) {
                return entry.sha256.clone();
            }
            match std::fs::read(file) {
                Ok(bytes) => {
                    let sha256 = content_hash(&bytes);
                    cache.insert(key, Entry { len: meta.len(), modified_ns, sha256: sha256.clone() });
                    changed = true;
                    sha256
                }
                Err(e) => format!("unreadable: {key}: {e}"),
            }
        })
        .collect();
    (hashes, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_follow_the_content_and_outlive_the_file() {
        let dir = crate::scratch::ScratchDir::new("common-content");
        let file = dir.join("data.bin");
        std::fs::write(&file, b"one").unwrap();
        let first = file_hashes(&dir, &[file.clone()]);
        assert_eq!(first, [content_hash(b"one")]);
        assert!(dir.join(CACHE_FILE).is_file(), "the cache is written");
        std::fs::write(&file, b"three").unwrap();
        assert_eq!(file_hashes(&dir, &[file.clone()]), [content_hash(b"three")], "a new length is hashed again");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(file_hashes(&dir, &[file.clone()]), [content_hash(b"three")], "a file gone counts as last seen");
        assert!(file_hashes(&dir, &[dir.join("never")])[0].starts_with("missing: "));

        let listed = remembered_listing(&dir, "k", || Ok::<_, String>(vec![file.clone()])).unwrap();
        assert_eq!(remembered_listing(&dir, "k", || Err("gone".to_string())).unwrap(), listed, "the last listing");
        assert_eq!(remembered_listing(&dir, "other", || Err::<Vec<PathBuf>, _>("gone".to_string())), Err("gone".into()));
    }
}
