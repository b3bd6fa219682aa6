use super::Context;
use crate::store::{Kind, Result, SnapshotKind};

/// Turn active snapshot KEY into committed snapshot NAME.
///
/// KEY stops existing; its content becomes NAME, immutable, usable as a
/// parent. Its size and inode count are recorded. A mounted KEY is unmounted
/// first. As in containerd, NAME gets only the labels given here.
///
/// Examples:
///   strata commit base build
///   strata commit --label version=2 app-v2 app-work
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The committed snapshot's name
    pub name: String,
    /// The active snapshot to commit
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::actives))]
    pub key: String,
    /// Set a label on NAME (repeatable)
    #[arg(long = "label", value_name = "K=V", allow_hyphen_values = true)]
    pub labels: Vec<String>,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let labels = super::labels_of_options(&args.labels)?;
    ctx.store()?;
    let store = ctx.store.as_mut().expect("opened");
    ctx.printer
        .spin(&format!("committing `{}`", args.key), || {
            store.commit(&args.name, &args.key, &labels)
        })
        .map_err(|e| {
            super::swapped(
                store,
                e,
                Kind::NotFound,
                |s| super::is_kind(s, &args.name, &[SnapshotKind::Active]),
                &["commit", &args.key, &args.name],
                "the new name comes first, then the active snapshot (as in ctr)",
            )
        })
}
