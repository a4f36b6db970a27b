//! The path aliases of a `tsconfig.json` or `jsconfig.json` (`compilerOptions.paths` and
//! `baseUrl`), by which TypeScript and bundlers resolve imports that are not relative.
//!
//! The file is hostile input like any other: the comments and trailing commas tsconfig allows
//! are dropped by a scan that knows strings, then serde_json parses what is left within its
//! nesting limit; a file that does not parse gives no aliases. `extends` is not followed.

use serde_json::Value;

use super::paths::{folder_of, join};

/// Aliases kept of one file, and targets of one alias.
const MAX_ALIASES: usize = 256;
const MAX_TARGETS: usize = 8;

/// What one config file says about imports of the files under its folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsPaths {
    /// The folder the config file is in.
    pub dir: String,
    /// The folder targets are relative to: `baseUrl` under `dir`, else `dir`.
    base: String,
    /// Whether `baseUrl` was given: then any import may be a path under it.
    has_base_url: bool,
    /// Each pattern (at most one `*`) with its targets, in the file's order.
    aliases: Vec<(String, Vec<String>)>,
}

impl TsPaths {
    /// The aliases of the config file at `path` with `content`; `None` for any other file, or
    /// one that gives none.
    pub fn of_file(path: &str, content: &[u8]) -> Option<TsPaths> {
        let dir = folder_of(path);
        let name = path.rsplit('/').next().unwrap_or(path);
        if name != "tsconfig.json" && name != "jsconfig.json" {
            return None;
        }
        let text = std::str::from_utf8(content).ok()?;
        let json: Value = serde_json::from_str(&plain_json(text)).ok()?;
        let options = json.get("compilerOptions")?;
        let base_url = options.get("baseUrl").and_then(Value::as_str);
        let mut aliases = Vec::new();
        if let Some(paths) = options.get("paths").and_then(Value::as_object) {
            for (pattern, targets) in paths.iter().take(MAX_ALIASES) {
                let targets: Vec<String> = targets
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .take(MAX_TARGETS)
                    .map(str::to_string)
                    .collect();
                if pattern.matches('*').count() <= 1 && !targets.is_empty() {
                    aliases.push((pattern.clone(), targets));
                }
            }
        }
        if aliases.is_empty() && base_url.is_none() {
            return None;
        }
        let base = match base_url {
            Some(url) => join(dir, url.trim_start_matches("./")),
            None => dir.to_string(),
        };
        Some(TsPaths {
            dir: dir.to_string(),
            base,
            has_base_url: base_url.is_some(),
            aliases,
        })
    }

    /// Where a non-relative import `spec` may be, first to try first, as paths from the top
    /// of the tree without an extension: the best matching alias's targets (an exact pattern,
    /// else the longest prefix before its `*`), then the path under `baseUrl` when one is set.
    pub fn candidates(&self, spec: &str) -> Vec<String> {
        let mut best: Option<(usize, &[String], &str)> = None;
        for (pattern, targets) in &self.aliases {
            let found = match pattern.split_once('*') {
                None => (pattern == spec).then_some((usize::MAX, "")),
                Some((prefix, suffix)) => spec
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix(suffix))
                    .map(|star| (prefix.len(), star)),
            };
            if let Some((rank, star)) = found
                && best.is_none_or(|(at, _, _)| rank > at)
            {
                best = Some((rank, targets, star));
            }
        }
        let mut found: Vec<String> = best
            .into_iter()
            .flat_map(|(_, targets, star)| targets.iter().map(move |t| t.replacen('*', star, 1)))
            .map(|target| join(&self.base, target.trim_start_matches("./")))
            .collect();
        if self.has_base_url {
            found.push(join(&self.base, spec));
        }
        found
    }
}

/// `text` without `//` and `/* */` comments and without a comma before `}` or `]`, strings
/// left as they are.
fn plain_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push(c);
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => while chars.next_if(|&c| c != '\n').is_some() {},
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            '}' | ']' => {
                let kept = out.trim_end().len();
                if out[..kept].ends_with(',') {
                    out.truncate(kept - 1);
                }
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_with_comments_trailing_commas_and_base_url() {
        let config = br#"{
          // the app's aliases
          "compilerOptions": {
            "baseUrl": "./src", /* targets are under src */
            "paths": {
              "@app/*": ["app/*", "legacy/app/*",],
              "@app/core/*": ["core/*"],
              "config": ["config/index"],
              "url//not-a-comment": ["x"],
            },
          },
        }"#;
        let found = TsPaths::of_file("web/tsconfig.json", config).unwrap();
        assert_eq!(found.dir, "web");
        assert_eq!(
            found.candidates("@app/pay/intent"),
            [
                "web/src/app/pay/intent",
                "web/src/legacy/app/pay/intent",
                "web/src/@app/pay/intent"
            ]
        );
        // The longest prefix wins.
        assert_eq!(found.candidates("@app/core/log")[0], "web/src/core/log");
        assert_eq!(found.candidates("config")[0], "web/src/config/index");
        assert_eq!(found.candidates("url//not-a-comment")[0], "web/src/x");
        assert_eq!(found.candidates("lib/util"), ["web/src/lib/util"]);
    }

    #[test]
    fn without_base_url_only_aliases_resolve_and_bad_files_give_none() {
        let config = br#"{"compilerOptions": {"paths": {"~/*": ["./lib/*"]}}}"#;
        let found = TsPaths::of_file("tsconfig.json", config).unwrap();
        assert_eq!(found.candidates("~/x"), ["lib/x"]);
        assert!(found.candidates("react").is_empty());
        assert_eq!(TsPaths::of_file("package.json", config), None);
        assert_eq!(
            TsPaths::of_file("tsconfig.json", b"{\"compilerOptions\": "),
            None
        );
        assert_eq!(TsPaths::of_file("tsconfig.json", b"\xff\xfe"), None);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(TsPaths::of_file("tsconfig.json", deep.as_bytes()), None);
        assert_eq!(
            TsPaths::of_file("tsconfig.json", b"{\"compilerOptions\": {}}"),
            None
        );
    }
}
