use super::Context;
use crate::printer::{human_size, shown};
use crate::store::{Info, Result};

/// Show one snapshot's details.
///
/// Examples:
///   strata info base
///   strata stat base --json | jq .usage.size
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The snapshot
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::keys))]
    pub key: String,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let info = ctx.store()?.stat(&args.key)?;
    ctx.printer.data(&info, render)
}

/// `Field: value` lines, as people read them.
pub fn render(i: &Info) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<12}{v}\n"));
    line("Name:", &i.name);
    line("Kind:", i.kind.as_str());
    line("Parent:", i.parent.as_deref().unwrap_or("-"));
    line("Created:", &i.created.to_string());
    line("Updated:", &i.updated.to_string());
    if let Some(u) = i.usage {
        line(
            "Size:",
            &format!("{} ({} bytes)", human_size(u.size), u.size),
        );
        line("Inodes:", &u.inodes.to_string());
    }
    if i.labels.is_empty() {
        line("Labels:", "-");
    } else {
        let labels: Vec<String> = i
            .labels
            .iter()
            .map(|(k, v)| format!("{}={}", shown(k), shown(v)))
            .collect();
        line("Labels:", &labels.join("\n            "));
    }
    if i.mounted_at.is_empty() {
        line("Mounted at:", "-");
    } else {
        let targets: Vec<_> = i.mounted_at.iter().map(|t| shown(t)).collect();
        line("Mounted at:", &targets.join("\n            "));
    }
    out
}
