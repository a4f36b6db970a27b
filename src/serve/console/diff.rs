//! An attempt's diff as the console shows it: file by file, line by line with both line
//! numbers, and the policy findings and reviewer comments under the line they name (or above
//! the file, when their line is not in the diff).

use std::collections::BTreeMap;

use maud::{Markup, html};
use serde_json::Value;

use super::job::text;
use crate::model::{Diff, FileDiff, LineKind};

/// The most diff lines one attempt's section shows.
const MAX_LINES: usize = 5000;

/// A finding or a comment about a place in the change.
pub(super) struct Note {
    /// `policy secrets (deny)`, `reviewer`.
    from: String,
    message: String,
}

/// The notes of one attempt, by path and line (`None`: about the file as a whole).
#[derive(Default)]
pub(super) struct Notes {
    at: BTreeMap<(String, Option<u32>), Vec<Note>>,
}

impl Notes {
    /// The findings of `gate` (gate.json) and the comments of `review` (the reviewer's verdict
    /// in the report).
    pub(super) fn of(gate: Option<&Value>, review: Option<&Value>) -> Notes {
        let mut notes = Notes::default();
        let none = Vec::new();
        for p in gate.and_then(|g| g["policies"].as_array()).unwrap_or(&none) {
            for f in p["findings"].as_array().unwrap_or(&none) {
                let from = format!(
                    "policy {} · {} · {}",
                    text(&p["name"]),
                    text(&f["rule"]),
                    text(&f["severity"])
                );
                notes.add(f, from, text(&f["message"]));
            }
        }
        for c in review
            .and_then(|r| r["comments"].as_array())
            .unwrap_or(&none)
        {
            notes.add(c, "reviewer".into(), text(&c["message"]));
        }
        notes
    }

    fn add(&mut self, at: &Value, from: String, message: String) {
        let Some(path) = at["path"].as_str() else {
            return;
        };
        let line = at["line"].as_u64().and_then(|l| u32::try_from(l).ok());
        self.at
            .entry((path.to_string(), line))
            .or_default()
            .push(Note { from, message });
    }

    fn get(&self, path: &str, line: Option<u32>) -> &[Note] {
        self.at
            .get(&(path.to_string(), line))
            .map_or(&[], Vec::as_slice)
    }

    /// The notes on `file` whose line the diff does not show (or that name no line).
    fn elsewhere<'a>(&'a self, file: &FileDiff) -> Vec<(Option<u32>, &'a Note)> {
        let shown = |line: u32| {
            file.hunks
                .iter()
                .flat_map(|h| &h.lines)
                .any(|l| l.new_line == Some(line))
        };
        self.at
            .iter()
            .filter(|((path, line), _)| path == &file.path && !line.is_some_and(shown))
            .flat_map(|((_, line), notes)| notes.iter().map(move |n| (*line, n)))
            .collect()
    }
}

pub(super) fn attempt_diff(diff: &Diff, notes: &Notes) -> Markup {
    let mut budget = MAX_LINES;
    html! {
        p {
            (diff.stats.files_changed) " files changed, +" (diff.stats.additions)
            " −" (diff.stats.deletions)
        }
        @for file in &diff.files {
            (file_diff(file, notes, &mut budget))
        }
        @if budget == 0 { p.muted { "The rest of the diff is in the job's diff.patch." } }
    }
}

fn file_diff(file: &FileDiff, notes: &Notes, budget: &mut usize) -> Markup {
    let status = format!("{:?}", file.status).to_lowercase();
    html! {
        section.file data-path=(file.path) {
            h3 {
                code { (file.path) }
                @if let Some(old) = &file.old_path { " (from " code { (old) } ")" }
                " · " (status) " · +" (file.additions) " −" (file.deletions)
            }
            @for (line, note) in notes.elsewhere(file) {
                p.note {
                    @if let Some(line) = line { "Line " (line) ": " }
                    strong { (note.from) } ": " (note.message)
                }
            }
            @if file.binary {
                p.muted { "A binary file." }
            } @else if let Some(why) = &file.omitted {
                p.muted { "Not shown: " (why) }
            } @else {
                table.diff {
                    @for hunk in &file.hunks {
                        tr.hunk { td.n {} td.n {} td.t { (hunk.header.trim_end()) } }
                        @for line in &hunk.lines {
                            @if *budget > 0 {
                                ({ *budget -= 1; line_row(file, line, notes) })
                            }
                        }
                    }
                }
            }
        }
    }
}

fn line_row(file: &FileDiff, line: &crate::model::Line, notes: &Notes) -> Markup {
    let (class, sign) = match line.kind {
        LineKind::Added => ("add", "+"),
        LineKind::Removed => ("del", "-"),
        LineKind::Context => ("ctx", " "),
    };
    let here = match line.kind {
        LineKind::Removed => &[][..],
        _ => notes.get(&file.path, line.new_line),
    };
    let number = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
    html! {
        tr class=(class) data-new=[line.new_line] {
            td.n { (number(line.old_line)) }
            td.n { (number(line.new_line)) }
            td.t { (sign) (line.content.trim_end_matches('\n')) }
        }
        @for note in here {
            tr.note data-path=(file.path) data-line=[line.new_line] {
                td.n {} td.n {}
                td { strong { (note.from) } ": " (note.message) }
            }
        }
    }
}
