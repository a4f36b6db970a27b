//! BM25 over a repository's files: each file a document of its path's terms (weighted) and its
//! content's, the prompt the query. The ranking every other one is measured against, and what
//! files no parser understands fall back to.

use std::collections::HashMap;

use super::index::{Index, terms_of};

/// BM25's term-frequency saturation and length normalization, at their usual values.
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// Words of a request that name no part of a program.
const STOP_WORDS: &[&str] = &[
    "a", "add", "all", "an", "and", "any", "are", "as", "at", "be", "by", "can", "change", "do",
    "does", "fix", "for", "from", "has", "have", "if", "in", "into", "is", "it", "its", "make",
    "new", "no", "not", "of", "on", "or", "so", "some", "that", "the", "their", "then", "there",
    "this", "to", "use", "using", "when", "which", "with", "without",
];

/// The query terms of a prompt: its words split as identifiers are, stop words dropped, each
/// once, in order of first use.
pub fn query_terms(prompt: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for term in terms_of(prompt) {
        if !STOP_WORDS.contains(&term.as_str()) && !seen.contains(&term) {
            seen.push(term);
        }
    }
    seen
}

/// One file's BM25 score for the query, and the query terms it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// Its place in [`Index::files`].
    pub file: usize,
    pub score: f64,
    pub matched: Vec<String>,
}

/// Every file with a score above zero, best first (ties by path).
pub fn rank(index: &Index, query: &[String]) -> Vec<Scored> {
    let n = index.files.len() as f64;
    if n == 0.0 || query.is_empty() {
        return Vec::new();
    }
    let average = index.files.iter().map(|f| f64::from(f.length)).sum::<f64>() / n;
    let mut frequency: HashMap<&str, f64> = HashMap::new();
    for term in query {
        let df = index
            .files
            .iter()
            .filter(|f| f.terms.contains_key(term))
            .count() as f64;
        frequency.insert(term, df);
    }
    let mut scored: Vec<Scored> = index
        .files
        .iter()
        .enumerate()
        .filter_map(|(i, file)| {
            let mut score = 0.0;
            let mut matched = Vec::new();
            for term in query {
                let Some(&tf) = file.terms.get(term) else {
                    continue;
                };
                let df = frequency[term.as_str()];
                let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                let tf = f64::from(tf);
                let norm = K1 * (1.0 - B + B * f64::from(file.length) / average.max(1.0));
                score += idf * tf * (K1 + 1.0) / (tf + norm);
                matched.push(term.clone());
            }
            (score > 0.0).then_some(Scored {
                file: i,
                score,
                matched,
            })
        })
        .collect();
    scored.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| index.files[a.file].path.cmp(&index.files[b.file].path))
    });
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_about_the_prompts_rare_words_ranks_first() {
        let index = Index::of_texts(&[
            (
                "src/pay/refund.py",
                "def refund(intent): return gateway.refund(intent)",
            ),
            (
                "src/pay/charge.py",
                "def charge(intent): return gateway.charge(intent)",
            ),
            (
                "README.md",
                "This service handles payments and refunds for the shop.",
            ),
            ("src/util.py", "def log(message): print(message)"),
        ]);
        let query = query_terms("Make refund() retry when the gateway times out");
        assert_eq!(query, ["refund", "retry", "gateway", "times", "out"]);
        let ranked = rank(&index, &query);
        let paths: Vec<&str> = ranked
            .iter()
            .map(|s| index.files[s.file].path.as_str())
            .collect();
        assert_eq!(paths, ["src/pay/refund.py", "src/pay/charge.py"]);
        assert_eq!(ranked[0].matched, ["refund", "gateway"]);
        assert!(ranked[0].score > ranked[1].score);
        assert!(rank(&index, &[]).is_empty());
    }
}
