use super::Context;
use crate::store::{Driver, Result, Store};

/// Create the store explicitly, choosing its driver.
///
/// Idempotent: running it again on a store with the same (or no) driver
/// asked changes nothing; asking for another driver than the store's is an
/// error. Without --driver, the config file's `driver` is used for a new
/// store; without either, overlay is chosen when a test overlay mount
/// succeeds, else native.
///
/// Says which store and driver as a note on stderr (-q silences it); with
/// --json or -o yaml, prints {root, driver, created} on stdout.
///
/// Examples:
///   strata --root /tmp/store init
///   strata init --driver native
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The driver for the new store
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DriverArg {
    Overlay,
    Native,
}

#[derive(serde::Serialize)]
struct Initialized {
    root: String,
    driver: Driver,
    created: bool,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let asked = args.driver.map(|d| match d {
        DriverArg::Overlay => Driver::Overlay,
        DriverArg::Native => Driver::Native,
    });
    refuse_overlay_before_making(asked.or(ctx.options.driver), &ctx.settings.root.value)?;
    let store = ctx.store()?;
    let (driver, created) = store.init(asked)?;
    let out = Initialized {
        root: store.root().display().to_string(),
        driver,
        created,
    };
    let note = if out.created {
        format!(
            "initialized store {} with the {} driver",
            out.root,
            out.driver.as_str()
        )
    } else {
        format!("store {} uses the {} driver", out.root, out.driver.as_str())
    };
    ctx.printer.data_or_note(&out, &note)
}

/// A new store for which overlay is asked is not made where overlay cannot
/// be mounted: the store's own test would come too late to take it back.
fn refuse_overlay_before_making(wanted: Option<Driver>, root: &std::path::Path) -> Result<()> {
    let new =
        std::fs::symlink_metadata(root).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    if wanted == Some(Driver::Overlay) && new && Store::overlay_works_for_new(root) == Some(false) {
        return Err(Store::overlay_refused(root));
    }
    Ok(())
}
