//! The images kiln uses, built from nothing: the recipes in images/ are embedded here, and
//! `kiln image build` runs each one's rootfs script in a temporary context and builds the image
//! through the Docker API. Nothing is ever pulled.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use bollard::query_parameters::{BuildImageOptions, ListImagesOptions};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::sandbox::{Sandbox, SandboxError};

pub const BUSYBOX: &str = crate::sandbox::HOLDER_IMAGE;
pub const DEBIAN: &str = "kiln/debian:bookworm";

/// One image recipe: a Dockerfile and the script that makes its `rootfs/`.
pub struct Recipe {
    pub name: &'static str,
    pub tag: &'static str,
    pub dockerfile: &'static str,
    pub rootfs_script: &'static str,
    /// Built only when named (`kiln image build agent-aider`), never by a bare `kiln image
    /// build`: the agents' images are large and need their package registries.
    pub only_by_name: bool,
}

pub const RECIPES: &[Recipe] = &[
    Recipe {
        name: "busybox",
        tag: BUSYBOX,
        dockerfile: include_str!("../../images/busybox/Dockerfile"),
        rootfs_script: include_str!("../../images/busybox/rootfs.sh"),
        only_by_name: false,
    },
    Recipe {
        name: "debian",
        tag: DEBIAN,
        dockerfile: include_str!("../../images/debian/Dockerfile"),
        rootfs_script: include_str!("../../images/debian/rootfs.sh"),
        only_by_name: false,
    },
    Recipe {
        name: "agent-claude-code",
        tag: "kiln/agent-claude-code:latest",
        dockerfile: include_str!("../../images/agent-claude-code/Dockerfile"),
        rootfs_script: include_str!("../../images/agent-claude-code/rootfs.sh"),
        only_by_name: true,
    },
    Recipe {
        name: "agent-codex",
        tag: "kiln/agent-codex:latest",
        dockerfile: include_str!("../../images/agent-codex/Dockerfile"),
        rootfs_script: include_str!("../../images/agent-codex/rootfs.sh"),
        only_by_name: true,
    },
    Recipe {
        name: "agent-aider",
        tag: "kiln/agent-aider:latest",
        dockerfile: include_str!("../../images/agent-aider/Dockerfile"),
        rootfs_script: include_str!("../../images/agent-aider/rootfs.sh"),
        only_by_name: true,
    },
];

const LABEL_IMAGE: &str = "kiln.image";
const LABEL_RECIPE: &str = "kiln.recipe";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "no image recipe named `{0}`; kiln knows: busybox, debian, agent-claude-code, agent-codex, agent-aider"
    )]
    Unknown(String),
    #[error("the rootfs script of `{name}` failed: {message}")]
    Rootfs { name: String, message: String },
    #[error("building `{name}` failed: {message}")]
    Build { name: String, message: String },
    #[error("image `{image}` is not on this machine and kiln never pulls; {hint}")]
    Missing { image: String, hint: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl Recipe {
    pub fn find(name: &str) -> Result<&'static Recipe, ImageError> {
        RECIPES
            .iter()
            .find(|r| r.name == name || r.tag == name)
            .ok_or_else(|| ImageError::Unknown(name.into()))
    }

    /// sha256 of the recipe's files, stored as a label so a stale image shows in `kiln image list`.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.dockerfile);
        hash.update([0]);
        hash.update(self.rootfs_script);
        format!("{:x}", hash.finalize())
    }
}

/// Fails when `image` is not on this machine, saying how to build it.
pub async fn require(sandbox: &Sandbox, image: &str) -> Result<(), ImageError> {
    match sandbox.require_image(image).await {
        Err(SandboxError::ImageMissing(image)) => Err(ImageError::Missing {
            hint: build_hint(&image),
            image,
        }),
        other => Ok(other?),
    }
}

/// What to tell a user whose job names an image that is not on the machine.
pub fn build_hint(image: &str) -> String {
    let bare = image.split(':').next().unwrap_or(image);
    match RECIPES
        .iter()
        .find(|r| r.tag == image || r.tag.split(':').next() == Some(bare))
    {
        Some(r) => format!("build it with `kiln image build {}`", r.name),
        None => "build or load it on this machine first (docker build, docker load)".into(),
    }
}

/// Builds `recipe`: runs its rootfs script into a temporary context, then `docker build`s it
/// through the API. The script's progress goes to stderr.
pub async fn build(sandbox: &Sandbox, recipe: &Recipe) -> Result<(), ImageError> {
    let context = tempfile::Builder::new()
        .prefix("kiln-image-")
        .tempdir()
        .map_err(|e| rootfs_err(recipe, e))?;
    std::fs::write(context.path().join("Dockerfile"), recipe.dockerfile)
        .map_err(|e| rootfs_err(recipe, e))?;
    let script = context.path().join("rootfs.sh");
    std::fs::write(&script, recipe.rootfs_script).map_err(|e| rootfs_err(recipe, e))?;
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(context.path().join("rootfs"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(|e| rootfs_err(recipe, e))?;
    if !status.success() {
        return Err(ImageError::Rootfs {
            name: recipe.name.into(),
            message: format!("rootfs.sh exited with {status}"),
        });
    }
    let tar = {
        let dir = context.path().to_path_buf();
        tokio::task::spawn_blocking(move || context_tar(&dir))
            .await
            .map_err(|e| rootfs_err(recipe, std::io::Error::other(e)))?
            .map_err(|e| rootfs_err(recipe, e))?
    };
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(recipe.tag.into()),
        rm: true,
        forcerm: true,
        labels: Some(HashMap::from([
            (LABEL_IMAGE.to_string(), recipe.name.to_string()),
            (LABEL_RECIPE.to_string(), recipe.digest()),
        ])),
        ..Default::default()
    };
    let mut stream =
        sandbox
            .docker()
            .build_image(options, None, Some(bollard::body_full(tar.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| ImageError::Build {
            name: recipe.name.into(),
            message: e.to_string(),
        })?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(ImageError::Build {
                name: recipe.name.into(),
                message: detail,
            });
        }
    }
    Ok(())
}

fn rootfs_err(recipe: &Recipe, e: std::io::Error) -> ImageError {
    ImageError::Rootfs {
        name: recipe.name.into(),
        message: e.to_string(),
    }
}

/// The build context as tar, with symlinks kept as links (busybox's applets are links).
fn context_tar(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

/// One row of `kiln image list`.
#[derive(Debug, Serialize)]
pub struct ImageRow {
    pub name: &'static str,
    pub tag: &'static str,
    /// `current`, `stale` (built from another recipe) or `missing`.
    pub state: &'static str,
    pub id: Option<String>,
    pub size_bytes: Option<i64>,
}

pub async fn list(sandbox: &Sandbox) -> Result<Vec<ImageRow>, ImageError> {
    let filters = HashMap::from([("label".to_string(), vec![LABEL_IMAGE.to_string()])]);
    let options = ListImagesOptions {
        filters: Some(filters),
        ..Default::default()
    };
    let images = sandbox
        .docker()
        .list_images(Some(options))
        .await
        .map_err(|e| crate::sandbox::SandboxError::Docker {
            op: "list images",
            message: e.to_string(),
        })?;
    Ok(RECIPES
        .iter()
        .map(|recipe| {
            let built = images
                .iter()
                .find(|i| i.repo_tags.iter().any(|t| t == recipe.tag));
            let state = match built {
                None => "missing",
                Some(i) if i.labels.get(LABEL_RECIPE) == Some(&recipe.digest()) => "current",
                Some(_) => "stale",
            };
            ImageRow {
                name: recipe.name,
                tag: recipe.tag,
                state,
                id: built.map(|i| {
                    i.id.trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect()
                }),
                size_bytes: built.map(|i| i.size),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kiln_image_names_the_command_that_builds_it() {
        assert_eq!(
            build_hint("kiln/debian:bookworm"),
            "build it with `kiln image build debian`"
        );
        assert_eq!(
            build_hint("kiln/busybox"),
            "build it with `kiln image build busybox`"
        );
        assert!(build_hint("python:3.12").contains("docker build"));
    }

    #[test]
    fn recipe_digests_differ_and_names_resolve() {
        assert_ne!(RECIPES[0].digest(), RECIPES[1].digest());
        assert_eq!(Recipe::find("kiln/busybox:latest").unwrap().name, "busybox");
        assert!(matches!(
            Recipe::find("alpine"),
            Err(ImageError::Unknown(_))
        ));
    }
}
