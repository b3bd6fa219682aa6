use super::{Context, mounts};
use crate::store::Result;
use std::path::PathBuf;

/// Create a read-only view KEY of committed snapshot PARENT.
///
/// Prints the mounts that expose it, as `mounts` does (commands for a root
/// shell, at a TARGET that must exist), or mounts it at TARGET with
/// --mount (made if missing).
///
/// Examples:
///   strata view look base
///   strata view look base --mount /mnt/look
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The new view's key
    pub key: String,
    /// The committed snapshot to view
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::committed))]
    pub parent: String,
    /// Set a label (repeatable)
    #[arg(long = "label", value_name = "K=V", allow_hyphen_values = true)]
    pub labels: Vec<String>,
    /// Mount the view at TARGET instead of printing its mounts
    #[arg(long, value_name = "TARGET")]
    pub mount: Option<PathBuf>,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let labels = super::labels_of_options(&args.labels)?;
    let store = ctx.store()?;
    let list = store
        .view(&args.key, &args.parent, &labels)
        .map_err(|e| mounts::past_alias(store, Some(&args.parent), e))
        .map_err(|e| super::key_first(store, e, "view", &args.key, &args.parent))?;
    mounts::finish_create(ctx, &args.key, list, args.mount.as_deref())
}
