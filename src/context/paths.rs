//! Paths of a tree as text: a path's folder, a folder and a path joined, `.` and `..` taken
//! out. Nothing here touches a filesystem: a path is only ever looked up among the tree's own.

/// The folder `path` is in; `""` at the top.
pub(super) fn folder_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// `rest` under `dir` (either may be empty, the top).
pub(super) fn join(dir: &str, rest: &str) -> String {
    match (dir.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => dir.to_string(),
        _ => format!("{dir}/{rest}"),
    }
}

/// `a/./b/../c` as `a/c`; a path climbing above the root is left as `..` (it matches no file).
pub(super) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return "..".into();
                }
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}
