//! The file graph: which file imports which (resolved the way each language does), and which
//! uses a name another defines; ranked from seeds by a personalized PageRank.

use std::collections::{HashMap, HashSet};

use super::history::CoChange;
use super::index::Index;
use super::parse::{Lang, Parsed};
use super::resolve::Lookup;

/// Why one file leads to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    Imports,
    /// The file uses this name, which the other defines.
    Uses(String),
    /// The file imports a package of this many files, the other among them.
    ImportsPackage(u32),
    /// Both are files of one Go package of this many files (which see each other's names
    /// without an import).
    SamePackage(u32),
    /// This many commits of the recent history changed both files.
    ChangedWith(u32),
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

/// A Go package of more files than this links none of them to each other, and an import of it
/// links to the first this many only: a hundred thousand files in one folder must not make ten
/// billion edges.
const MAX_PACKAGE: usize = 64;

impl Graph {
    /// The graph of `index` from what its parsed files say (`parsed[i]` for `index.files[i]`;
    /// `None` for files not parsed).
    pub fn build(index: &Index, parsed: &[Option<Parsed>]) -> Graph {
        let lookup = Lookup::new(index);
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
                let targets = lookup.resolve(lang, path, import);
                let link = match (lang, targets.len()) {
                    (Lang::Go, n) if n > 1 => Link::ImportsPackage(n as u32),
                    _ => Link::Imports,
                };
                for target in targets.into_iter().take(MAX_PACKAGE) {
                    if target != i && seen.insert(target) {
                        graph.out[i].push((target, link.clone()));
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
        // Each Go source links to every other of its package: they share one namespace.
        for files in lookup.go_packages.values() {
            if files.len() > MAX_PACKAGE {
                continue;
            }
            for &a in files {
                for &b in files.iter().filter(|&&b| b != a) {
                    graph.out[a].push((b, Link::SamePackage(files.len() as u32)));
                }
            }
        }
        graph
    }

    /// Adds an edge each way between files the history changed together (`positions`: each
    /// file's position by path, [`Index::positions`]).
    pub fn add_changed_together(&mut self, positions: &HashMap<&str, usize>, together: &CoChange) {
        for (a, b, n) in &together.pairs {
            if let (Some(&a), Some(&b)) = (positions.get(a.as_str()), positions.get(b.as_str())) {
                self.out[a].push((b, Link::ChangedWith(*n)));
                self.out[b].push((a, Link::ChangedWith(*n)));
            }
        }
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
                    // One import of a package ties its importer to each of its files as one
                    // import of a file does.
                    Link::ImportsPackage(_) => 1.0,
                    // A file's package siblings share half an import's weight between them.
                    Link::SamePackage(n) => 0.5 / f64::from(n - 1),
                    Link::Uses(_) => 0.6,
                    Link::ChangedWith(n) => changed_weight(*n),
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

/// How much `n` commits that changed two files together tie them, against one import (1.0):
/// one each, up to six. The edge is added both ways, so with the half back every edge gets in
/// [`Graph::rank`] it counts one and a half times each way. Chosen by `kiln bench context`.
fn changed_weight(n: u32) -> f64 {
    f64::from(n.min(6))
}

#[cfg(test)]
mod tests {
    use super::super::parse::Import;
    use super::*;

    /// An index of empty files at `paths`.
    fn index(paths: &[&str]) -> Index {
        let files: Vec<(&str, &str)> = paths.iter().map(|p| (*p, "")).collect();
        Index::of_texts(&files)
    }

    fn import(module: &str, names: &[&str]) -> Import {
        Import {
            module: module.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            is_mod: false,
        }
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
        let graph = Graph::build(&index, &parsed);
        assert_eq!(graph.out[0], [(1, Link::Imports)]);
        let rank = graph.rank(&[(0, 1.0)]);
        assert!(rank[0] > rank[1] && rank[1] > rank[3], "{rank:?}");
        assert!(rank[2] > 0.0 && rank[4] == 0.0, "{rank:?}");
        assert!((rank.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_go_package_links_its_files_and_a_huge_one_is_capped() {
        let mut files = vec![
            ("go.mod".to_string(), "module example.com/m\n"),
            ("main.go".to_string(), ""),
            ("pay/pay.go".to_string(), ""),
            ("pay/intent.go".to_string(), ""),
        ];
        for i in 0..=MAX_PACKAGE {
            files.push((format!("huge/f{i}.go"), ""));
        }
        let texts: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), *t)).collect();
        let index = Index::of_texts(&texts);
        let mut parsed = vec![Some(Parsed::default()); texts.len()];
        parsed[1] = Some(Parsed {
            imports: vec![
                import("example.com/m/pay", &[]),
                import("example.com/m/huge", &[]),
            ],
            ..Parsed::default()
        });
        let graph = Graph::build(&index, &parsed);
        assert_eq!(graph.out[2], [(3, Link::SamePackage(2))]);
        assert_eq!(graph.out[3], [(2, Link::SamePackage(2))]);
        let to_pay = graph.out[1].iter().filter(|(t, _)| *t == 2 || *t == 3);
        assert!(to_pay.clone().count() == 2);
        assert!(
            to_pay
                .into_iter()
                .all(|(_, l)| *l == Link::ImportsPackage(2))
        );
        // The huge package: its files link to none of each other, and its importer to the
        // first MAX_PACKAGE only.
        assert!(graph.out[4..].iter().all(|edges| edges.is_empty()));
        assert_eq!(graph.out[1].len(), 2 + MAX_PACKAGE);
    }
}
