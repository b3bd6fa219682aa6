use super::Context;
use crate::printer::{Format, shell_quote, shown};
use crate::store::{Error, Kind, Mount, Plan, Result, SnapshotKind, Store};
use std::path::Path;

/// Print the mounts of an active snapshot or a view.
///
/// As a table: shell commands to paste into a root shell, which mount at
/// TARGET; it must exist (`strata mount` makes it). As JSON or YAML:
/// mount objects (type, source, options) with absolute paths, the shape of
/// containerd's and the OCI runtime spec's mounts.
///
/// Examples:
///   sudo mkdir -p /mnt/build && strata mounts build /mnt/build | sudo sh
///   strata mounts build --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// An active snapshot or a view
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::mountable))]
    pub key: String,
    /// The mount point to print in the commands (it must exist when they run)
    #[arg(default_value = "TARGET")]
    pub target: String,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let done = if ctx.printer.format() != Format::Table {
        // Scripts get absolute paths, always.
        match ctx.store()?.mounts(&args.key) {
            Ok(list) => return print(ctx, &list, &args.target),
            Err(e) => Err(e),
        }
    } else {
        print_for_shell(ctx, &args.key, &args.target, None)
    };
    done.map_err(|e| target_first(ctx, e, "mounts", &args.key, &args.target))
}

/// `mounts` or `mount` of `key` refused because there is no such snapshot:
/// the hint when `target` is the snapshot (ctr's order is `mounts TARGET
/// KEY`).
pub fn target_first(ctx: &mut Context, e: Error, command: &str, key: &str, target: &str) -> Error {
    let Ok(store) = ctx.store() else {
        return e;
    };
    let mountable = [SnapshotKind::Active, SnapshotKind::View];
    super::swapped(
        store,
        e,
        Kind::NotFound,
        |s| super::is_kind(s, target, &mountable),
        &[command, target, key],
        match command {
            "mounts" => {
                "the snapshot comes first, then the mount point (ctr's order is the other way round)"
            }
            _ => "the snapshot comes first, then the mount point",
        },
    )
}

/// Prints the mounts of `key` as commands a shell can run (shortened for
/// deep chains), or the `strata mount` line where none fits in a page.
/// `known` is the plan of `key`'s mounts when the caller has it already.
fn print_for_shell(ctx: &mut Context, key: &str, target: &str, known: Option<Plan>) -> Result<()> {
    let target = absolute_target(target);
    let store = ctx.store()?;
    let shell = match known {
        Some(plan) => store.shell_mounts_of(key, plan),
        None => store.shell_mounts(key),
    };
    match shell {
        Ok(shell) => {
            let lines: String = shell
                .mounts
                .iter()
                .map(|m| match &shell.dir {
                    // A subshell, so the user's shell stays where it was.
                    Some(dir) => format!(
                        "(cd {} && {})\n",
                        shell_quote(&dir.display().to_string()),
                        command(m, &target)
                    ),
                    None => command(m, &target) + "\n",
                })
                .collect();
            ctx.printer.stdout(&lines)
        }
        Err(e) if e.kind() == Kind::Unsupported => {
            ctx.printer.warn(e.message());
            let root = ctx.store()?.root().display().to_string();
            ctx.printer.stdout(&format!(
                "strata --root {} mount {} {}\n",
                shell_quote(&root),
                shell_quote(key),
                shell_quote(&target)
            ))
        }
        Err(e) => Err(e),
    }
}

/// The target as an absolute path (printed commands may change directory);
/// the placeholder stays as it is.
fn absolute_target(target: &str) -> String {
    if target == "TARGET" {
        return target.to_string();
    }
    std::path::absolute(target)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| target.to_string())
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

/// A prepare or view refused for a chain deeper than overlayfs stacks,
/// on an image alias (an empty layer `pull` and `import` put on an image's
/// top layer): says to build on that top layer, which has the same files
/// and one layer less; a 500-layer image's alias is the 501st.
pub fn past_alias(store: &mut Store, parent: Option<&str>, e: Error) -> Error {
    let Some(parent) = parent.filter(|_| e.kind() == Kind::Unsupported) else {
        return e;
    };
    match store.stat(parent) {
        Ok(info) if info.labels.contains_key(crate::oci::LABEL_REF) => match info.parent {
            // Not when the top layer is too deep as well (an image of over
            // 500 layers).
            Some(top) if store.can_stack_on(&top).unwrap_or(false) => e.with_hint(format!(
                "`{parent}` is an image alias, an empty layer on the image's top layer: \
                 use `{top}` as the parent instead (the same files, one layer less)"
            )),
            _ => e,
        },
        _ => e,
    }
}

/// After prepare/view: mount at `target` if asked, else print the mounts.
pub fn finish_create(
    ctx: &mut Context,
    key: &str,
    plan: Plan,
    target: Option<&Path>,
) -> Result<()> {
    match target {
        None if ctx.printer.format() == Format::Table => {
            print_for_shell(ctx, key, "TARGET", Some(plan))
        }
        None => {
            let mounts = ctx.store()?.mounts_of(&plan);
            print(ctx, &mounts, "TARGET")
        }
        Some(target) => {
            let store = ctx.store()?;
            // A create whose mount fails leaves nothing behind.
            let at = match store.mount(key, target) {
                Ok(at) => at,
                Err(e) => {
                    let _ = store.remove(key, false, true);
                    return Err(e);
                }
            };
            ctx.printer.note(&format!(
                "mounted `{key}` at {}",
                shown(&at.to_string_lossy())
            ));
            Ok(())
        }
    }
}
