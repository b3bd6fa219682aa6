use super::Context;
use crate::printer::{human_size, shown};
use crate::store::{Error, Result};

/// Delete leftovers of interrupted work.
///
/// Removes directories with no index row, half-made and half-removed
/// snapshots, work directories of committed snapshots and records of mounts
/// that are gone, and reports what it freed. Safe while other strata
/// processes work: a snapshot still being built is never touched.
///
/// Examples:
///   strata prune --dry-run
///   strata prune --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only list what would be deleted
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    // It holds a lock, an open directory, on each of a batch of snapshots.
    crate::store::raise_open_file_limit();
    let report = ctx.existing_store()?.prune(args.dry_run)?;
    ctx.printer.data(&report, |r| {
        let verb = if r.dry_run { "would free" } else { "freed" };
        let mut out: String = r
            .removed
            .iter()
            .map(|l| {
                format!(
                    "{:<13}{:>10}  {}\n",
                    l.kind,
                    human_size(l.size),
                    shown(&l.path)
                )
            })
            .collect();
        out.push_str(&format!(
            "{verb} {} {} ({})\n",
            r.count,
            if r.count == 1 {
                "leftover"
            } else {
                "leftovers"
            },
            human_size(r.size)
        ));
        for f in &r.failed {
            out.push_str(&format!("not deleted {}: {}\n", shown(&f.path), f.error));
        }
        out
    })?;
    // The rest was deleted; what was not makes the command fail.
    match report.failed.as_slice() {
        [] => Ok(()),
        [one] => Err(
            Error::internal(format!("cannot delete {}: {}", one.path, one.error)).with_hint(
                "delete it by hand, or see what holds it (a mount, an immutable or append-only file: `lsattr`, a file system that refuses)",
            ),
        ),
        many => Err(Error::internal(format!(
            "cannot delete {} leftovers (listed above); the others were deleted",
            many.len()
        ))
        .with_hint(
            "delete them by hand, or see what holds them (a mount, an immutable or append-only file: `lsattr`, a file system that refuses)",
        )),
    }
}
