use super::Context;
use super::pull::pulled_text;
use crate::oci::{
    self,
    layout::{Layout, split_dir_tag},
};
use crate::store::Result;

/// Read an image from an OCI image layout directory into the store.
///
/// The same as `pull`, from a layout that skopeo, umoci, oras or
/// `strata export` wrote: TAG picks the image by its
/// `org.opencontainers.image.ref.name` annotation (without TAG the layout
/// must hold exactly one). Layers become committed snapshots named by
/// their chain IDs; NAME (default: DIR[:TAG] as given) is an empty
/// committed snapshot on top, to prepare from.
///
/// Examples:
///   strata import ./app-oci app
///   strata import ./images:v1 app-v1
///   skopeo copy docker://docker.io/library/alpine:3 oci:alpine:3 && strata import alpine:3 alpine
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The layout directory, and optionally the image's tag
    #[arg(value_name = "DIR[:TAG]")]
    pub source: String,
    /// The snapshot to name the image by [default: DIR[:TAG]]
    pub name: Option<String>,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let name = args.name.clone().unwrap_or_else(|| args.source.clone());
    oci::validate_image_name(&name)?;
    let (dir, tag) = split_dir_tag(&args.source);
    let mut layout = Layout::open(&dir, tag)?;
    let printer = ctx.printer.clone();
    let pulled = oci::pull(ctx.store()?, &mut layout, &name, &args.source, &printer)?;
    ctx.printer.data(&pulled, pulled_text)
}
