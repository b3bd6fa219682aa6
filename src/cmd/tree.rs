use super::Context;
use crate::store::index;
use crate::store::repair::parent_cycles;
use crate::store::{Error, Info, Result, SnapshotKind};
use std::collections::{HashMap, HashSet};

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
pub struct Node {
    pub name: String,
    pub kind: SnapshotKind,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounted_at: Vec<String>,
    pub children: Vec<Node>,
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
fn build(list: &[Info], roots: &[String], all: bool) -> Result<Vec<Node>> {
    let mut children: HashMap<&str, Vec<&Info>> = HashMap::new();
    let by_name: HashMap<&str, &Info> = list.iter().map(|i| (i.name.as_str(), i)).collect();
    for info in list {
        if let Some(p) = &info.parent {
            children.entry(p.as_str()).or_default().push(info);
        }
    }
    // Post-order: children are finished before their parent.
    fn node(info: &Info) -> Node {
        Node {
            name: info.name.clone(),
            kind: info.kind,
            mounted_at: info.mounted_at.clone(),
            children: Vec::new(),
        }
    }
    let mut out = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for root in roots {
        let Some(info) = by_name.get(root.as_str()) else {
            continue;
        };
        seen.insert(info.name.as_str());
        let mut stack: Vec<(Node, Vec<&Info>)> = vec![(node(info), pending(&children, info))];
        loop {
            let next = stack.last_mut().and_then(|(_, todo)| todo.pop());
            match next {
                Some(child) if !seen.insert(child.name.as_str()) => return Err(cycle(list)),
                Some(child) => stack.push((node(child), pending(&children, child))),
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
    if all && seen.len() < list.len() {
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

/// Children of `info` in reverse name order (popped in name order).
fn pending<'a>(children: &HashMap<&str, Vec<&'a Info>>, info: &Info) -> Vec<&'a Info> {
    let mut v = children
        .get(info.name.as_str())
        .cloned()
        .unwrap_or_default();
    v.reverse();
    v
}

/// Draws one node with box-drawing branches; iterative over deep chains.
fn draw(root: &Node, out: &mut String) {
    // (node, prefix for its children, its own branch text)
    let mut stack: Vec<(&Node, String, String)> = vec![(root, String::new(), String::new())];
    while let Some((node, prefix, branch)) = stack.pop() {
        out.push_str(&branch);
        out.push_str(&label(node));
        out.push('\n');
        let n = node.children.len();
        for (i, child) in node.children.iter().enumerate().rev() {
            let last = i + 1 == n;
            let branch = format!("{prefix}{}", if last { "└── " } else { "├── " });
            let child_prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
            stack.push((child, child_prefix, branch));
        }
    }
}

fn label(node: &Node) -> String {
    let mut s = node.name.clone();
    if node.kind != SnapshotKind::Committed {
        s.push_str(&format!(" ({})", node.kind));
    }
    if !node.mounted_at.is_empty() {
        let targets = node.mounted_at.join(", ");
        s.push_str(&format!(
            " [mounted at {}]",
            crate::printer::shown(&targets)
        ));
    }
    s
}
