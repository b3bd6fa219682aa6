use super::Context;
use crate::store::{Error, Result};

/// Remove snapshots.
///
/// A snapshot with children (committed snapshots, actives or views on it)
/// is not removed unless --recursive, which removes the whole subtree, leaves
/// first. A mounted snapshot is not removed unless --force, which unmounts
/// it first. With several keys each is attempted; the exit code is that of
/// the first failure. A key already removed by this command (`rm -r base
/// top`, top built on base) is not an error.
///
/// Examples:
///   strata rm build
///   strata rm -r base        # base and everything built on it
///   strata rm -f look        # unmount, then remove
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Snapshots to remove
    #[arg(required = true, value_name = "KEY")]
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::keys))]
    pub keys: Vec<String>,
    /// Remove the snapshots built on these too
    #[arg(short, long)]
    pub recursive: bool,
    /// Unmount mounted snapshots first
    #[arg(short, long)]
    pub force: bool,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    // It holds a lock, an open directory, on each of a batch of snapshots.
    crate::store::raise_open_file_limit();
    let mut first: Option<Error> = None;
    // `rm -r base top` with top built on base: top went with base.
    let mut removed_here = std::collections::HashSet::new();
    for key in &args.keys {
        if removed_here.contains(key) {
            continue;
        }
        ctx.store()?;
        let store = ctx.store.as_mut().expect("opened");
        let mut removed = Vec::new();
        let result = ctx.printer.spin(&format!("removing `{key}`"), || {
            store.remove_into(key, args.recursive, args.force, &mut removed)
        });
        // What went is said, also before a failure.
        for name in removed {
            ctx.printer.note(&format!("removed `{name}`"));
            removed_here.insert(name);
        }
        // Each failure is reported as it happens; the first one decides
        // the exit code.
        if let Err(e) = result {
            ctx.printer.error(&e);
            first.get_or_insert(e.reported());
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
