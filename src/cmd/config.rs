use super::Context;
use crate::config::{CONFIG_VAR, Setting, Source};
use crate::store::Result;

/// Print the effective configuration and where each value came from.
///
/// Sources, strongest first: flag, environment ($STRATA_ROOT), the YAML
/// config file (--config FILE, else $STRATA_CONFIG, else
/// /etc/strata/config.yaml as root or ~/.config/strata/config.yaml),
/// default. The driver of a store that exists is the one it recorded when
/// it was created (source `store`); the file's and the default are for a
/// new store. The file's keys:
///
///   root: /var/lib/strata          # the store: absolute, or ~/… under $HOME
///   driver: overlay                # driver for new stores: overlay | native
///   output: table                  # default output: table | json | yaml
///   overlay:
///     mount_options: [xino=off]    # extra options for overlay mounts
///
/// Examples:
///   strata config
///   strata --config ./ci.yaml config --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

pub fn run(_args: Args, ctx: &mut Context) -> Result<()> {
    let mut settings = ctx.settings.clone();
    // An existing store's driver is its own, whatever the file says; a
    // store that does not exist is not created to ask.
    // A store that cannot be read (a damaged index) does not stop this
    // diagnostic: it says so, and shows what the file and defaults say
    // (review: `config` failed there).
    let recorded = match settings.root.value.join("index.db").exists() {
        true => ctx.store().and_then(|store| store.driver()),
        false => Ok(None),
    };
    let recorded = recorded.unwrap_or_else(|e| {
        ctx.printer.warn(&format!(
            "cannot read the driver of the store {}: {}",
            settings.root.value.display(),
            e.message()
        ));
        None
    });
    if let Some(driver) = recorded {
        let recorded = Setting {
            value: Some(driver.into()),
            source: Source::Store,
        };
        let configured = std::mem::replace(&mut settings.driver, recorded);
        if let Some(other) = configured.value.filter(|d| *d != driver.into()) {
            ctx.printer.note(&format!(
                "the config file's driver ({}) is for new stores; {} uses {}",
                other.as_str(),
                settings.root.value.display(),
                driver.as_str()
            ));
        }
    }
    let printer = &ctx.printer;
    printer.data(&settings, |s| {
        let rows = s
            .rows()
            .into_iter()
            .map(|(k, v, src)| vec![k.to_string(), v, src.as_str().to_string()])
            .collect();
        let looked = &s.config_lookup;
        let path = looked.path.display();
        let mut out = match (looked.found, looked.source) {
            (true, Source::Environment) => format!("config file: {path} (${CONFIG_VAR})\n"),
            (true, _) => format!("config file: {path}\n"),
            (false, Source::Environment) => {
                format!("config file: none (${CONFIG_VAR} names {path}, which does not exist)\n")
            }
            // `config::load`'s stand-in for a user without a home.
            (false, _) if !looked.path.is_absolute() => {
                "config file: none (no home directory to look in)\n".to_string()
            }
            (false, _) => format!("config file: none ({path} does not exist)\n"),
        };
        out.push_str(&printer.table(&["SETTING", "VALUE", "SOURCE"], rows));
        out
    })
}
