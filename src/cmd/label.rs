use super::{Context, info};
use crate::store::{Labels, Result, key};

/// Set or remove labels of a snapshot: `K=V` sets, `K=` removes.
///
/// Prints the snapshot's details afterwards.
///
/// Examples:
///   strata label base stage=build owner=ci
///   strata label base stage=
///   strata label base -- -x=1             # a label key starting with `-`
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The snapshot
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::keys))]
    pub key: String,
    /// Labels to set (K=V) or remove (K=)
    #[arg(required = true, value_name = "K=V")]
    pub labels: Vec<String>,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let mut changes = Labels::new();
    for text in &args.labels {
        let (k, v) = key::parse_label(text)?;
        changes.insert(k, v);
    }
    let info = ctx.store()?.update_labels(&args.key, &changes)?;
    ctx.printer.data(&info, info::render)
}
