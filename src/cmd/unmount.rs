use super::Context;
use crate::printer::shown;
use crate::store::Result;

/// Undo a mount made by strata, given its target or a snapshot key.
///
/// With a key, every mount of that snapshot is undone. A busy mount is an
/// error and stays mounted, unless --lazy detaches it.
///
/// Examples:
///   strata unmount /mnt/build
///   strata umount build
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A mount target or a snapshot key
    #[arg(value_name = "TARGET|KEY")]
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::mounted))]
    pub what: String,
    /// Detach a busy mount now and clean it up when it is no longer used
    #[arg(long)]
    pub lazy: bool,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let targets = ctx.store()?.unmount(&args.what, args.lazy)?;
    for t in targets {
        // A target's control characters escaped, as errors and `ls` show them.
        ctx.printer
            .note(&format!("unmounted {}", shown(&t.to_string_lossy())));
    }
    Ok(())
}
