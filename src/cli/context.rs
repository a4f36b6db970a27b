//! `kiln context`: the files of a repository a request needs, most useful first, each with its
//! size, score and why it is there, against a byte budget.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use kiln::context::{Request, Selection};
use kiln::model::ByteSize;
use kiln::{Error, ExitCode};

#[derive(Args)]
pub struct ContextArgs {
    /// A git repository on this machine.
    #[arg(long)]
    repo: PathBuf,
    /// The branch, tag or commit whose tree is read; default HEAD.
    #[arg(long)]
    base: Option<String>,
    /// What the change is to do.
    #[arg(
        long,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    prompt: Option<String>,
    /// A file holding the prompt.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// A path of the tree known to matter; it comes first. Repeatable.
    #[arg(long = "seed", value_name = "PATH")]
    seeds: Vec<String>,
    /// The most bytes of files to select.
    #[arg(long, default_value = "64KiB")]
    budget: ByteSize,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The largest prompt file read.
const MAX_PROMPT: u64 = 1 << 20;

pub async fn exec(args: ContextArgs) -> Result<ExitCode, Error> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => kiln::model::fs::read_capped(path, MAX_PROMPT)
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?,
        (None, None) => unreachable!("clap requires --prompt or --prompt-file"),
    };
    if args.budget.bytes() == 0 {
        return Err(Error::Usage("--budget must be more than 0".into()));
    }
    let (repo, base, seeds, budget) = (args.repo, args.base, args.seeds, args.budget);
    // Sources are parsed by this binary run as `kiln __parse`, in a child under limits.
    let parser = std::env::current_exe().map_err(Error::io("cannot find the kiln binary"))?;
    let selection = tokio::task::spawn_blocking(move || -> Result<Selection, Error> {
        let cache = kiln::config::cache_dir().map(|d| d.join("context"));
        let parser = kiln::context::Parser {
            exe: &parser,
            cache: cache.as_deref(),
        };
        let analysis =
            kiln::context::Analysis::of_repository(&repo, base.as_deref(), Some(&parser))?;
        let request = Request {
            prompt: &prompt,
            seeds: &seeds,
            budget,
        };
        let mut selection = kiln::context::select(&analysis, &request)?;
        let mut notes = analysis.index.notes;
        notes.append(&mut selection.notes);
        selection.notes = notes;
        Ok(selection)
    })
    .await
    .map_err(Error::Join)??;
    match args.format {
        Format::Json => super::print_json(&selection)?,
        Format::Text => print_text(&selection),
    }
    Ok(ExitCode::Success)
}

fn print_text(selection: &Selection) {
    for file in &selection.files {
        println!(
            "{:>5.2} {:>9}  {}  ({})",
            file.score,
            ByteSize(file.bytes).to_string(),
            file.path,
            file.why.join("; ")
        );
    }
    println!(
        "{} files, {} of {} budget",
        selection.files.len(),
        ByteSize(selection.used),
        ByteSize(selection.budget)
    );
    for note in &selection.notes {
        println!("left out: {}: {}", note.path, note.reason);
    }
}
