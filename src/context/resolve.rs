//! Imports resolved to files the way each language does: Python packages and relative imports,
//! JS/TS relative paths with extensions and index files, `tsconfig` `paths` and `baseUrl` (and
//! the `@/` source alias without them), Rust `mod` and `crate::`/`self::`/`super::` paths, Go
//! packages of the repository's modules.

use std::collections::HashMap;

use super::index::Index;
use super::parse::{Import, Lang};
use super::paths::{folder_of, join, normalize};
use super::tsconfig::TsPaths;

/// What resolving needs of an index, gathered once: each path's position, and the files of each
/// Go package (a folder's sources, tests aside).
pub(super) struct Lookup<'a> {
    index: &'a Index,
    pub paths: HashMap<&'a str, usize>,
    pub go_packages: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Lookup<'a> {
    pub fn new(index: &'a Index) -> Lookup<'a> {
        let mut go_packages: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, file) in index.files.iter().enumerate() {
            if file.path.ends_with(".go") && !file.path.ends_with("_test.go") {
                go_packages
                    .entry(folder_of(&file.path))
                    .or_default()
                    .push(i);
            }
        }
        Lookup {
            index,
            paths: index.positions(),
            go_packages,
        }
    }

    /// The files `import` (written in the file at `from`) names, as `lang` resolves it.
    pub fn resolve(&self, lang: Lang, from: &str, import: &Import) -> Vec<usize> {
        resolve(lang, from, import, self)
    }
}

fn resolve(lang: Lang, from: &str, import: &Import, lookup: &Lookup<'_>) -> Vec<usize> {
    let (paths, index) = (&lookup.paths, lookup.index);
    let dir = folder_of(from);
    match lang {
        Lang::Python => python(dir, import, paths),
        Lang::JavaScript | Lang::TypeScript | Lang::Tsx => {
            let spec = import.module.as_str();
            let bases = if spec.starts_with('.') {
                vec![join(dir, spec)]
            } else {
                aliased(from, spec, &index.ts_paths)
            };
            bases
                .iter()
                .find_map(|base| js_file(paths, base))
                .into_iter()
                .collect()
        }
        Lang::Rust => rust(from, dir, import, paths),
        Lang::Go => {
            let Some((root, rest)) = index.go_modules.iter().find_map(|(root, module)| {
                let rest = import.module.strip_prefix(module.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then_some((root, rest))
            }) else {
                return Vec::new();
            };
            let package = normalize(&join(root, rest.trim_start_matches('/')));
            lookup
                .go_packages
                .get(package.as_str())
                .cloned()
                .unwrap_or_default()
        }
    }
}

/// Where a non-relative JS/TS import may be: by the `paths` and `baseUrl` of the nearest
/// config file above `from`, else by the common `@/` and `~/` aliases of the source folder.
fn aliased(from: &str, spec: &str, configs: &[TsPaths]) -> Vec<String> {
    let nearest = configs
        .iter()
        .filter(|c| c.dir.is_empty() || from.starts_with(&format!("{}/", c.dir)))
        .max_by_key(|c| c.dir.len());
    let mut bases = nearest.map(|c| c.candidates(spec)).unwrap_or_default();
    if let Some(rest) = spec.strip_prefix("@/").or(spec.strip_prefix("~/")) {
        bases.push(format!("src/{rest}"));
    }
    bases
}

/// The file a JS/TS import of `base` is: itself, with an extension (`.js` written for a `.ts`
/// file too), or its folder's index file.
fn js_file(paths: &HashMap<&str, usize>, base: &str) -> Option<usize> {
    let stem = base
        .strip_suffix(".js")
        .or(base.strip_suffix(".jsx"))
        .unwrap_or(base);
    let mut candidates = vec![base.to_string()];
    for ext in ["ts", "tsx", "d.ts", "js", "jsx", "mjs", "cjs"] {
        candidates.push(format!("{stem}.{ext}"));
    }
    for ext in ["ts", "tsx", "js", "jsx"] {
        candidates.push(format!("{base}/index.{ext}"));
    }
    first_file(paths, &candidates)
}

fn python(dir: &str, import: &Import, paths: &HashMap<&str, usize>) -> Vec<usize> {
    let module = import.module.as_str();
    let dots = module.len() - module.trim_start_matches('.').len();
    let rest = module.trim_start_matches('.').replace('.', "/");
    // Relative: one dot is this folder, each more goes up one.
    let bases: Vec<String> = if dots > 0 {
        let mut base = dir.to_string();
        for _ in 1..dots {
            base = folder_of(&base).to_string();
        }
        vec![join(&base, &rest)]
    } else {
        // Absolute: from the repository's root, or from a source folder within it.
        vec![rest.clone(), format!("src/{rest}")]
    };
    let mut found = Vec::new();
    let module_file = |base: &str| {
        first_file(
            paths,
            &[format!("{base}.py"), format!("{base}/__init__.py")],
        )
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
    let module_file =
        |base: &str| first_file(paths, &[format!("{base}.rs"), format!("{base}/mod.rs")]);
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
            let mut base = match file_stem {
                "mod" | "lib" | "main" => folder_of(dir).to_string(),
                _ => dir.to_string(),
            };
            segments.remove(0);
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base = folder_of(&base).to_string();
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

/// The first of `candidates` that is a file of the tree.
fn first_file(paths: &HashMap<&str, usize>, candidates: &[String]) -> Option<usize> {
    candidates
        .iter()
        .find_map(|c| paths.get(normalize(c).as_str()).copied())
}

/// The folder of the crate root above `dir`: the `src` folder it is in, else the top.
fn crate_root(dir: &str) -> String {
    let parts: Vec<&str> = dir.split('/').collect();
    match parts.iter().rposition(|p| *p == "src") {
        Some(at) => parts[..=at].join("/"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index of empty files at `paths`.
    fn index(paths: &[&str]) -> Index {
        let files: Vec<(&str, &str)> = paths.iter().map(|p| (*p, "")).collect();
        Index::of_texts(&files)
    }

    fn resolved(index: &Index, from: &str, import: Import) -> Vec<String> {
        let lang = Lang::of(from).unwrap();
        Lookup::new(index)
            .resolve(lang, from, &import)
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
            resolved(&index, from, import("shop.util", &[])),
            ["shop/util.py"]
        );
        assert_eq!(
            resolved(&index, from, import("shop.pay", &[])),
            ["shop/pay/__init__.py"]
        );
        assert_eq!(
            resolved(&index, from, import(".", &["refund"])),
            ["shop/pay/refund.py"]
        );
        assert_eq!(
            resolved(&index, from, import("..util", &["retry"])),
            ["shop/util.py"]
        );
        assert_eq!(
            resolved(&index, from, import("lib.core", &[])),
            ["src/lib/core.py"]
        );
        assert!(resolved(&index, from, import("os", &[])).is_empty());
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
            resolved(&index, from, import("../pay", &[])),
            ["src/pay.ts"]
        );
        assert_eq!(
            resolved(&index, from, import("../pay.js", &[])),
            ["src/pay.ts"]
        );
        assert_eq!(
            resolved(&index, from, import("../lib", &[])),
            ["src/lib/index.js"]
        );
        assert_eq!(
            resolved(&index, from, import("@/types", &[])),
            ["src/types.d.ts"]
        );
        assert!(resolved(&index, from, import("react", &[])).is_empty());
        assert!(resolved(&index, from, import("../../../../etc/passwd", &[])).is_empty());
    }

    #[test]
    fn typescript_paths_of_the_nearest_config() {
        let index = Index::of_texts(&[
            (
                "web/tsconfig.json",
                r#"{"compilerOptions": {"baseUrl": ".", "paths": {"@shop/*": ["lib/shop/*"]}}}"#,
            ),
            ("web/lib/shop/cart.ts", ""),
            ("web/lib/shop/pay/index.ts", ""),
            ("web/components/Cart.tsx", ""),
            ("web/pages/checkout.tsx", ""),
            ("api/server.ts", ""),
            ("api/lib/shop/cart.ts", ""),
        ]);
        let from = "web/pages/checkout.tsx";
        assert_eq!(
            resolved(&index, from, import("@shop/cart", &[])),
            ["web/lib/shop/cart.ts"]
        );
        assert_eq!(
            resolved(&index, from, import("@shop/pay", &[])),
            ["web/lib/shop/pay/index.ts"]
        );
        // baseUrl: a bare path under the config's folder.
        assert_eq!(
            resolved(&index, from, import("components/Cart", &[])),
            ["web/components/Cart.tsx"]
        );
        // The config applies to files under its folder only.
        assert!(resolved(&index, "api/server.ts", import("@shop/cart", &[])).is_empty());
        assert!(resolved(&index, from, import("react", &[])).is_empty());
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
            resolved(&index, "src/lib.rs", mod_of("pay")),
            ["src/pay.rs"]
        );
        assert_eq!(
            resolved(&index, "src/lib.rs", mod_of("api")),
            ["src/api/mod.rs"]
        );
        assert_eq!(
            resolved(&index, "src/pay.rs", mod_of("refund")),
            ["src/pay/refund.rs"]
        );
        assert_eq!(
            resolved(
                &index,
                "src/api/routes.rs",
                import("crate::pay::refund::{Refund,go}", &[])
            ),
            ["src/pay/refund.rs"]
        );
        assert_eq!(
            resolved(
                &index,
                "src/api/routes.rs",
                import("crate::pay::Intent", &[])
            ),
            ["src/pay.rs"]
        );
        assert_eq!(
            resolved(&index, "src/api/mod.rs", import("super::pay", &[])),
            ["src/pay.rs"]
        );
        assert_eq!(
            resolved(
                &index,
                "src/api/routes.rs",
                import("super::super::pay", &[])
            ),
            ["src/pay.rs"]
        );
        assert_eq!(
            resolved(&index, "src/api/mod.rs", import("self::routes", &[])),
            ["src/api/routes.rs"]
        );
        assert!(resolved(&index, "src/lib.rs", import("std::io", &[])).is_empty());
    }

    #[test]
    fn go_packages_of_the_module() {
        let index = Index::of_texts(&[
            ("go.mod", "module example.com/shop\n"),
            ("pay/pay.go", ""),
            ("pay/intent.go", ""),
            ("pay/pay_test.go", ""),
            ("main.go", ""),
        ]);
        let mut found = resolved(&index, "main.go", import("example.com/shop/pay", &[]));
        found.sort();
        assert_eq!(found, ["pay/intent.go", "pay/pay.go"]);
        assert!(resolved(&index, "main.go", import("fmt", &[])).is_empty());
    }
}
