//! The file graph: which file imports which (resolved the way each language does), and which
//! uses a name another defines; ranked from seeds by a personalized PageRank.

use std::collections::{HashMap, HashSet};

use super::index::Index;
use super::parse::{Lang, Parsed};
use super::resolve::resolve;

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
        let graph = Graph::build(&index, &parsed, &[]);
        assert_eq!(graph.out[0], [(1, Link::Imports)]);
        let rank = graph.rank(&[(0, 1.0)]);
        assert!(rank[0] > rank[1] && rank[1] > rank[3], "{rank:?}");
        assert!(rank[2] > 0.0 && rank[4] == 0.0, "{rank:?}");
        assert!((rank.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}
