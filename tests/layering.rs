//! The module graph's keeper: every top-level module of `src/` sits in one layer of the table in
//! ARCHITECTURE.md, imports only from its own layer or the ones below, and no modules import
//! each other in a cycle. A failure names the file, the line and the import.
//!
//! Imports are read from the code as written (`crate::` paths, and `kiln::` in the binary's own
//! files), outside `#[cfg(test)] mod tests` and comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One import of one module by another: where it is written.
struct Import {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
    text: String,
}

/// The layer table: the fenced block of ARCHITECTURE.md whose lines start `L0`, `L1`...,
/// each naming the layer's modules after its name.
fn layers(architecture: &str) -> BTreeMap<String, (usize, String)> {
    let mut layers = BTreeMap::new();
    for line in architecture.lines() {
        let Some(rest) = line.strip_prefix('L') else {
            continue;
        };
        let Some((rank, rest)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(rank) = rank.parse::<usize>() else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let name = format!("L{rank} {}", words.next().unwrap_or_default());
        for module in words {
            layers.insert(module.to_string(), (rank, name.clone()));
        }
    }
    layers
}

/// The top-level module a file of `src/` belongs to (`main` and `lib` are the crate's roots).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap();
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that counts: up to its unit tests, without comments.
fn code(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut in_tests = false;
    let all: Vec<&str> = text.lines().collect();
    for (i, line) in all.iter().enumerate() {
        if line.trim() == "#[cfg(test)]"
            && all
                .get(i + 1)
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            in_tests = true;
        }
        if in_tests {
            break;
        }
        let line = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        lines.push((i + 1, line.to_string()));
    }
    lines
}

/// The modules named after `root::` in `code`: `root::a::...`, or each of `root::{a, b::c}`.
fn imports_in(code: &[(usize, String)], root: &str) -> Vec<(usize, String, String)> {
    // Joined so that a `{...}` group may span lines; each byte keeps its line number.
    let mut text = String::new();
    let mut line_of = Vec::new();
    for (n, line) in code {
        text.push_str(line);
        text.push('\n');
        line_of.extend(std::iter::repeat_n(*n, line.len() + 1));
    }
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let needle = format!("{root}::");
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(pos) = text[at..].find(&needle) {
        let start = at + pos;
        let before = text[..start].chars().next_back();
        at = start + needle.len();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let line = line_of[start];
        let shown = text[start..]
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let rest = &text[at..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: after `{` and after each `,` at depth one.
            let mut depth = 1;
            let mut expect_name = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if expect_name && depth == 1 && !c.is_whitespace() => {
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            found.push((line, name, shown.clone()));
                        }
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push((line, name, shown));
            }
        }
    }
    found
}

fn imports(src: &Path, modules: &BTreeSet<String>) -> Vec<Import> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut all = Vec::new();
    for file in files {
        let from = module_of(src, &file);
        if from == "lib" {
            continue;
        }
        let code = code(&std::fs::read_to_string(&file).unwrap());
        // The binary's own files (main.rs, cli/) reach the library as `kiln::`.
        let mut named = imports_in(&code, "crate");
        named.extend(imports_in(&code, "kiln"));
        for (line, to, text) in named {
            if to != from && modules.contains(&to) {
                all.push(Import {
                    from: from.clone(),
                    to,
                    file: file.clone(),
                    line,
                    text,
                });
            }
        }
    }
    all
}

/// The modules on a cycle, if there is one: a path `a → b → ... → a`.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "rs"))
        .map(|p| module_of(src, &p))
        .filter(|m| m != "main" && m != "lib")
        .collect()
}

/// What is wrong with the imports of `src` against the layer table in `architecture`.
fn violations(src: &Path, architecture: &str) -> Vec<String> {
    let layers = layers(architecture);
    let modules = top_level_modules(src);
    let mut wrong: Vec<String> = modules
        .iter()
        .filter(|m| !layers.contains_key(*m))
        .map(|m| {
            format!("module `{m}` is in no layer: add it to the layer table in ARCHITECTURE.md")
        })
        .collect();
    wrong.extend(
        layers.keys().filter(|m| !modules.contains(*m)).map(|m| {
            format!("ARCHITECTURE.md's layer table names `{m}`, which src/ does not have")
        }),
    );
    let imports = imports(src, &modules);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for import in &imports {
        edges
            .entry(import.from.clone())
            .or_default()
            .insert(import.to.clone());
        let (Some((from_rank, from_layer)), Some((to_rank, to_layer))) =
            (layers.get(&import.from), layers.get(&import.to))
        else {
            continue;
        };
        if to_rank > from_rank {
            wrong.push(format!(
                "{}:{}: `{}` ({from_layer}) imports `{}` ({to_layer}), a layer above it: {}",
                import
                    .file
                    .strip_prefix(root())
                    .unwrap_or(&import.file)
                    .display(),
                import.line,
                import.from,
                import.to,
                import.text
            ));
        }
    }
    if let Some(cycle) = cycle(&edges) {
        let mut steps = Vec::new();
        for pair in cycle.windows(2) {
            let at = imports
                .iter()
                .find(|i| i.from == pair[0] && i.to == pair[1])
                .expect("an edge comes from an import");
            steps.push(format!(
                "  `{}` imports `{}` at {}:{}: {}",
                at.from,
                at.to,
                at.file.strip_prefix(root()).unwrap_or(&at.file).display(),
                at.line,
                at.text
            ));
        }
        wrong.push(format!(
            "modules import each other in a cycle ({}):\n{}",
            cycle.join(" → "),
            steps.join("\n")
        ));
    }
    wrong
}

#[test]
fn every_module_imports_only_its_own_layer_or_those_below_and_none_in_a_cycle() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let wrong = violations(&root().join("src"), &architecture);
    assert!(wrong.is_empty(), "\n{}\n", wrong.join("\n"));
}

#[test]
fn the_keeper_names_an_upward_import_and_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("high")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod low;\npub mod high;\n").unwrap();
    std::fs::write(
        src.join("low.rs"),
        "// crate::high in a comment does not count\nuse crate::{\n    high::Thing,\n};\n\
         #[cfg(test)]\nmod tests {\n    use crate::high::Other;\n}\n",
    )
    .unwrap();
    std::fs::write(src.join("high/mod.rs"), "use crate::low::Base;\n").unwrap();
    let table = "```\nL0 bottom  low\nL1 top     high\n```\n";
    let wrong = violations(&src, table);
    assert!(
        wrong[0].contains("low.rs:2: `low` (L0 bottom) imports `high` (L1 top)"),
        "{wrong:?}"
    );
    assert!(wrong[1].contains("cycle (high → low → high)"), "{wrong:?}");
    // Without the upward import, nothing is wrong.
    std::fs::write(src.join("low.rs"), "pub struct Base;\n").unwrap();
    assert!(violations(&src, table).is_empty());
    // A module left out of the table is named.
    std::fs::write(src.join("extra.rs"), "").unwrap();
    let wrong = violations(&src, table);
    assert!(
        wrong[0].contains("module `extra` is in no layer"),
        "{wrong:?}"
    );
}

#[test]
fn architecture_md_names_every_source_file_and_only_files_that_exist() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut missing = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // A folder's mod.rs is named by the folder; a file inside a second-level folder by
        // `folder/file.rs`; any other file by its name.
        let named = match parts.as_slice() {
            [file] => format!("src/{file}"),
            [dir, m] if m == "mod.rs" => format!("src/{dir}/"),
            [_, file] => file.clone(),
            [.., dir, file] => format!("{dir}/{file}"),
            [] => unreachable!("a file has a name"),
        };
        if !architecture.contains(&named) {
            missing.push(format!("{} (as `{named}`)", relative.display()));
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's map does not name: {}",
        missing.join(", ")
    );
    let stale: Vec<&str> = architecture
        .split(|c: char| c.is_whitespace() || "`(),".contains(c))
        .filter(|word| word.starts_with("src/"))
        .filter(|word| !root().join(word).exists())
        .collect();
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md names paths src/ does not have: {stale:?}"
    );
}
