//! What a source file says about other files: its imports, the names it defines and the names
//! it uses, read with tree-sitter for Rust, Python, JavaScript/TypeScript and Go.
//!
//! A grammar is C code running on hostile input, so parsing happens in a child process
//! (`kiln __parse`, [`in_child`]) with a memory and CPU limit and a deadline: a grammar that
//! crashes or hangs on a crafted file costs its batch the parse (the files fall back to words),
//! never kiln. [`parse_batch`] is what the child runs.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tree_sitter::{Language, Node, Parser};

/// The languages kiln parses, told by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    JavaScript,
    TypeScript,
    Tsx,
    Go,
}

impl Lang {
    pub fn of(path: &str) -> Option<Lang> {
        let ext = path.rsplit_once('.')?.1;
        Some(match ext {
            "rs" => Lang::Rust,
            "py" | "pyi" => Lang::Python,
            "js" | "jsx" | "mjs" | "cjs" => Lang::JavaScript,
            "ts" | "mts" | "cts" => Lang::TypeScript,
            "tsx" => Lang::Tsx,
            "go" => Lang::Go,
            _ => return None,
        })
    }

    fn grammar(self) -> Language {
        match self {
            Lang::Rust => tree_sitter_rust::LANGUAGE.into(),
            Lang::Python => tree_sitter_python::LANGUAGE.into(),
            Lang::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Lang::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Lang::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Lang::Go => tree_sitter_go::LANGUAGE.into(),
        }
    }
}

/// One file to parse.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Source {
    pub path: String,
    pub lang: Lang,
    pub text: String,
}

/// One import as written: `module` (a Python module, possibly relative; a JS/TS specifier; a Rust
/// `use` path or `mod` name; a Go import path) and, for Python's `from m import a, b`, the names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    pub module: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A Rust `mod name;`: a file beside this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_mod: bool,
}

/// What one file says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parsed {
    pub imports: Vec<Import>,
    /// Names of the functions, types, classes... it defines.
    pub defines: Vec<String>,
    /// Identifiers it uses, each once.
    pub uses: Vec<String>,
}

/// Caps on what one file may yield.
const MAX_IMPORTS: usize = 500;
const MAX_NAMES: usize = 2000;
/// How long one file's parse may take in the child.
const PARSE_MICROS: u64 = 2_000_000;
/// Nesting deeper than this is not walked (a crafted file can nest without end).
const MAX_DEPTH: usize = 400;

/// Parses `sources` here, in this process: what the child runs. A file the grammar cannot
/// parse in time gives an empty result.
pub fn parse_batch(sources: &[Source]) -> Vec<Parsed> {
    sources.iter().map(parse_one).collect()
}

fn parse_one(source: &Source) -> Parsed {
    let mut parser = Parser::new();
    if parser.set_language(&source.lang.grammar()).is_err() {
        return Parsed::default();
    }
    let started = Instant::now();
    let limit = Duration::from_micros(PARSE_MICROS);
    let mut progress = |_: &tree_sitter::ParseState| started.elapsed() > limit;
    let options = tree_sitter::ParseOptions::new().progress_callback(&mut progress);
    let text = source.text.as_bytes();
    let Some(tree) = parser.parse_with_options(
        &mut |at, _| if at < text.len() { &text[at..] } else { &[] },
        None,
        Some(options),
    ) else {
        return Parsed::default();
    };
    let mut parsed = Parsed::default();
    walk(tree.root_node(), source, &mut parsed, 0);
    parsed.defines.sort();
    parsed.defines.dedup();
    parsed.uses.sort();
    parsed.uses.dedup();
    parsed.uses.truncate(MAX_NAMES);
    parsed
}

fn text<'a>(node: Node<'_>, source: &'a Source) -> &'a str {
    source.text.get(node.byte_range()).unwrap_or("")
}

fn unquote(s: &str) -> String {
    s.trim_matches(|c| c == '"' || c == '\'' || c == '`')
        .to_string()
}

fn walk(node: Node<'_>, source: &Source, out: &mut Parsed, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let kind = node.kind();
    let name = || node.child_by_field_name("name").map(|n| text(n, source));
    match (source.lang, kind) {
        (_, "identifier" | "type_identifier") if out.uses.len() < MAX_NAMES * 4 => {
            out.uses.push(text(node, source).to_string());
        }
        (Lang::Python, "function_definition" | "class_definition")
        | (
            Lang::Rust,
            "function_item" | "struct_item" | "enum_item" | "trait_item" | "type_item"
            | "const_item" | "static_item" | "union_item",
        )
        | (
            Lang::JavaScript | Lang::TypeScript | Lang::Tsx,
            "function_declaration"
            | "class_declaration"
            | "generator_function_declaration"
            | "interface_declaration"
            | "type_alias_declaration"
            | "enum_declaration",
        )
        | (Lang::Go, "function_declaration" | "method_declaration" | "type_spec") => {
            if let Some(name) = name()
                && out.defines.len() < MAX_NAMES
            {
                out.defines.push(name.to_string());
            }
        }
        (Lang::JavaScript | Lang::TypeScript | Lang::Tsx, "variable_declarator") if depth <= 3 => {
            if let Some(name) = node.child_by_field_name("name")
                && name.kind() == "identifier"
                && out.defines.len() < MAX_NAMES
            {
                out.defines.push(text(name, source).to_string());
            }
        }
        _ => {}
    }
    if out.imports.len() < MAX_IMPORTS {
        import_of(node, source, out);
    }
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        walk(child, source, out, depth + 1);
    }
}

fn import_of(node: Node<'_>, source: &Source, out: &mut Parsed) {
    let field = |name: &str| node.child_by_field_name(name).map(|n| text(n, source));
    match (source.lang, node.kind()) {
        (Lang::Python, "import_statement") => {
            let mut cursor = node.walk();
            for child in node.children_by_field_name("name", &mut cursor) {
                let module = match child.kind() {
                    "aliased_import" => child.child_by_field_name("name").map(|n| text(n, source)),
                    _ => Some(text(child, source)),
                };
                if let Some(module) = module {
                    out.imports.push(Import {
                        module: module.to_string(),
                        ..Import::default()
                    });
                }
            }
        }
        (Lang::Python, "import_from_statement") => {
            let Some(module) = field("module_name") else {
                return;
            };
            let mut cursor = node.walk();
            let names = node
                .children_by_field_name("name", &mut cursor)
                .filter_map(|n| match n.kind() {
                    "aliased_import" => n.child_by_field_name("name").map(|n| text(n, source)),
                    _ => Some(text(n, source)),
                })
                .map(String::from)
                .collect();
            out.imports.push(Import {
                module: module.to_string(),
                names,
                is_mod: false,
            });
        }
        (
            Lang::JavaScript | Lang::TypeScript | Lang::Tsx,
            "import_statement" | "export_statement",
        ) => {
            if let Some(source_text) = field("source") {
                out.imports.push(Import {
                    module: unquote(source_text),
                    ..Import::default()
                });
            }
        }
        (Lang::JavaScript | Lang::TypeScript | Lang::Tsx, "call_expression") => {
            let callee = field("function").unwrap_or("");
            if callee == "require" || callee == "import" {
                let first = node
                    .child_by_field_name("arguments")
                    .and_then(|a| a.named_child(0))
                    .filter(|a| a.kind() == "string");
                if let Some(arg) = first {
                    out.imports.push(Import {
                        module: unquote(text(arg, source)),
                        ..Import::default()
                    });
                }
            }
        }
        (Lang::Rust, "mod_item") if node.child_by_field_name("body").is_none() => {
            if let Some(name) = field("name") {
                out.imports.push(Import {
                    module: name.to_string(),
                    names: Vec::new(),
                    is_mod: true,
                });
            }
        }
        (Lang::Rust, "use_declaration") => {
            if let Some(argument) = field("argument") {
                out.imports.push(Import {
                    module: argument.split_whitespace().collect::<Vec<_>>().join(""),
                    ..Import::default()
                });
            }
        }
        (Lang::Go, "import_spec") => {
            if let Some(path) = field("path") {
                out.imports.push(Import {
                    module: unquote(path),
                    ..Import::default()
                });
            }
        }
        _ => {}
    }
}

/// The child's memory limit: a grammar that allocates without end is stopped here.
const CHILD_MEMORY: u64 = 1 << 30;
/// The child's CPU limit, and how long kiln waits for a batch.
const CHILD_CPU_SECS: u64 = 60;

/// Parses `sources` in a child process (`exe __parse`) under a memory and CPU limit and a
/// deadline. `None` when the child failed in any way: the caller ranks those files by words.
pub fn in_child(exe: &Path, sources: &[Source]) -> Option<Vec<Parsed>> {
    let input = serde_json::to_vec(sources).ok()?;
    let mut command = Command::new(exe);
    command
        .arg("__parse")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_clear();
    // SAFETY: between fork and exec only setrlimit runs, an async-signal-safe system call.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            use nix::sys::resource::{Resource, setrlimit};
            setrlimit(Resource::RLIMIT_AS, CHILD_MEMORY, CHILD_MEMORY)?;
            setrlimit(Resource::RLIMIT_CPU, CHILD_CPU_SECS, CHILD_CPU_SECS)?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
            Ok(())
        });
    }
    let mut child = command.spawn().ok()?;
    let mut stdin = child.stdin.take()?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        // The answer is at most a few MiB per thousand files; more is a broken child.
        let _ = (&mut stdout).take(256 << 20).read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(CHILD_CPU_SECS + 5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let _ = writer.join();
    let out = reader.join().ok()?;
    if !status.success() {
        return None;
    }
    let parsed: Vec<Parsed> = serde_json::from_slice(&out).ok()?;
    (parsed.len() == sources.len()).then_some(parsed)
}

/// The child's side: sources as JSON on stdin, what they say as JSON on stdout.
pub fn serve_child() -> std::io::Result<()> {
    let mut input = Vec::new();
    std::io::stdin().take(1 << 30).read_to_end(&mut input)?;
    let sources: Vec<Source> = serde_json::from_slice(&input).map_err(std::io::Error::other)?;
    let parsed = parse_batch(&sources);
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &parsed).map_err(std::io::Error::other)?;
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str, text: &str) -> Parsed {
        parse_one(&Source {
            path: path.into(),
            lang: Lang::of(path).unwrap(),
            text: text.into(),
        })
    }

    fn modules(parsed: &Parsed) -> Vec<&str> {
        parsed.imports.iter().map(|i| i.module.as_str()).collect()
    }

    #[test]
    fn python_imports_definitions_and_uses() {
        let parsed = parse(
            "shop/pay.py",
            "import os, shop.gateway as gw\nfrom . import models\nfrom ..util import retry, log as l\n\
             class Refund:\n    pass\ndef refund(intent):\n    return gw.send(PaymentIntent(intent))\n",
        );
        assert_eq!(modules(&parsed), ["os", "shop.gateway", ".", "..util"]);
        assert_eq!(parsed.imports[2].names, ["models"]);
        assert_eq!(parsed.imports[3].names, ["retry", "log"]);
        assert_eq!(parsed.defines, ["Refund", "refund"]);
        assert!(parsed.uses.contains(&"PaymentIntent".to_string()));
    }

    #[test]
    fn javascript_and_typescript_imports_and_definitions() {
        let parsed = parse(
            "src/api/routes.ts",
            "import { pay } from './pay';\nimport type { Intent } from '@/types';\nexport * from \"../lib/index\";\n\
             const db = require('./db');\ninterface PaymentIntent { id: string }\nexport function route(i: PaymentIntent) { return pay(i); }\n",
        );
        assert_eq!(
            modules(&parsed),
            ["./pay", "@/types", "../lib/index", "./db"]
        );
        assert!(parsed.defines.contains(&"PaymentIntent".to_string()));
        assert!(parsed.defines.contains(&"route".to_string()));
        assert!(parsed.defines.contains(&"db".to_string()));
        let js = parse(
            "a.jsx",
            "import x from './x.js'; function App() { return x; }",
        );
        assert_eq!(modules(&js), ["./x.js"]);
        assert_eq!(js.defines, ["App"]);
    }

    #[test]
    fn rust_mods_uses_and_items() {
        let parsed = parse(
            "src/lib.rs",
            "mod pay;\npub mod api { pub fn f() {} }\nuse crate::pay::{Refund, refund};\nuse std::io;\n\
             pub struct Intent;\nfn go(r: Refund) {}\n",
        );
        assert_eq!(
            modules(&parsed),
            ["pay", "crate::pay::{Refund,refund}", "std::io"]
        );
        assert!(parsed.imports[0].is_mod);
        assert!(parsed.defines.contains(&"Intent".to_string()));
        assert!(parsed.defines.contains(&"go".to_string()));
        assert!(parsed.uses.contains(&"Refund".to_string()));
    }

    #[test]
    fn go_imports_and_declarations() {
        let parsed = parse(
            "pay/pay.go",
            "package pay\nimport (\n\t\"fmt\"\n\tg \"example.com/shop/gateway\"\n)\ntype Intent struct{}\n\
             func Refund(i Intent) { fmt.Println(g.Send(i)) }\nfunc (i Intent) Amount() int { return 0 }\n",
        );
        assert_eq!(modules(&parsed), ["fmt", "example.com/shop/gateway"]);
        assert_eq!(parsed.defines, ["Amount", "Intent", "Refund"]);
    }

    #[test]
    fn a_child_that_fails_in_any_way_gives_no_answer() {
        let sources = [Source {
            path: "a.py".into(),
            lang: Lang::Python,
            text: "import os\n".into(),
        }];
        // Missing, failing, and answering nonsense (`echo` prints its arguments).
        for exe in ["/nonexistent/kiln", "/bin/false", "/bin/echo"] {
            assert_eq!(in_child(Path::new(exe), &sources), None, "{exe}");
        }
    }

    #[test]
    fn deeply_nested_and_garbled_input_gives_an_answer() {
        let deep = format!("x = {}1{}\n", "[".repeat(50_000), "]".repeat(50_000));
        let parsed = parse("deep.py", &deep);
        assert!(parsed.imports.is_empty());
        let garbled = parse("bad.ts", "import { from '; \u{fffd}\u{0} function (");
        assert!(garbled.defines.len() <= MAX_NAMES);
    }
}
