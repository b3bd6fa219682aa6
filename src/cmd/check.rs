use super::Context;
use crate::printer::shown;
use crate::store::repair::Problem;
use crate::store::{Error, Result};

/// Verify that the index and the disk agree.
///
/// Reports every mismatch, one line each: rows whose directory is missing,
/// directories without rows, broken parent links, parents that form a
/// cycle, directories whose shape does not fit their kind, short links in
/// l/ that are not the ones strata makes, mount records that disagree with
/// the mount table, leftovers of interrupted work. Work
/// that other strata processes are still doing is not reported (or
/// touched), so check may run alongside them. Exits 0 only when the store
/// is consistent. --repair fixes what is safe to fix and says what it could
/// not.
///
/// Examples:
///   strata check
///   strata check --repair --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Fix what is safe to fix
    #[arg(long)]
    pub repair: bool,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    // It holds a lock, an open directory, on each of a batch of snapshots.
    crate::store::raise_open_file_limit();
    let report = ctx.existing_store()?.check(args.repair)?;
    ctx.printer.data(&report, |r| {
        let mut out: String = r
            .problems
            .iter()
            .map(|p| {
                format!(
                    "{}{}: {}\n",
                    if p.repaired { "repaired " } else { "" },
                    p.kind,
                    // A path holding a newline would split the line (and
                    // could fake a `consistent` one), an escape sequence
                    // drive the terminal (audit).
                    shown(&p.message)
                )
            })
            .collect();
        if r.problems.is_empty() {
            out.push_str("consistent\n");
        }
        out
    })?;
    if report.consistent {
        return Ok(());
    }
    let left = report.problems.iter().filter(|p| !p.repaired).count();
    let err = Error::internal(format!(
        "the store is not consistent: {left} {} left",
        if left == 1 { "problem" } else { "problems" }
    ));
    let damaged = report
        .problems
        .iter()
        .any(|p| p.kind == "index-corrupt" && !p.repaired);
    Err(if damaged {
        // --repair does nothing with a damaged index.
        err.with_hint("correct what is named with sqlite3, or restore index.db from a backup (a damaged file: recover it with `sqlite3 index.db .recover`), then check again")
    } else if args.repair {
        // What is left says what it needs (audit: a leftover that could not
        // be deleted got the hint about missing data).
        let left = || report.problems.iter().filter(|p| !p.repaired);
        let leftover = |p: &&Problem| matches!(p.kind, "leftover" | "orphan-directory");
        let mut err = err;
        if left().any(|p| leftover(&p)) {
            err = err.with_hint(
                "a leftover that could not be deleted is named with the reason: remove that \
                 (an immutable file: chattr -i; a mount inside: umount), then run `strata prune`",
            );
        }
        if left().any(|p| !leftover(&p)) {
            err = err.with_hint(
                "the rest need a person: restore the missing data from a backup, or remove the \
                 snapshots concerned",
            );
        }
        err
    } else {
        err.with_hint(
            "`strata check --repair` fixes what is safe to fix and says what it cannot; \
             `strata prune` deletes leftovers",
        )
    })
}
