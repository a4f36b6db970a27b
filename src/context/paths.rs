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

/// How near the folders of two paths are in the tree, from 0 (nothing in common but the top)
/// to 1 (one folder): the folders they share from the top, over the deeper one's depth.
pub(super) fn folder_nearness(a: &str, b: &str) -> f64 {
    let a: Vec<&str> = folder_of(a).split('/').filter(|p| !p.is_empty()).collect();
    let b: Vec<&str> = folder_of(b).split('/').filter(|p| !p.is_empty()).collect();
    let deeper = a.len().max(b.len());
    if deeper == 0 {
        return 1.0;
    }
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    shared as f64 / deeper as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_as_near_as_the_share_of_their_path_from_the_top() {
        assert_eq!(folder_nearness("a.go", "b.go"), 1.0);
        assert_eq!(folder_nearness("x/a.go", "x/b.go"), 1.0);
        assert_eq!(folder_nearness("x/a.go", "y/b.go"), 0.0);
        assert_eq!(folder_nearness("x/a.go", "b.go"), 0.0);
        assert_eq!(folder_nearness("p/x/a.go", "p/x/testdata/src/b.go"), 0.5);
        assert_eq!(folder_nearness("p/x/y/a.go", "p/z/b.go"), 1.0 / 3.0);
    }
}
