use super::Context;
use crate::printer::shell_quote;
use crate::store::{Mount, Result};
use std::path::Path;

/// Print the mounts of an active snapshot or a view.
///
/// As a table: shell commands to paste into a root shell. As JSON or YAML:
/// mount objects (type, source, options) with absolute paths, the shape of
/// containerd's and the OCI runtime spec's mounts.
///
/// Examples:
///   strata mounts build /mnt/build | sudo sh
///   strata mounts build --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// An active snapshot or a view
    pub key: String,
    /// The mount point to print in the commands
    #[arg(default_value = "TARGET")]
    pub target: String,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let list = ctx.store()?.mounts(&args.key)?;
    print(ctx, &list, &args.target)
}

/// Prints `mounts` as JSON/YAML objects or as pasteable commands.
pub fn print(ctx: &Context, mounts: &[Mount], target: &str) -> Result<()> {
    ctx.printer.data(mounts, |list| {
        list.iter()
            .map(|m| command(m, target) + "\n")
            .collect::<String>()
    })
}

/// One `mount -t TYPE SOURCE -o OPTIONS TARGET` line.
pub fn command(m: &Mount, target: &str) -> String {
    format!(
        "mount -t {} {} -o {} {}",
        shell_quote(&m.kind),
        shell_quote(&m.source),
        shell_quote(&m.options.join(",")),
        shell_quote(target)
    )
}

/// After prepare/view: mount at `target` if asked, else print the mounts.
pub fn finish_create(
    ctx: &mut Context,
    key: &str,
    list: Vec<Mount>,
    target: Option<&Path>,
) -> Result<()> {
    match target {
        None => print(ctx, &list, "TARGET"),
        Some(target) => {
            let at = ctx.store()?.mount(key, target)?;
            ctx.printer
                .note(&format!("mounted `{key}` at {}", at.display()));
            Ok(())
        }
    }
}
