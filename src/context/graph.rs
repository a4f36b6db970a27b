//! The file graph: which file imports which (resolved the way each language does), and which
//! uses a name another defines; ranked from seeds by a personalized PageRank.

use std::collections::{HashMap, HashSet};

use super::index::Index;
use super::parse::{Import, Lang, Parsed};

/// Why one file leads to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    Imports,
    /// The file uses this name, which the other defines.
    Uses(String),
}

/// Edges between the files of an [`Index`], by position.
#[derive(Debug, Default)]
pub struct Graph {
    /// For each file, the files it leads to and why.
    pub out: Vec<Vec<(usize, Link)>>,
}

/// A name defined in more files than this tells nothing of which one is meant.
const MAX_DEFINERS: usize = 3;
/// Names shorter than this are too common to link files.
const MIN_NAME: usize = 4;

impl Graph {
    /// The graph of `index` from what its parsed files say (`parsed[i]` for `index.files[i]`;
    /// `None` for files not parsed). `go_modules` maps each `go.mod`'s folder to its module path.
    pub fn build(
        index: &Index,
        parsed: &[Option<Parsed>],
        go_modules: &[(String, String)],
    ) -> Graph {
        let paths: HashMap<&str, usize> = index
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_str(), i))
            .collect();
        let mut graph = Graph {
            out: vec![Vec::new(); index.files.len()],
        };
        let mut definers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in parsed.iter().enumerate() {
            for name in p.iter().flat_map(|p| &p.defines) {
                if name.len() >= MIN_NAME {
                    definers.entry(name).or_default().push(i);
                }
            }
        }
        for (i, p) in parsed.iter().enumerate() {
            let Some(p) = p else { continue };
            let path = &index.files[i].path;
            let Some(lang) = Lang::of(path) else { continue };
            let mut seen = HashSet::new();
            for import in &p.imports {
                for target in resolve(lang, path, import, &paths, index, go_modules) {
                    if target != i && seen.insert(target) {
                        graph.out[i].push((target, Link::Imports));
                    }
                }
            }
            for name in &p.uses {
                let Some(files) = definers.get(name.as_str()) else {
                    continue;
                };
                if files.len() > MAX_DEFINERS {
                    continue;
                }
                for &target in files {
                    if target != i && seen.insert(target) {
                        graph.out[i].push((target, Link::Uses(name.clone())));
                    }
                }
            }
        }
        graph
    }

    /// Personalized PageRank from `start` (file, weight): relevance flows along imports and uses,
    /// and back against them at half the weight (what imports a file is about it too). Scores
    /// sum to 1.
    pub fn rank(&self, start: &[(usize, f64)]) -> Vec<f64> {
        let n = self.out.len();
        let total: f64 = start.iter().map(|(_, w)| w).sum();
        if n == 0 || total <= 0.0 {
            return vec![0.0; n];
        }
        let mut restart = vec![0.0; n];
        for &(i, w) in start {
            restart[i] += w / total;
        }
        let mut weighted: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
        for (from, edges) in self.out.iter().enumerate() {
            for (to, link) in edges {
                let w = match link {
                    Link::Imports => 1.0,
                    Link::Uses(_) => 0.6,
                };
                weighted[from].push((*to, w));
                weighted[*to].push((from, w / 2.0));
            }
        }
        let sums: Vec<f64> = weighted
            .iter()
            .map(|e| e.iter().map(|(_, w)| w).sum())
            .collect();
        let mut rank = restart.clone();
        // Walks stay near the seeds: a third of each step starts over.
        const GO_ON: f64 = 0.67;
        for _ in 0..30 {
            let mut next: Vec<f64> = restart.iter().map(|r| r * (1.0 - GO_ON)).collect();
            let mut dangling = 0.0;
            for (from, edges) in weighted.iter().enumerate() {
                if sums[from] == 0.0 {
                    dangling += rank[from];
                    continue;
                }
                for (to, w) in edges {
                    next[*to] += GO_ON * rank[from] * w / sums[from];
                }
            }
            for (i, r) in restart.iter().enumerate() {
                next[i] += GO_ON * dangling * r;
            }
            rank = next;
        }
        rank
    }
}

/// The files `import` (written in the file at `from`) names, as `lang` resolves it.
fn resolve(
    lang: Lang,
    from: &str,
    import: &Import,
    paths: &HashMap<&str, usize>,
    index: &Index,
    go_modules: &[(String, String)],
) -> Vec<usize> {
    let dir = from.rsplit_once('/').map_or("", |(d, _)| d);
    let first = |candidates: &[String]| -> Vec<usize> {
        candidates
            .iter()
            .find_map(|c| paths.get(normalize(c).as_str()).copied())
            .into_iter()
            .collect()
    };
    match lang {
        Lang::Python => python(dir, import, paths),
        Lang::JavaScript | Lang::TypeScript | Lang::Tsx => {
            let spec = import.module.as_str();
            let base = if spec.starts_with('.') {
                join(dir, spec)
            } else if let Some(rest) = spec.strip_prefix("@/").or(spec.strip_prefix("~/")) {
                // The common tsconfig alias for the source root.
                format!("src/{rest}")
            } else {
                return Vec::new();
            };
            let stem = base
                .strip_suffix(".js")
                .or(base.strip_suffix(".jsx"))
                .unwrap_or(&base);
            let mut candidates = vec![base.clone()];
            for ext in ["ts", "tsx", "d.ts", "js", "jsx", "mjs", "cjs"] {
                candidates.push(format!("{stem}.{ext}"));
            }
            for ext in ["ts", "tsx", "js", "jsx"] {
                candidates.push(format!("{base}/index.{ext}"));
            }
            first(&candidates)
        }
        Lang::Rust => rust(from, dir, import, paths),
        Lang::Go => {
            let Some((root, rest)) = go_modules.iter().find_map(|(root, module)| {
                let rest = import.module.strip_prefix(module.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then_some((root, rest))
            }) else {
                return Vec::new();
            };
            let package = normalize(&join(root, rest.trim_start_matches('/')));
            index
                .files
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    f.path.rsplit_once('/').map_or("", |(d, _)| d) == package
                        && f.path.ends_with(".go")
                        && !f.path.ends_with("_test.go")
                })
                .map(|(i, _)| i)
                .collect()
        }
    }
}

fn python(dir: &str, import: &Import, paths: &HashMap<&str, usize>) -> Vec<usize> {
    let module = import.module.as_str();
    let dots = module.len() - module.trim_start_matches('.').len();
    let rest = module.trim_start_matches('.').replace('.', "/");
    // Relative: one dot is this folder, each more goes up one.
    let bases: Vec<String> = if dots > 0 {
        let mut base = dir.to_string();
        for _ in 1..dots {
            base = base
                .rsplit_once('/')
                .map_or(String::new(), |(d, _)| d.to_string());
        }
        vec![join(&base, &rest)]
    } else {
        // Absolute: from the repository's root, or from a source folder within it.
        vec![rest.clone(), format!("src/{rest}")]
    };
    let mut found = Vec::new();
    let module_file = |base: &str| {
        [format!("{base}.py"), format!("{base}/__init__.py")]
            .iter()
            .find_map(|c| paths.get(normalize(c).as_str()).copied())
    };
    for base in &bases {
        // `from m import a`: `a` may be a module of package `m`, or a name defined in `m`.
        let mut named_modules = false;
        for name in &import.names {
            if let Some(i) = module_file(&join(base, name)) {
                found.push(i);
                named_modules = true;
            }
        }
        if !named_modules && let Some(i) = module_file(base) {
            found.push(i);
        }
        if !found.is_empty() {
            break;
        }
    }
    found
}

fn rust(from: &str, dir: &str, import: &Import, paths: &HashMap<&str, usize>) -> Vec<usize> {
    let file_stem = from
        .rsplit('/')
        .next()
        .and_then(|n| n.strip_suffix(".rs"))
        .unwrap_or("");
    // The folder this file's own modules live in.
    let module_dir = match file_stem {
        "mod" | "lib" | "main" => dir.to_string(),
        stem => join(dir, stem),
    };
    let module_file = |base: &str| {
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .iter()
            .find_map(|c| paths.get(normalize(c).as_str()).copied())
    };
    if import.is_mod {
        return module_file(&join(&module_dir, &import.module))
            .into_iter()
            .collect();
    }
    let path = import.module.split('{').next().unwrap_or("");
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let base = match segments.first() {
        Some(&"crate") => {
            segments.remove(0);
            crate_root(dir)
        }
        Some(&"self") => {
            segments.remove(0);
            module_dir.clone()
        }
        Some(&"super") => {
            // The parent module's folder: this file's own folder, or one above for a file that
            // stands for its folder; each further `super` one more.
            let parent = |d: &str| {
                d.rsplit_once('/')
                    .map_or(String::new(), |(p, _)| p.to_string())
            };
            let mut base = match file_stem {
                "mod" | "lib" | "main" => parent(dir),
                _ => dir.to_string(),
            };
            segments.remove(0);
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base = parent(&base);
            }
            base
        }
        _ => return Vec::new(),
    };
    // The longest module path that is a file: `a::b::Item` is `a/b.rs`, else `a.rs`.
    (1..=segments.len())
        .rev()
        .find_map(|n| module_file(&join(&base, &segments[..n].join("/"))))
        .into_iter()
        .collect()
}

/// The folder of the crate root above `dir`: the `src` folder it is in, else the top.
fn crate_root(dir: &str) -> String {
    let parts: Vec<&str> = dir.split('/').collect();
    match parts.iter().rposition(|p| *p == "src") {
        Some(at) => parts[..=at].join("/"),
        None => String::new(),
    }
}

fn join(dir: &str, rest: &str) -> String {
    match (dir.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => dir.to_string(),
        _ => format!("{dir}/{rest}"),
    }
}

/// `a/./b/../c` as `a/c`; a path climbing above the root is left as `..` (it matches no file).
fn normalize(path: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::super::index::IndexedFile;
    use super::*;

    fn index(paths: &[&str]) -> Index {
        Index {
            files: paths
                .iter()
                .map(|p| IndexedFile {
                    path: p.to_string(),
                    id: git2::Oid::ZERO_SHA1,
                    bytes: 1,
                    terms: HashMap::new(),
                    length: 1,
                })
                .collect(),
            notes: Vec::new(),
            go_modules: Vec::new(),
        }
    }

    fn resolved(index: &Index, from: &str, import: Import, go: &[(String, String)]) -> Vec<String> {
        let paths = index
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_str(), i))
            .collect();
        let lang = Lang::of(from).unwrap();
        resolve(lang, from, &import, &paths, index, go)
            .into_iter()
            .map(|i| index.files[i].path.clone())
            .collect()
    }

    fn import(module: &str, names: &[&str]) -> Import {
        Import {
            module: module.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            is_mod: false,
        }
    }

    #[test]
    fn python_packages_and_relative_imports() {
        let index = index(&[
            "shop/__init__.py",
            "shop/pay/__init__.py",
            "shop/pay/refund.py",
            "shop/pay/api.py",
            "shop/util.py",
            "src/lib/core.py",
        ]);
        let from = "shop/pay/api.py";
        assert_eq!(
            resolved(&index, from, import("shop.util", &[]), &[]),
            ["shop/util.py"]
        );
        assert_eq!(
            resolved(&index, from, import("shop.pay", &[]), &[]),
            ["shop/pay/__init__.py"]
        );
        assert_eq!(
            resolved(&index, from, import(".", &["refund"]), &[]),
            ["shop/pay/refund.py"]
        );
        assert_eq!(
            resolved(&index, from, import("..util", &["retry"]), &[]),
            ["shop/util.py"]
        );
        assert_eq!(
            resolved(&index, from, import("lib.core", &[]), &[]),
            ["src/lib/core.py"]
        );
        assert!(resolved(&index, from, import("os", &[]), &[]).is_empty());
    }

    #[test]
    fn javascript_relative_paths_index_files_and_the_source_alias() {
        let index = index(&[
            "src/api/routes.ts",
            "src/pay.ts",
            "src/lib/index.js",
            "src/types.d.ts",
        ]);
        let from = "src/api/routes.ts";
        assert_eq!(
            resolved(&index, from, import("../pay", &[]), &[]),
            ["src/pay.ts"]
        );
        assert_eq!(
            resolved(&index, from, import("../pay.js", &[]), &[]),
            ["src/pay.ts"]
        );
        assert_eq!(
            resolved(&index, from, import("../lib", &[]), &[]),
            ["src/lib/index.js"]
        );
        assert_eq!(
            resolved(&index, from, import("@/types", &[]), &[]),
            ["src/types.d.ts"]
        );
        assert!(resolved(&index, from, import("react", &[]), &[]).is_empty());
        assert!(resolved(&index, from, import("../../../../etc/passwd", &[]), &[]).is_empty());
    }

    #[test]
    fn rust_mods_and_crate_paths() {
        let index = index(&[
            "src/lib.rs",
            "src/pay.rs",
            "src/pay/refund.rs",
            "src/api/mod.rs",
            "src/api/routes.rs",
        ]);
        let mod_of = |m: &str| Import {
            module: m.into(),
            names: Vec::new(),
            is_mod: true,
        };
        assert_eq!(
            resolved(&index, "src/lib.rs", mod_of("pay"), &[]),
            ["src/pay.rs"]
        );
        assert_eq!(
            resolved(&index, "src/lib.rs", mod_of("api"), &[]),
            ["src/api/mod.rs"]
        );
        assert_eq!(
            resolved(&index, "src/pay.rs", mod_of("refund"), &[]),
            ["src/pay/refund.rs"]
        );
        assert_eq!(
            resolved(
                &index,
                "src/api/routes.rs",
                import("crate::pay::refund::{Refund,go}", &[]),
                &[]
            ),
            ["src/pay/refund.rs"]
        );
        assert_eq!(
            resolved(
                &index,
                "src/api/routes.rs",
                import("crate::pay::Intent", &[]),
                &[]
            ),
            ["src/pay.rs"]
        );
        assert_eq!(
            resolved(&index, "src/api/mod.rs", import("super::pay", &[]), &[]),
            ["src/pay.rs"]
        );
        assert_eq!(
            resolved(
                &index,
                "src/api/routes.rs",
                import("super::super::pay", &[]),
                &[]
            ),
            ["src/pay.rs"]
        );
        assert_eq!(
            resolved(&index, "src/api/mod.rs", import("self::routes", &[]), &[]),
            ["src/api/routes.rs"]
        );
        assert!(resolved(&index, "src/lib.rs", import("std::io", &[]), &[]).is_empty());
    }

    #[test]
    fn go_packages_of_the_module() {
        let index = index(&[
            "go.mod",
            "pay/pay.go",
            "pay/intent.go",
            "pay/pay_test.go",
            "main.go",
        ]);
        let go = [(String::new(), "example.com/shop".to_string())];
        let mut found = resolved(&index, "main.go", import("example.com/shop/pay", &[]), &go);
        found.sort();
        assert_eq!(found, ["pay/intent.go", "pay/pay.go"]);
        assert!(resolved(&index, "main.go", import("fmt", &[]), &go).is_empty());
    }

    #[test]
    fn rank_flows_from_the_seed_along_imports_and_back() {
        let index = index(&["seed.py", "dep.py", "caller.py", "far.py", "alone.py"]);
        let parsed = vec![
            Some(Parsed {
                imports: vec![import("dep", &[])],
                ..Parsed::default()
            }),
            Some(Parsed {
                imports: vec![import("far", &[])],
                ..Parsed::default()
            }),
            Some(Parsed {
                imports: vec![import("seed", &[])],
                ..Parsed::default()
            }),
            Some(Parsed::default()),
            Some(Parsed::default()),
        ];
        let graph = Graph::build(&index, &parsed, &[]);
        assert_eq!(graph.out[0], [(1, Link::Imports)]);
        let rank = graph.rank(&[(0, 1.0)]);
        assert!(rank[0] > rank[1] && rank[1] > rank[3], "{rank:?}");
        assert!(rank[2] > 0.0 && rank[4] == 0.0, "{rank:?}");
        assert!((rank.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}
