//! A repository's tree read for selection: the index of its files, what its sources say (parsed
//! in batches by a limited child, or taken from kiln's private cache), and the file graph.

use std::collections::HashMap;
use std::path::Path;

use git2::Repository;

use super::graph::Graph;
use super::history::CoChange;
use super::index::{self, Index, Note};
use super::{ContextError, parse};

/// A repository's tree read for selection: its index, what each parsed source says, and the
/// file graph made of that.
pub struct Analysis {
    pub index: Index,
    pub graph: Graph,
    /// For each file the history changed: how many commits back from the base its newest change
    /// is, and how many of the newest [`RECENT_COMMITS`](super::history::RECENT_COMMITS) changed it.
    pub recent: Vec<Option<(u32, u32)>>,
}

/// Files parsed per child process, and the most text one batch carries.
const BATCH_FILES: usize = 500;
const BATCH_BYTES: usize = 8 << 20;

impl Analysis {
    /// Reads the tree at `base` (default: `HEAD`) of the git repository at `repo`. With
    /// `parser` (the kiln binary, run as `kiln __parse` under limits), sources are parsed into
    /// the file graph; a batch whose child fails is ranked by words only, noted. Without, the
    /// graph is empty.
    pub fn of_repository(
        repo: &Path,
        base: Option<&str>,
        parser: Option<&Parser<'_>>,
    ) -> Result<Analysis, ContextError> {
        let repo = Repository::open(repo).map_err(|e| ContextError::Repository {
            path: repo.display().to_string(),
            message: e.message().to_string(),
        })?;
        let rev = base.unwrap_or("HEAD");
        let tree = repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_tree())
            .map_err(|_| ContextError::UnknownBase(rev.to_string()))?;
        let mut index = Index::of_tree(&repo, tree.id())?;
        let mut parsed: Vec<Option<parse::Parsed>> = vec![None; index.files.len()];
        let cache = parser.and_then(|p| p.cache);
        let kept = cache.map(|dir| CacheFile::new(dir, "parsed", tree.id()));
        let found: Option<HashMap<String, parse::Parsed>> = kept.as_ref().and_then(CacheFile::load);
        if let Some(found) = found {
            for (i, file) in index.files.iter().enumerate() {
                parsed[i] = found.get(&file.path).cloned();
            }
        } else if let Some(Parser { exe, .. }) = parser {
            let mut whole = true;
            let sources: Vec<usize> = (0..index.files.len())
                .filter(|&i| {
                    let file = &index.files[i];
                    parse::Lang::of(&file.path).is_some()
                        && file.bytes as usize <= index::MAX_FILE_BYTES
                })
                .collect();
            let mut batch: Vec<(usize, parse::Source)> = Vec::new();
            let mut bytes = 0;
            for (n, &i) in sources.iter().enumerate() {
                let file = &index.files[i];
                let blob = repo.find_blob(file.id)?;
                let text = String::from_utf8_lossy(blob.content()).into_owned();
                bytes += text.len();
                batch.push((
                    i,
                    parse::Source {
                        path: file.path.clone(),
                        lang: parse::Lang::of(&file.path).expect("filtered to parseable files"),
                        text,
                    },
                ));
                if batch.len() == BATCH_FILES || bytes >= BATCH_BYTES || n + 1 == sources.len() {
                    let (positions, sources): (Vec<usize>, Vec<parse::Source>) =
                        std::mem::take(&mut batch).into_iter().unzip();
                    bytes = 0;
                    match parse::in_child(exe, &sources) {
                        Some(results) => {
                            for (i, result) in positions.into_iter().zip(results) {
                                parsed[i] = Some(result);
                            }
                        }
                        None => {
                            whole = false;
                            index.notes.push(Note {
                                path: format!("({} files from {})", sources.len(), sources[0].path),
                                reason: "the parser failed on them (a crash, or a limit): ranked by words only",
                            })
                        }
                    }
                }
            }
            // Only a whole parse is kept: a failure is tried again next time.
            if let (true, Some(kept)) = (whole, &kept) {
                let by_path: HashMap<&str, &parse::Parsed> = index
                    .files
                    .iter()
                    .zip(&parsed)
                    .filter_map(|(f, p)| Some((f.path.as_str(), p.as_ref()?)))
                    .collect();
                kept.store(&by_path);
            }
        }
        let mut graph = Graph::build(&index, &parsed);
        let mut recent = vec![None; index.files.len()];
        // A tree given by itself has no history; a commit's says what changes together.
        if let Ok(commit) = repo.revparse_single(rev).and_then(|o| o.peel_to_commit()) {
            let kept = cache.map(|dir| CacheFile::new(dir, "history", commit.id()));
            let together = match kept.as_ref().and_then(CacheFile::load) {
                Some(found) => Some(found),
                // History is a hint: one that cannot be read (a shallow clone, a missing
                // object) leaves the imports and the words, noted.
                None => match CoChange::of_history(&repo, commit.id(), &index) {
                    Ok(found) => {
                        if let Some(kept) = &kept {
                            kept.store(&found);
                        }
                        Some(found)
                    }
                    Err(_) => {
                        index.notes.push(Note {
                            path: "(history)".into(),
                            reason: "the history cannot be read: files changed together are not used",
                        });
                        None
                    }
                },
            };
            if let Some(together) = together {
                let positions = index.positions();
                graph.add_changed_together(&positions, &together);
                for (path, back, count) in &together.recent {
                    if let Some(&i) = positions.get(path.as_str()) {
                        recent[i] = Some((*back, *count));
                    }
                }
            }
        }
        Ok(Analysis {
            index,
            graph,
            recent,
        })
    }

    /// An analysis of `index` with no graph: words only.
    pub fn lexical(index: Index) -> Analysis {
        let graph = Graph::build(&index, &vec![None; index.files.len()]);
        let recent = vec![None; index.files.len()];
        Analysis {
            index,
            graph,
            recent,
        }
    }
}

/// How sources are parsed: by the kiln binary run as `kiln __parse` (under limits), and, with
/// `cache`, what a tree's sources say is kept there so another query of that tree skips parsing.
pub struct Parser<'a> {
    pub exe: &'a Path,
    /// A folder of kiln's own (made 0700; not used when another user could write it).
    pub cache: Option<&'a Path>,
}

/// One file of kiln's private context cache: what the sources of a tree say, or what the
/// history up to a commit changed together; JSON, named by the tree or commit and kiln's
/// version (a newer kiln may read them differently).
struct CacheFile {
    dir: std::path::PathBuf,
    file: std::path::PathBuf,
}

/// The largest cache file read.
const MAX_CACHE_FILE: u64 = 256 << 20;

impl CacheFile {
    fn new(dir: &Path, what: &str, id: git2::Oid) -> CacheFile {
        let name = format!("{id}-{what}-{}.json", env!("CARGO_PKG_VERSION"));
        CacheFile {
            dir: dir.to_path_buf(),
            file: dir.join(name),
        }
    }

    /// What was kept, when the folder and file are kiln's own and read whole.
    fn load<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        use crate::model::fs::{not_kilns_own, read_bytes_capped};
        if let Some(why) = not_kilns_own(&self.dir, true) {
            if self.dir.exists() {
                tracing::warn!("context cache {} not used: it {why}", self.dir.display());
            }
            return None;
        }
        if not_kilns_own(&self.file, false).is_some() {
            return None;
        }
        let bytes = read_bytes_capped(&self.file, MAX_CACHE_FILE).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps `value` (never in a folder that is not kiln's own); a failure to keep it only
    /// costs the next query the work.
    fn store<T: serde::Serialize>(&self, value: &T) {
        if self.dir.exists() && crate::model::fs::not_kilns_own(&self.dir, true).is_some() {
            return;
        }
        let written = crate::model::fs::create_private_dir(&self.dir).and_then(|()| {
            let json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
            crate::model::fs::write_atomic(&self.file, &json)
        });
        if let Err(e) = written {
            tracing::warn!("cannot keep the context cache {}: {e}", self.file.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{Request, select};
    use crate::model::ByteSize;

    #[test]
    fn a_failing_parser_leaves_words_to_rank_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        std::fs::write(dir.path().join("refund.py"), "def refund(): pass\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("refund.py")).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@localhost").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "x", &tree, &[])
            .unwrap();
        let analysis = Analysis::of_repository(
            dir.path(),
            None,
            Some(&Parser {
                exe: Path::new("/bin/false"),
                cache: None,
            }),
        )
        .unwrap();
        assert_eq!(analysis.index.notes.len(), 1);
        assert!(analysis.index.notes[0].reason.contains("the parser failed"));
        let request = Request {
            prompt: "refund",
            seeds: &[],
            budget: ByteSize(1000),
        };
        let selection = select(&analysis, &request).unwrap();
        assert_eq!(selection.files[0].path, "refund.py");
    }
}
