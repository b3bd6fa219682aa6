use std::borrow::Cow;

use super::Context;
use crate::printer::{human_size, shown};
use crate::store::filter::{Fields, FilterSet};
use crate::store::{Error, Info, Result, SnapshotKind};

/// List snapshots, in byte order of their keys.
///
/// Filters use containerd's grammar: fields name, kind, parent and
/// labels.KEY; operators == != ~= (regex) or none (present); a comma joins
/// selectors that must all hold; several --filter options are alternatives.
///
/// Examples:
///   strata ls
///   strata ls --kind active
///   strata ls --filter 'labels.stage==build,parent==base'
///   strata ls --filter 'name~=^app-' --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only snapshots of this kind
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// A filter expression (repeatable; any may match)
    #[arg(long = "filter", value_name = "EXPR")]
    pub filters: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    Active,
    View,
    Committed,
}

impl From<KindArg> for SnapshotKind {
    fn from(k: KindArg) -> SnapshotKind {
        match k {
            KindArg::Active => SnapshotKind::Active,
            KindArg::View => SnapshotKind::View,
            KindArg::Committed => SnapshotKind::Committed,
        }
    }
}

/// Filter fields of a snapshot.
struct InfoFields<'a>(&'a Info);

impl Fields for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let info = self.0;
        match path {
            [f] if f == "name" => Some(info.name.clone()),
            [f] if f == "kind" => Some(info.kind.as_str().to_string()),
            [f] if f == "parent" => info.parent.clone(),
            [f, k] if f == "labels" => info.labels.get(k).cloned(),
            _ => None,
        }
    }
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let filters = FilterSet::parse(&args.filters).map_err(|e| Error::invalid(e.message))?;
    let kind = args.kind.map(SnapshotKind::from);
    let list: Vec<Info> = ctx
        .store()?
        .list()?
        .into_iter()
        .filter(|i| kind.is_none_or(|k| i.kind == k))
        .filter(|i| filters.matches(&InfoFields(i)))
        .collect();
    let printer = &ctx.printer;
    printer.list(&list, |list| {
        let rows = list
            .iter()
            .map(|i| {
                // Borrowed where the text is there already: a row of
                // 10,000 is cheaper without six allocations each.
                vec![
                    Cow::Borrowed(i.name.as_str()),
                    Cow::Borrowed(i.parent.as_deref().unwrap_or_default()),
                    Cow::Borrowed(i.kind.as_str()),
                    i.usage
                        .map(|u| human_size(u.size))
                        .unwrap_or_default()
                        .into(),
                    i.created.rfc3339().into(),
                    match i.mounted_at.as_slice() {
                        [] => Cow::Borrowed(""),
                        at => shown(&at.join(", ")).into_owned().into(),
                    },
                ]
            })
            .collect();
        printer.table(
            &["KEY", "PARENT", "KIND", "SIZE", "CREATED", "MOUNTED AT"],
            rows,
        )
    })
}
