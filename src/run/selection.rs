//! `[context] mode = "auto"`: the files the generator starts from, chosen by kiln at the base
//! commit before attempt 1 (as `kiln context` chooses them), from the job's seeds and prompt.

use std::sync::Arc;

use super::{Runner, blocking};
use crate::context::{Analysis, Parser, Request, Selection};
use crate::error::Error;
use crate::workspace::Workspace;

impl Runner<'_> {
    /// The selection at the base, and every path of the base tree with its size.
    pub(super) async fn select_context(
        &self,
        ws: &Arc<Workspace>,
    ) -> Result<(Selection, Vec<(String, u64)>), Error> {
        let job = self.job;
        let (ws, seeds, prompt, budget) = (
            ws.clone(),
            job.context.seeds.clone(),
            job.prompt.clone(),
            job.context.budget,
        );
        // Sources are parsed by this binary run as `kiln __parse`, in a child under limits.
        let parser = std::env::current_exe().map_err(Error::io("cannot find the kiln binary"))?;
        blocking(move || {
            let base = ws.base_commit().to_string();
            let cache = crate::config::cache_dir().map(|d| d.join("context"));
            let parser = Parser {
                exe: &parser,
                cache: cache.as_deref(),
            };
            let analysis = Analysis::of_repository(&ws.repo_path(), Some(&base), Some(&parser))?;
            // Seeds are the globs' files the index holds (a link is never one).
            let mut seeds = ws.context_files(&seeds)?;
            seeds.retain(|s| analysis.index.files.iter().any(|f| f.path == *s));
            let request = Request {
                prompt: &prompt,
                seeds: &seeds,
                budget,
            };
            let mut selection = crate::context::select(&analysis, &request)?;
            let mut notes = analysis.index.notes.clone();
            notes.append(&mut selection.notes);
            selection.notes = notes;
            let paths = analysis
                .index
                .files
                .iter()
                .map(|f| (f.path.clone(), f.bytes))
                .collect();
            Ok((selection, paths))
        })
        .await
    }
}
