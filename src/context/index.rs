//! A repository's tree at one commit, read as hostile input for ranking: every file's path and,
//! for text files small enough, the terms of its content. Links are never followed (a link is
//! not indexed), submodules are skipped, and counts and sizes are capped, each cap noted.

use std::collections::HashMap;

use git2::{ErrorCode, ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};
use serde::Serialize;

use super::paths::folder_of;
use super::tsconfig::TsPaths;

/// The most files indexed; the rest of a larger tree is left out, noted.
pub const MAX_FILES: usize = 100_000;
/// Larger files are indexed by path only, noted.
pub const MAX_FILE_BYTES: usize = 512 << 10;
/// Terms kept of one file's content, the most frequent first.
const MAX_TERMS_PER_FILE: usize = 4096;

/// One file of the tree.
#[derive(Clone, Debug)]
pub struct IndexedFile {
    pub path: String,
    /// Its blob, to read again (to parse it) without holding every file's text at once.
    pub id: Oid,
    pub bytes: u64,
    /// Each term of the path and the content, with how often it occurs (path terms count
    /// [`PATH_WEIGHT`] times: a file named for a thing is about it).
    pub terms: HashMap<String, u32>,
    /// The number of term occurrences, for length normalization.
    pub length: u32,
}

impl IndexedFile {
    /// The file at `path` with the terms of its path and, when given, of its `content`.
    pub fn new(path: String, id: Oid, bytes: u64, content: Option<&[u8]>) -> IndexedFile {
        let mut terms = HashMap::new();
        for term in terms_of(&path) {
            *terms.entry(term).or_insert(0) += PATH_WEIGHT;
        }
        if let Some(content) = content {
            add_content(&mut terms, content);
        }
        let length = terms.values().sum();
        IndexedFile {
            path,
            id,
            bytes,
            terms,
            length,
        }
    }
}

/// How much a term in a file's path counts against one in its content.
pub const PATH_WEIGHT: u32 = 5;

/// Something the index left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    pub path: String,
    pub reason: &'static str,
}

/// The indexed tree.
#[derive(Debug, Default)]
pub struct Index {
    pub files: Vec<IndexedFile>,
    pub notes: Vec<Note>,
    /// Each `go.mod`'s folder and the module path it declares.
    pub go_modules: Vec<(String, String)>,
    /// The import aliases of each `tsconfig.json` or `jsconfig.json`.
    pub ts_paths: Vec<TsPaths>,
}

impl Index {
    /// Reads `tree` of `repo`: paths of every regular file, and the terms of each text file up
    /// to [`MAX_FILE_BYTES`]. Binary files (a NUL in their first 8 KiB) are indexed by path.
    pub fn of_tree(repo: &Repository, tree: Oid) -> Result<Index, git2::Error> {
        let tree = repo.find_tree(tree)?;
        let odb = repo.odb()?;
        let mut index = Index::default();
        let mut failure = None;
        let mut capped = false;
        let walked = tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() != Some(ObjectType::Blob) {
                return TreeWalkResult::Ok;
            }
            let path = format!("{dir}{}", String::from_utf8_lossy(entry.name_bytes()));
            // A link's target is text a container or an author chose: never followed, never read.
            if entry.filemode() == 0o120000 {
                return TreeWalkResult::Ok;
            }
            if index.files.len() >= MAX_FILES {
                index.notes.push(Note {
                    path: "(rest)".into(),
                    reason: "more than 100000 files: the rest is not indexed",
                });
                capped = true;
                return TreeWalkResult::Abort;
            }
            // A file whose content is not in the repository (a partial clone, a lost object)
            // is left out, noted; anything else git cannot read fails the index.
            let missing = |index: &mut Index, path: String| {
                index.notes.push(Note {
                    path,
                    reason: "its content is not in the repository (a partial clone?): not indexed",
                });
                TreeWalkResult::Ok
            };
            let size = match odb.read_header(entry.id()) {
                Ok((size, _)) => size,
                Err(e) if e.code() == ErrorCode::NotFound => return missing(&mut index, path),
                Err(e) => {
                    failure = Some(e);
                    return TreeWalkResult::Abort;
                }
            };
            let mut content = None;
            if size > MAX_FILE_BYTES {
                index.notes.push(Note {
                    path: path.clone(),
                    reason: "larger than 512 KiB: indexed by its path only",
                });
            } else {
                match repo.find_blob(entry.id()) {
                    Ok(blob) => content = Some(blob),
                    Err(e) if e.code() == ErrorCode::NotFound => return missing(&mut index, path),
                    Err(e) => {
                        failure = Some(e);
                        return TreeWalkResult::Abort;
                    }
                }
            }
            let content = content.as_ref().map(|blob| blob.content());
            if let Some(content) = content {
                index.read_config(&path, content);
            }
            index
                .files
                .push(IndexedFile::new(path, entry.id(), size as u64, content));
            TreeWalkResult::Ok
        });
        // An aborted walk is an error to git2: the cap's abort is not one.
        match (failure, walked) {
            (Some(e), _) => Err(e),
            (None, Err(_)) if capped => Ok(index),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(index),
        }
    }
}

impl Index {
    /// Each file's position in [`Index::files`], by path.
    pub fn positions(&self) -> HashMap<&str, usize> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_str(), i))
            .collect()
    }

    /// Keeps what a `go.mod` or a `tsconfig.json` at `path` says about resolving imports.
    fn read_config(&mut self, path: &str, content: &[u8]) {
        if let Some(module) = go_module(path, content) {
            self.go_modules.push((folder_of(path).to_string(), module));
        }
        self.ts_paths.extend(TsPaths::of_file(path, content));
    }
}

/// The module path a `go.mod` declares (`module example.com/shop`).
fn go_module(path: &str, content: &[u8]) -> Option<String> {
    if path != "go.mod" && !path.ends_with("/go.mod") {
        return None;
    }
    String::from_utf8_lossy(content).lines().find_map(|line| {
        let module = line.trim().strip_prefix("module")?.trim().trim_matches('"');
        (!module.is_empty()).then(|| module.to_string())
    })
}

/// Adds the terms of a file's content: text only (a NUL early on marks it binary), lossily
/// decoded, the most frequent [`MAX_TERMS_PER_FILE`] kept.
fn add_content(terms: &mut HashMap<String, u32>, content: &[u8]) {
    if content[..content.len().min(8192)].contains(&0) {
        return;
    }
    let text = String::from_utf8_lossy(content);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for term in terms_of(&text) {
        *counts.entry(term).or_insert(0) += 1;
    }
    let mut counted: Vec<(String, u32)> = counts.into_iter().collect();
    if counted.len() > MAX_TERMS_PER_FILE {
        counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counted.truncate(MAX_TERMS_PER_FILE);
    }
    for (term, n) in counted {
        *terms.entry(term).or_insert(0) += n;
    }
}

/// The terms of `text`: identifiers and words, split at case changes, digits, `_` and `-`, and
/// lowercased (`PaymentIntent` gives `payment` and `intent`; `refund_all` gives `refund` and
/// `all`). Terms shorter than 2 characters or longer than 40 are dropped.
pub fn terms_of(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        let mut start = 0;
        let chars: Vec<(usize, char)> = word.char_indices().collect();
        for i in 1..=chars.len() {
            let cut = match (chars.get(i - 1), chars.get(i)) {
                (_, None) => true,
                (Some((_, a)), Some((_, b))) => {
                    (a.is_lowercase() && b.is_uppercase())
                        || (a.is_alphabetic() != b.is_alphabetic())
                        || (a.is_uppercase()
                            && b.is_uppercase()
                            && chars.get(i + 1).is_some_and(|(_, c)| c.is_lowercase()))
                }
                _ => false,
            };
            if cut {
                let end = chars.get(i).map_or(word.len(), |(at, _)| *at);
                let part = &word[start..end];
                let len = part.chars().count();
                if (2..=40).contains(&len) && !part.chars().all(|c| c.is_ascii_digit()) {
                    terms.push(part.to_lowercase());
                }
                start = end;
            }
        }
    }
    terms
}

#[cfg(test)]
impl Index {
    /// An index of `files` (path, content) as [`Index::of_tree`] would make of them.
    pub(super) fn of_texts(files: &[(&str, &str)]) -> Index {
        let mut index = Index::default();
        for (path, text) in files {
            index.read_config(path, text.as_bytes());
            index.files.push(IndexedFile::new(
                path.to_string(),
                Oid::ZERO_SHA1,
                text.len() as u64,
                Some(text.as_bytes()),
            ));
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_split_into_their_words() {
        assert_eq!(terms_of("PaymentIntent"), ["payment", "intent"]);
        assert_eq!(terms_of("refund_all(x)"), ["refund", "all"]);
        assert_eq!(terms_of("HTTPServer v2"), ["http", "server"]);
        assert_eq!(
            terms_of("src/api/routes.ts"),
            ["src", "api", "routes", "ts"]
        );
        assert_eq!(terms_of("a 12345 émigré"), ["émigré"]);
    }

    #[test]
    fn a_tree_is_indexed_without_following_links_or_reading_large_or_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let mut index = git2::Index::new().unwrap();
        let mut add = |path: &str, content: &[u8], mode: u32| {
            let id = repo.blob(content).unwrap();
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode,
                uid: 0,
                gid: 0,
                file_size: 0,
                id,
                flags: path.len() as u16,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).unwrap();
        };
        add(
            "src/pay.py",
            b"def refund(payment_intent):\n    pass\n",
            0o100644,
        );
        add("leak", b"/etc/passwd", 0o120000);
        add("big.txt", &vec![b'a'; MAX_FILE_BYTES + 1], 0o100644);
        add("logo.png", b"\x89PNG\0\0refund", 0o100644);
        add("bad.txt", b"caf\xe9 refund", 0o100644);
        let tree = index.write_tree_to(&repo).unwrap();
        let indexed = Index::of_tree(&repo, tree).unwrap();
        let paths: Vec<&str> = indexed.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["bad.txt", "big.txt", "logo.png", "src/pay.py"]);
        let file = |p: &str| indexed.files.iter().find(|f| f.path == p).unwrap();
        assert_eq!(file("src/pay.py").terms["refund"], 1);
        assert_eq!(file("src/pay.py").terms["pay"], PATH_WEIGHT);
        assert_eq!(file("src/pay.py").terms["intent"], 1);
        assert!(!file("logo.png").terms.contains_key("refund"));
        assert_eq!(file("bad.txt").terms["refund"], 1);
        assert_eq!(file("big.txt").bytes, MAX_FILE_BYTES as u64 + 1);
        assert_eq!(
            indexed.notes,
            [Note {
                path: "big.txt".into(),
                reason: "larger than 512 KiB: indexed by its path only",
            }]
        );
    }
}
