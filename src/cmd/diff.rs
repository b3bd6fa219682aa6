use super::Context;
use crate::printer::Unit;
use crate::store::interrupt::Stoppable;
use crate::store::layer::{Compression, Digests};
use crate::store::newfile::NewFile;
use crate::store::{Error, Result};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

/// Write the changes of a snapshot as an OCI image layer tarball.
///
/// KEY is an active or committed snapshot; the changes are against its
/// parent, or against committed snapshot P. The tarball goes to
/// --output-file (written unnamed, synced, then renamed into place, so a
/// failed or killed diff leaves the old file and nothing else; a device or
/// FIFO such as /dev/null is written to directly) or stdout.
/// Output is reproducible: entries sorted, owners numeric, mtimes clamped to
/// $SOURCE_DATE_EPOCH when set. The compressed digest and the uncompressed
/// digest (the OCI diff_id) are printed with the snapshot the changes are
/// against (`parent`; null for a root): on stdout with --output-file, else
/// on stderr (in the -o format; also with -q, since they are the data).
///
/// Examples:
///   strata diff app > app.tar
///   strata diff app --compression gzip --output-file app.tar.gz
///   SOURCE_DATE_EPOCH=0 strata diff app --parent base -o json --output-file l.tar
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// An active or committed snapshot
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::with_changes))]
    pub key: String,
    /// Compare against this committed snapshot instead of KEY's parent
    #[arg(long, value_name = "P", add = clap_complete::engine::ArgValueCandidates::new(super::completions::committed))]
    pub parent: Option<String>,
    /// Write the tarball here instead of stdout
    #[arg(long, value_name = "F")]
    pub output_file: Option<PathBuf>,
    /// Compression of the tarball
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

#[derive(serde::Serialize)]
struct Written {
    name: String,
    parent: Option<String>,
    output_file: Option<String>,
    #[serde(flatten)]
    digests: Digests,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let sde = crate::oci::source_date_epoch()?;
    // Against another parent the overlay driver mounts the trees it
    // compares, in a mount namespace of the process's own: entered before
    // the output file is opened, for a file opened in one namespace cannot
    // be linked into place through the other's mounts (EXDEV); and only
    // then (review: every `--parent` paid for a copy of the mount table).
    if let Some(parent) = &args.parent
        && ctx.store()?.diff_mounts(&args.key, parent)
    {
        crate::store::mount::private_namespace();
    }
    let compression = Compression::from(args.compression);
    let bar = ctx.printer.progress(
        &format!("writing the changes of `{}`", args.key),
        Unit::Bytes,
        None,
    );
    let mut progress = |n: u64| bar.set_position(n);
    let mut layer = |ctx: &mut Context, out: &mut dyn Write| {
        ctx.store()?.diff(
            &args.key,
            args.parent.as_deref(),
            out,
            compression,
            sde,
            &mut progress,
        )
    };
    let diffed = match &args.output_file {
        Some(path) if is_special(path) => {
            // A device or FIFO (`/dev/null`, a named pipe) is written to,
            // never replaced: a rename would put a regular file in its place
            // (it did: `--output-file /dev/null` as root left /dev/null a
            // plain file, which every later reader of /dev/null then read).
            let cannot = |e| Error::io(format!("cannot write {}", path.display()), e);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(cannot)?;
            // A FIFO may stall: its writes look at a caught Ctrl-C.
            let mut out = std::io::BufWriter::with_capacity(1 << 20, Stoppable(file));
            let diffed = layer(ctx, &mut out)?;
            out.flush().map_err(cannot)?;
            diffed
        }
        Some(path) => {
            ctx.store()?.refuse_inside(path, "the layer")?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            refuse_unwritable(path, dir)?;
            let cannot = |e| Error::io(format!("cannot write {}", path.display()), e);
            // Unnamed until written and synced (a killed diff leaves no
            // temporary); mode 0666 less the umask, as File::create gives.
            let tmp = NewFile::create_in(dir, 0o666).map_err(cannot)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
            let diffed = layer(ctx, &mut out)?;
            out.flush().map_err(cannot)?;
            drop(out);
            tmp.as_file().sync_all().map_err(cannot)?;
            crate::store::crash::point("diff:written");
            tmp.persist(path).map_err(cannot)?;
            diffed
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(
                    Error::invalid("refusing to write a layer tarball to a terminal").with_hint(
                        "use --output-file F, or redirect stdout: strata diff KEY > layer.tar",
                    ),
                );
            }
            let mut out = std::io::BufWriter::with_capacity(1 << 20, Stoppable(stdout.lock()));
            let written = layer(ctx, &mut out).and_then(|d| {
                out.flush()
                    .map_err(|e| Error::io("cannot write to standard output", e))?;
                Ok(d)
            });
            written.map_err(cut_off)?
        }
    };
    bar.finish_and_clear();
    let written = Written {
        name: args.key,
        parent: diffed.against,
        output_file: args.output_file.map(|p| p.display().to_string()),
        digests: diffed.digests,
    };
    // Digests go to stderr when stdout carries the tarball.
    if written.output_file.is_none() {
        return ctx.printer.data_on_stderr(&written, |w| {
            format!(
                "digest   {}\ndiff_id  {}\n",
                w.digests.digest, w.digests.diff_id
            )
        });
    }
    ctx.printer.data(&written, |w| {
        format!(
            "wrote {}\ndigest   {}\ndiff_id  {}\n",
            w.output_file.as_deref().unwrap_or("-"),
            w.digests.digest,
            w.digests.diff_id
        )
    })
}

/// A closed stdout ends `ls | head` quietly and successfully (see
/// `main`), but here stdout is the layer: what the reader got is cut off,
/// and exit 0 would say it is whole (audit). Hence an error without the
/// broken pipe in its chain.
fn cut_off(e: Error) -> Error {
    match super::is_broken_pipe(&e) {
        true => Error::internal(
            "the layer written to standard output was cut off: its reader closed the pipe",
        ),
        false => e,
    }
}

/// Whether `path` (followed) exists and is neither a regular file nor a
/// directory: a device, FIFO or socket.
fn is_special(path: &std::path::Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// Refuses, before any work, an --output-file that names a directory
/// (`invalid`, as `apply` of a directory and `export` onto a file are) or
/// one in a directory that does not exist (`not_found`, as `apply` of a
/// missing file is). Audit: both were `internal`, with the kernel's words.
fn refuse_unwritable(path: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    if path.is_dir() {
        return Err(
            Error::invalid(format!("the output file {} is a directory", path.display()))
                .with_hint("--output-file names the layer's file: add a file name"),
        );
    }
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::not_found(format!(
            "cannot write {}: the directory {} does not exist",
            path.display(),
            dir.display()
        ))),
        Ok(m) if !m.is_dir() => Err(Error::invalid(format!(
            "cannot write {}: {} is not a directory",
            path.display(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}
