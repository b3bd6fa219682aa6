use super::Context;
use crate::store::Result;

/// Print the effective configuration and where each value came from.
///
/// Sources, strongest first: flag, environment ($STRATA_ROOT), the YAML
/// config file (--config FILE, else /etc/strata/config.yaml as root or
/// ~/.config/strata/config.yaml), default. The file's keys:
///
///   root: /var/lib/strata          # the store
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
    let settings = ctx.settings.clone();
    let printer = &ctx.printer;
    printer.data(&settings, |s| {
        let rows = s
            .rows()
            .into_iter()
            .map(|(k, v, src)| vec![k.to_string(), v, src.as_str().to_string()])
            .collect();
        let mut out = match &s.config_file {
            Some(f) => format!("config file: {f}\n"),
            None => format!(
                "config file: none ({} does not exist)\n",
                crate::config::default_path().display()
            ),
        };
        out.push_str(&printer.table(&["SETTING", "VALUE", "SOURCE"], rows));
        out
    })
}
