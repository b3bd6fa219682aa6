use super::Context;
use super::push::{LayerCompression, pushed_text};
use crate::oci::{self, layout::Layout};
use crate::store::Result;
use std::path::PathBuf;

/// Write the chain ending at a committed snapshot as an OCI image layout.
///
/// The same image `push` makes (one layer per snapshot, an image config, an
/// OCI manifest), written to DIR as an OCI image layout: `oci-layout`,
/// `index.json` and `blobs/sha256/…`. DIR is created if missing; an
/// existing layout keeps its other images, and the image is tagged TAG
/// (the `org.opencontainers.image.ref.name` annotation). skopeo, umoci and
/// oras read it (`oci:DIR:TAG`).
///
/// Examples:
///   strata export app ./app-oci
///   strata export app ./images --tag v1
///   skopeo copy oci:./images:v1 docker://registry.example.com/app:v1
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The committed snapshot at the top of the image
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::committed))]
    pub key: String,
    /// The layout directory
    pub dir: PathBuf,
    /// The image's tag in the layout
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Layer compression
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: LayerCompression,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    ctx.store()?.chain_of(&args.key)?;
    ctx.store()?.refuse_inside(&args.dir, "the OCI layout")?;
    // A directory this export creates goes again if the export fails, so
    // a failure leaves no half-made layout; an existing one keeps what it
    // had (blobs already written stay, unreferenced, as with skopeo).
    let fresh = std::fs::symlink_metadata(&args.dir).is_err();
    let mut layout = Layout::create(&args.dir, &args.tag)?;
    let printer = ctx.printer.clone();
    let pushed = oci::push(
        ctx.store()?,
        &args.key,
        &mut layout,
        args.compression.into(),
        &printer,
    );
    if pushed.is_err() && fresh {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
    ctx.printer.data(&pushed?, |p| pushed_text(p, "wrote"))
}
