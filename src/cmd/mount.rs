use super::Context;
use crate::printer::shown;
use crate::store::Result;
use std::path::PathBuf;

/// Mount an active snapshot or a view at TARGET, and remember it.
///
/// TARGET is created if missing. Overlay mounts use the kernel's new mount
/// API, so chains up to the kernel's 500 layers mount. The mount is recorded
/// in the store: `ls`, `info` and `tree` show it, `unmount` undoes it.
///
/// Examples:
///   strata mount build /mnt/build
///   strata mount look /mnt/look && ls /mnt/look
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// An active snapshot or a view
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::mountable))]
    pub key: String,
    /// Where to mount it
    pub target: PathBuf,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let at = match ctx.store()?.mount(&args.key, &args.target) {
        Ok(at) => at,
        Err(e) => {
            let target = args.target.to_string_lossy();
            return Err(super::mounts::target_first(
                ctx, e, "mount", &args.key, &target,
            ));
        }
    };
    // A target's control characters escaped, as errors and `ls` show them.
    ctx.printer.note(&format!(
        "mounted `{}` at {}",
        args.key,
        shown(&at.to_string_lossy())
    ));
    Ok(())
}
