use super::Context;
use crate::store::index;
use crate::store::repair::parent_cycles;
use crate::store::{Error, Info, Result, SnapshotKind};
use std::collections::HashMap;

/// Show the parent/child forest of snapshots, or the subtree under KEY.
///
/// Examples:
///   strata tree
///   strata tree base --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Show only this snapshot and what is built on it
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::keys))]
    pub key: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Node<'a> {
    pub name: &'a str,
    pub kind: SnapshotKind,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub mounted_at: &'a [String],
    pub children: Vec<Node<'a>>,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let list = ctx.store()?.list()?;
    let roots = match &args.key {
        Some(key) => {
            if !list.iter().any(|i| &i.name == key) {
                // Same error (with its hint) as every other command.
                ctx.store()?.stat(key)?;
                return Err(Error::not_found(format!("snapshot `{key}` does not exist")));
            }
            vec![key.clone()]
        }
        None => list
            .iter()
            .filter(|i| i.parent.is_none())
            .map(|i| i.name.clone())
            .collect(),
    };
    let forest = build(&list, &roots, args.key.is_none())?;
    ctx.printer.data(&forest, |forest| {
        let mut out = String::new();
        for node in forest {
            draw(node, &mut out);
        }
        out
    })
}

/// Builds the trees under `roots` without recursion (chains can be deep).
/// A cycle of parents (a damaged index) met on the way, or keeping any
/// snapshot out of a forest meant to hold them `all`, is an `internal` error.
fn build<'a>(list: &'a [Info], roots: &[String], all: bool) -> Result<Vec<Node<'a>>> {
    // `list` is in byte order of the names (`Store::list`): a name is found
    // by binary search and a snapshot is its position, so 10,000 names are
    // not hashed three times over.
    let position = |name: &str| list.binary_search_by(|i| i.name.as_str().cmp(name)).ok();
    // The children of each, in name order. One whose parent is not listed
    // (a damaged index) is in no tree, and `all` then fails below.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); list.len()];
    for (at, info) in list.iter().enumerate() {
        if let Some(parent) = info.parent.as_deref().and_then(position) {
            children[parent].push(at);
        }
    }
    let node = |at: usize| Node {
        name: &list[at].name,
        kind: list[at].kind,
        mounted_at: &list[at].mounted_at,
        children: Vec::new(),
    };
    let mut out = Vec::new();
    let mut seen = vec![false; list.len()];
    let mut reached = 0;
    for root in roots {
        let Some(at) = position(root) else {
            continue;
        };
        seen[at] = true;
        reached += 1;
        // Post-order: children are finished before their parent.
        let mut stack = vec![(node(at), children[at].iter())];
        loop {
            let next = stack.last_mut().and_then(|(_, todo)| todo.next()).copied();
            match next {
                Some(child) if seen[child] => return Err(cycle(list)),
                Some(child) => {
                    seen[child] = true;
                    reached += 1;
                    stack.push((node(child), children[child].iter()));
                }
                None => {
                    let (done, _) = stack.pop().expect("non-empty");
                    match stack.last_mut() {
                        Some((parent, _)) => parent.children.push(done),
                        None => {
                            out.push(done);
                            break;
                        }
                    }
                }
            }
        }
    }
    if all && reached < list.len() {
        return Err(cycle(list));
    }
    Ok(out)
}

/// The error for the cycle of parents in `list`.
fn cycle(list: &[Info]) -> Error {
    let parents: HashMap<&str, &str> = list
        .iter()
        .filter_map(|i| Some((i.name.as_str(), i.parent.as_deref()?)))
        .collect();
    let names = parent_cycles(&parents)
        .into_iter()
        .next()
        .unwrap_or_default();
    index::cycle_named(names.into_iter().map(str::to_string).collect())
}

/// Draws one node with box-drawing branches; iterative over deep chains.
fn draw(root: &Node, out: &mut String) {
    label(root, out);
    // The prefix of the lines being drawn, and for each level the length
    // it had before that level's part was added.
    let mut prefix = String::new();
    let mut stack = vec![(root.children.iter(), 0)];
    while let Some((todo, start)) = stack.last_mut() {
        let Some(child) = todo.next() else {
            prefix.truncate(*start);
            stack.pop();
            continue;
        };
        let last = todo.len() == 0;
        out.push_str(&prefix);
        out.push_str(if last { "└── " } else { "├── " });
        label(child, out);
        if !child.children.is_empty() {
            let start = prefix.len();
            prefix.push_str(if last { "    " } else { "│   " });
            stack.push((child.children.iter(), start));
        }
    }
}

/// One node's line: its name, its kind unless committed, where it is
/// mounted.
fn label(node: &Node, out: &mut String) {
    out.push_str(node.name);
    if node.kind != SnapshotKind::Committed {
        out.push_str(" (");
        out.push_str(node.kind.as_str());
        out.push(')');
    }
    if !node.mounted_at.is_empty() {
        let targets = node.mounted_at.join(", ");
        out.push_str(" [mounted at ");
        out.push_str(&crate::printer::shown(&targets));
        out.push(']');
    }
    out.push('\n');
}
