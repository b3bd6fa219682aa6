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

/// One snapshot of the forest, in pre-order (see `Printer::forest`): its
/// serde form is its own fields, the printer adds `children`.
#[derive(Debug, serde::Serialize)]
pub struct Node<'a> {
    /// How deep it is (0 for a root).
    #[serde(skip)]
    pub depth: usize,
    /// Whether it is its parent's last child (or the last root).
    #[serde(skip)]
    pub last: bool,
    pub name: &'a str,
    pub kind: SnapshotKind,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub mounted_at: &'a [String],
}

impl crate::printer::Nested for Node<'_> {
    fn depth(&self) -> usize {
        self.depth
    }
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
    ctx.printer.forest(&forest, |forest| draw(forest))
}

/// The trees under `roots`, in pre-order, without recursion (chains can be
/// deep). A cycle of parents (a damaged index) met on the way, or keeping
/// any snapshot out of a forest meant to hold them `all`, is an `internal`
/// error.
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
    let node = |at: usize, depth: usize, last: bool| Node {
        depth,
        last,
        name: &list[at].name,
        kind: list[at].kind,
        mounted_at: &list[at].mounted_at,
    };
    let mut out = Vec::new();
    let mut seen = vec![false; list.len()];
    let roots: Vec<usize> = roots.iter().filter_map(|r| position(r)).collect();
    for (i, &at) in roots.iter().enumerate() {
        seen[at] = true;
        out.push(node(at, 0, i + 1 == roots.len()));
        let mut stack = vec![children[at].iter()];
        while let Some(todo) = stack.last_mut() {
            let Some(&child) = todo.next() else {
                stack.pop();
                continue;
            };
            if seen[child] {
                return Err(cycle(list));
            }
            seen[child] = true;
            let last = todo.len() == 0;
            out.push(node(child, stack.len(), last));
            stack.push(children[child].iter());
        }
    }
    if all && out.len() < list.len() {
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

/// How many levels the table indents: deeper, the drawing starts again at
/// the left after `[+N] `, N the levels left out (a multiple of this), so
/// a line holds at most this many levels' branches. Indenting a chain of
/// 69,000 layers all the way took 9.3 GB (audit), as `tree`(1) would.
pub const DRAWN_LEVELS: usize = 32;

/// Draws the forest (in pre-order) with box-drawing branches.
fn draw(forest: &[Node]) -> String {
    let mut out = String::new();
    // For each level of the node drawn last and its ancestors (roots
    // excepted), whether it was its parent's last child.
    let mut lasts: Vec<bool> = Vec::new();
    for node in forest {
        lasts.truncate(node.depth.saturating_sub(1));
        if node.depth > 0 {
            // Levels `1..depth` are drawn, from the band's first.
            let hidden = (node.depth - 1) / DRAWN_LEVELS * DRAWN_LEVELS;
            if hidden > 0 {
                out.push_str("[+");
                out.push_str(&hidden.to_string());
                out.push_str("] ");
            }
            for &last in &lasts[hidden..] {
                out.push_str(if last { "    " } else { "│   " });
            }
            out.push_str(if node.last {
                "└── "
            } else {
                "├── "
            });
            lasts.push(node.last);
        }
        label(node, &mut out);
    }
    out
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
