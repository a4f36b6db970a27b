//! Redaction: every configured secret, and its base64 forms at any alignment (standard and
//! URL-safe alphabets), replaced by `[REDACTED:NAME]` in whatever kiln writes.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Shortest prefix or suffix of a secret masked where output was cut (see
/// [`Redactor::mask_cut`]).
const MIN_PARTIAL: usize = 4;

/// Finds and replaces secrets; cheap to clone. With no secrets it changes nothing.
#[derive(Clone, Default)]
pub struct Redactor {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    matcher: AhoCorasick,
    patterns: Vec<Vec<u8>>,
    /// The replacement for each pattern.
    marks: Vec<String>,
    longest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.as_ref().map_or(0, |i| i.patterns.len());
        write!(f, "Redactor({n} patterns)")
    }
}

impl Redactor {
    /// A redactor for `(name, value)` pairs.
    pub fn new(secrets: &[(String, String)]) -> Redactor {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut marks = Vec::new();
        for (name, value) in secrets {
            for pattern in forms(value.as_bytes()) {
                if !patterns.contains(&pattern) {
                    patterns.push(pattern);
                    marks.push(format!("[REDACTED:{name}]"));
                }
            }
        }
        if patterns.is_empty() {
            return Redactor::default();
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("a few thousand literal patterns always build");
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        Redactor {
            inner: Some(Arc::new(Inner {
                matcher,
                patterns,
                marks,
                longest,
            })),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// `bytes` with every secret form replaced.
    pub fn bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.inner {
            Some(inner) if inner.matcher.is_match(bytes) => {
                Cow::Owned(inner.matcher.replace_all_bytes(bytes, &inner.marks))
            }
            _ => Cow::Borrowed(bytes),
        }
    }

    /// The name of the first secret found in `text`, if any.
    pub fn find(&self, text: &str) -> Option<&str> {
        let inner = self.inner.as_ref()?;
        let found = inner.matcher.find(text)?;
        let mark = &inner.marks[found.pattern().as_usize()];
        mark.strip_prefix("[REDACTED:")?.strip_suffix(']')
    }

    /// `value` as pretty JSON with every secret form replaced (as it reads inside JSON too).
    pub fn json(&self, value: &impl serde::Serialize) -> Result<String, serde_json::Error> {
        let text = serde_json::to_string_pretty(value)?;
        Ok(self.text(&text).into_owned())
    }

    /// `text` with every secret form replaced.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.inner {
            Some(inner) if inner.matcher.is_match(text) => {
                Cow::Owned(inner.matcher.replace_all(text, &inner.marks))
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// Output kept in two parts with bytes dropped between them: each part redacted, and a
    /// secret's start at the end of `head` (or its end at the start of `tail`) masked too, since
    /// the rest of it was dropped.
    pub fn mask_cut(&self, head: &[u8], tail: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut head, mut tail) = (self.bytes(head).into_owned(), self.bytes(tail).into_owned());
        let Some(inner) = &self.inner else {
            return (head, tail);
        };
        for (pattern, mark) in inner.patterns.iter().zip(&inner.marks) {
            let most = pattern.len().saturating_sub(1);
            if let Some(n) = (MIN_PARTIAL..=most)
                .rev()
                .find(|&n| head.ends_with(&pattern[..n]))
            {
                head.truncate(head.len() - n);
                head.extend_from_slice(mark.as_bytes());
            }
            if let Some(n) = (MIN_PARTIAL..=most)
                .rev()
                .find(|&n| tail.starts_with(&pattern[pattern.len() - n..]))
            {
                tail.splice(..n, mark.bytes());
            }
        }
        (head, tail)
    }
}

/// The byte strings that give `secret` away: itself, as it reads inside a JSON string (a `"` or
/// `\` escaped: kiln's reports and records are JSON), and its base64 encodings (standard and
/// URL-safe) at each of the three alignments it can have inside a longer encoded string, each
/// cut to the characters that depend on the secret's bytes alone.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![secret.to_vec()];
    let json = String::from_utf8_lossy(secret)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .into_bytes();
    if json != secret {
        forms.push(json);
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(secret);
            let encoded = engine.encode(&shifted).into_bytes();
            // Leading characters that mix in the filler bytes, trailing ones that would mix in
            // whatever follows the secret.
            let skip = [0, 2, 3][offset];
            let trim = usize::from(shifted.len() % 3 != 0);
            if encoded.len() > skip + trim {
                let form = encoded[skip..encoded.len() - trim].to_vec();
                if form.len() >= super::MIN_SECRET_LEN && !forms.contains(&form) {
                    forms.push(form);
                }
            }
        }
    }
    forms
}

/// Redaction of a stream written as it comes: bytes that could still be the start of a secret
/// are held back until the next chunk (or [`StreamRedactor::finish`]) settles them.
pub struct StreamRedactor {
    redactor: Redactor,
    held: Vec<u8>,
    hidden: bool,
}

impl StreamRedactor {
    pub fn new(redactor: Redactor) -> StreamRedactor {
        StreamRedactor {
            redactor,
            held: Vec::new(),
            hidden: false,
        }
    }

    /// Takes in `chunk`; returns what may be written now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(inner) = self.redactor.inner.clone() else {
            return chunk.to_vec();
        };
        self.held.extend_from_slice(chunk);
        // Everything before `split` is settled: no secret can start there and end later.
        let mut split = self.held.len().saturating_sub(inner.longest - 1);
        for found in inner.matcher.find_iter(&self.held) {
            if found.start() < split && found.end() > split {
                split = found.end();
            }
        }
        let rest = self.held.split_off(split);
        let settled = std::mem::replace(&mut self.held, rest);
        self.settle(&settled)
    }

    fn settle(&mut self, bytes: &[u8]) -> Vec<u8> {
        match self.redactor.bytes(bytes) {
            Cow::Owned(hidden) => {
                self.hidden = true;
                hidden
            }
            Cow::Borrowed(same) => same.to_vec(),
        }
    }

    /// Whether a secret was hidden in what has been settled so far.
    pub fn hidden(&self) -> bool {
        self.hidden
    }

    /// The stream's true end (a whole file): what was held back, redacted as
    /// [`Redactor::bytes`] would, and whether anything in the stream was hidden.
    pub fn end(mut self) -> (Vec<u8>, bool) {
        let held = std::mem::take(&mut self.held);
        let last = self.settle(&held);
        (last, self.hidden)
    }

    /// What was held back, redacted; the start of a secret it ends with (the rest was never
    /// written, or was dropped) is masked too.
    pub fn finish(self) -> Vec<u8> {
        self.redactor.mask_cut(&self.held, b"").0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-live-0123456789abcdef";

    fn redactor() -> Redactor {
        Redactor::new(&[("API_KEY".into(), KEY.into())])
    }

    #[test]
    fn replaces_the_value_and_its_base64_at_any_alignment() {
        let r = redactor();
        assert_eq!(r.text(&format!("key={KEY}.")), "key=[REDACTED:API_KEY].");
        for prefix in ["", "u:", "us:", "use:"] {
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(format!("{prefix}{KEY}"));
                let out = r.text(&encoded);
                assert!(out.contains("[REDACTED:API_KEY]"), "{prefix}: {out}");
                assert!(!out.contains(&engine.encode(KEY)[..8]), "{out}");
            }
        }
        assert_eq!(r.text("nothing here"), "nothing here");
        assert_eq!(r.find(&format!("x {KEY} y")), Some("API_KEY"));
        let quoted = Redactor::new(&[("Q".into(), r#"pa"ss\word-1234"#.into())]);
        let record = serde_json::json!({"output": r#"got pa"ss\word-1234"#}).to_string();
        assert_eq!(quoted.text(&record), r#"{"output":"got [REDACTED:Q]"}"#);
        assert_eq!(r.find("x y"), None);
        assert!(Redactor::new(&[]).is_empty());
    }

    #[test]
    fn a_stream_never_writes_a_secret_split_across_chunks() {
        let text = format!("line one\nthe key is {KEY} and again {KEY}\nend\n");
        for size in [1, 3, 7, 16, 1000] {
            let mut stream = StreamRedactor::new(redactor());
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                out.extend(stream.push(chunk));
            }
            out.extend(stream.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "line one\nthe key is [REDACTED:API_KEY] and again [REDACTED:API_KEY]\nend\n",
                "chunks of {size}"
            );
        }
        let mut cut = StreamRedactor::new(redactor());
        let mut out = cut.push(b"the head ends in sk-live-0123");
        out.extend(cut.finish());
        assert_eq!(out, b"the head ends in [REDACTED:API_KEY]");
    }

    #[test]
    fn a_whole_stream_redacts_as_the_whole_bytes_would() {
        let redactor = redactor();
        for text in [
            format!("a {KEY} b {KEY}"),
            "ends with the start sk-live".to_string(),
            "nothing here".to_string(),
        ] {
            for size in [1, 5, 64] {
                let mut stream = StreamRedactor::new(redactor.clone());
                let mut out = Vec::new();
                for chunk in text.as_bytes().chunks(size) {
                    out.extend(stream.push(chunk));
                }
                let (last, hidden) = stream.end();
                out.extend(last);
                let whole = redactor.bytes(text.as_bytes());
                assert_eq!(out, whole.as_ref(), "{text:?} in chunks of {size}");
                assert_eq!(hidden, matches!(whole, Cow::Owned(_)), "{text:?}");
            }
        }
    }

    #[test]
    fn a_secret_cut_by_dropped_output_is_masked_on_both_sides() {
        let (head, tail) = redactor().mask_cut(b"start sk-live-0123", b"89abcdef end");
        assert_eq!(head, b"start [REDACTED:API_KEY]");
        assert_eq!(tail, b"[REDACTED:API_KEY] end");
        let (head, tail) = redactor().mask_cut(b"plain sk", b"ef plain");
        assert_eq!(
            (head.as_slice(), tail.as_slice()),
            (&b"plain sk"[..], &b"ef plain"[..])
        );
    }
}
