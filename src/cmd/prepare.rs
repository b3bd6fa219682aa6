use super::{Context, mounts};
use crate::store::Result;
use std::path::PathBuf;

/// Create an active (writable) snapshot KEY on committed PARENT.
///
/// Prints the mounts that expose it, as `mounts` does (commands for a root
/// shell, at a TARGET that must exist), or mounts it at TARGET with
/// --mount (made if missing).
/// Without PARENT the snapshot starts empty.
///
/// Examples:
///   strata prepare build                      # empty, print its mounts
///   strata prepare app base --mount /mnt/app  # on `base`, mounted
///   strata prepare --label stage=1 -- -x base # keys may start with `-`
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The new snapshot's key
    pub key: String,
    /// A committed snapshot to build on
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::committed))]
    pub parent: Option<String>,
    /// Set a label (repeatable)
    #[arg(long = "label", value_name = "K=V", allow_hyphen_values = true)]
    pub labels: Vec<String>,
    /// Mount the new snapshot at TARGET instead of printing its mounts
    #[arg(long, value_name = "TARGET")]
    pub mount: Option<PathBuf>,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let labels = super::labels_of_options(&args.labels)?;
    ctx.store()?;
    let store = ctx.store.as_mut().expect("opened");
    let list = ctx
        .printer
        .spin(&format!("preparing `{}`", args.key), || {
            store.prepare(&args.key, args.parent.as_deref(), &labels)
        })
        .map_err(|e| mounts::past_alias(store, args.parent.as_deref(), e))
        .map_err(|e| match args.parent.as_deref() {
            Some(parent) => super::key_first(store, e, "prepare", &args.key, parent),
            None => e,
        })?;
    mounts::finish_create(ctx, &args.key, list, args.mount.as_deref())
}
