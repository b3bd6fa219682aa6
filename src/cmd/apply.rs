use super::Context;
use crate::printer::{Unit, human_size};
use crate::store::exchange::ApplyChecks;
use crate::store::interrupt::Stoppable;
use crate::store::{Error, Kind, Result};
use std::io::Read;
use std::path::PathBuf;

/// Unpack an OCI image layer onto PARENT and commit it as NAME.
///
/// The layer is a tarball, plain, gzip or zstd (detected from its first
/// bytes), read from FILE or from stdin. `.wh.` whiteouts and opaque
/// markers become overlay whiteouts on the overlay driver and deletions on
/// the native one. Atomic: NAME exists only once everything is unpacked.
/// Unsafe entries (`..`, paths through symlinks, links out of the layer,
/// devices without privilege) and corrupt archives are refused.
/// The second argument is always PARENT, so a root layer comes from stdin.
///
/// Examples:
///   strata apply base < base.tar
///   strata apply app base app.tar.gz
///   curl -s https://…/layer.tar.zst | strata apply app base
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The committed snapshot to make
    pub name: String,
    /// The committed snapshot to unpack onto
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::committed))]
    pub parent: Option<String>,
    /// The layer tarball (default: stdin; `-` is stdin)
    pub file: Option<PathBuf>,
    /// Set a label on NAME (repeatable)
    #[arg(long = "label", value_name = "K=V", allow_hyphen_values = true)]
    pub labels: Vec<String>,
    /// Refuse layers that expand beyond this size (e.g. 512M, 20G)
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_size)]
    pub max_size: u64,
}

#[derive(serde::Serialize)]
struct Applied {
    name: String,
    parent: Option<String>,
    #[serde(flatten)]
    digests: crate::store::layer::Digests,
}

/// `512`, `64K`, `512M`, `20G`, `1T` (powers of 1024).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let mult = match t[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                other => return Err(format!("unknown size unit `{other}`")),
            };
            (&t[..i], mult)
        }
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{text}` is not a size"))
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let labels = super::labels_of_options(&args.labels)?;
    // Send: the layer is read on a second thread. Unbuffered: that thread
    // reads 1 MiB at a time (a compressed layer through a buffer of the
    // decoder's own), so a buffer here would only add a copy.
    // A pipe or a FIFO may stall: its reads look at a caught Ctrl-C.
    let stdin = || Box::new(Stoppable(std::io::stdin()));
    let (mut input, total): (Box<dyn Read + Send>, Option<u64>) = match &args.file {
        None => (stdin(), None),
        Some(p) if p.as_os_str() == "-" => (stdin(), None),
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    Error::not_found(format!("the layer {} does not exist", p.display()))
                }
                _ => Error::io(format!("cannot open the layer {}", p.display()), e),
            })?;
            let meta = f
                .metadata()
                .map_err(|e| Error::io(format!("cannot read the layer {}", p.display()), e))?;
            // A FIFO or a device is read like a pipe; a directory is no layer.
            if meta.is_dir() {
                return Err(Error::invalid(format!(
                    "the layer {} is a directory, not a tarball",
                    p.display()
                )));
            }
            let len = meta.is_file().then_some(meta.len());
            (Box::new(Stoppable(f)), len)
        }
    };
    if args.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let err = Error::invalid("no layer to apply: stdin is a terminal")
            .with_hint("give a FILE, or pipe a layer in: strata apply NAME [PARENT] < layer.tar");
        return Err(parent_is_a_file(err, &args));
    }
    let bar = ctx
        .printer
        .progress(&format!("applying `{}`", args.name), Unit::Bytes, total);
    let store = ctx.store()?;
    let digests = store.apply(
        &args.name,
        args.parent.as_deref(),
        &labels,
        &mut input,
        ApplyChecks {
            max_size: args.max_size,
            expect: None,
        },
        &mut |n| bar.set_position(n),
    );
    bar.finish_and_clear();
    let digests = digests.map_err(|e| match e.kind() {
        Kind::NotFound => parent_is_a_file(e, &args),
        _ => e,
    })?;
    let applied = Applied {
        name: args.name,
        parent: args.parent,
        digests,
    };
    ctx.printer.data(&applied, |a| {
        format!(
            "applied `{}` ({} {}, {})\ndigest   {}\ndiff_id  {}\n",
            a.name,
            human_size(a.digests.size),
            match a.digests.compression {
                "none" => "uncompressed",
                compressed => compressed,
            },
            match &a.parent {
                Some(p) => format!("on `{p}`"),
                None => "a root layer".into(),
            },
            a.digests.digest,
            a.digests.diff_id
        )
    })
}

/// `err` with a hint when PARENT names a file and no FILE was given: the
/// trap the SPEC points out (`strata apply base layer.tar` takes
/// `layer.tar` as the parent; audit: it said only that no such parent
/// exists).
fn parent_is_a_file(err: Error, args: &Args) -> Error {
    match &args.parent {
        Some(parent) if args.file.is_none() && std::path::Path::new(parent).is_file() => err
            .with_hint(format!(
                "`{parent}` is a file, but the second argument is always PARENT: apply a root layer from stdin (strata apply {name} < {parent}), or onto a parent (strata apply {name} PARENT {parent})",
                name = args.name
            )),
        _ => err,
    }
}
