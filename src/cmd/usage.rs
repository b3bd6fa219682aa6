use super::Context;
use crate::printer::{Unit, human_size};
use crate::store::{Result, Usage};

/// Show disk usage (allocated bytes and inodes) of snapshots, or of all.
///
/// A committed snapshot's usage was recorded when it was committed; an
/// active snapshot's is measured now (its own layer, hardlinks counted
/// once); a view uses nothing of its own.
///
/// Examples:
///   strata usage
///   strata usage build base --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Snapshots to measure (default: all)
    #[arg(value_name = "KEY")]
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::keys))]
    pub keys: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub inodes: u64,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let bar = ctx.printer.progress("measuring", Unit::Items, None);
    let store = ctx.store()?;
    let measured: Vec<(String, Usage)> = if args.keys.is_empty() {
        store.usage_all(&|| bar.inc(1))?
    } else {
        let mut out = Vec::new();
        for key in &args.keys {
            out.push((key.clone(), store.usage(key)?));
            bar.inc(1);
        }
        out
    };
    bar.finish_and_clear();
    let entries: Vec<Entry> = measured
        .into_iter()
        .map(|(name, u)| Entry {
            name,
            size: u.size,
            inodes: u.inodes,
        })
        .collect();
    let printer = &ctx.printer;
    printer.list(&entries, |list| {
        let rows = list
            .iter()
            .map(|e| vec![e.name.clone(), human_size(e.size), e.inodes.to_string()])
            .collect();
        printer.table(&["KEY", "SIZE", "INODES"], rows)
    })
}
