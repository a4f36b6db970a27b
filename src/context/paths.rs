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

/// How near two folders (`""` for the top) are in the tree, from 0 (nothing in common but the
/// top) to 1 (one folder): the folders they share from the top, over the deeper one's depth.
/// Called for every file of a tree: it allocates nothing.
pub(super) fn folder_nearness(a: &str, b: &str) -> f64 {
    let depth = |dir: &str| dir.split('/').filter(|p| !p.is_empty()).count();
    let deeper = depth(a).max(depth(b));
    if deeper == 0 {
        return 1.0;
    }
    let shared = a
        .split('/')
        .filter(|p| !p.is_empty())
        .zip(b.split('/').filter(|p| !p.is_empty()))
        .take_while(|(x, y)| x == y)
        .count();
    shared as f64 / deeper as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_as_near_as_the_share_of_their_path_from_the_top() {
        assert_eq!(folder_nearness("", ""), 1.0);
        assert_eq!(folder_nearness("x", "x"), 1.0);
        assert_eq!(folder_nearness("x", "y"), 0.0);
        assert_eq!(folder_nearness("x", ""), 0.0);
        assert_eq!(folder_nearness("p/x", "p/x/testdata/src"), 0.5);
        assert_eq!(folder_nearness("p/x/y", "p/z"), 1.0 / 3.0);
    }
}
