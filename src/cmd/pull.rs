use super::Context;
use super::push::RegistryArgs;
use crate::oci::{self, registry::Registry};
use crate::store::Result;

/// Fetch an image from an OCI registry into the store.
///
/// Picks linux and the host's architecture from an image index, downloads
/// only the layers the store lacks, verifies every digest, and applies the
/// layers in order. Each layer becomes a committed snapshot named by its OCI
/// chain ID (sha256:…), shared by every image that has it. NAME (default:
/// REF as given) is then an empty committed snapshot on the top layer,
/// labelled strata.image.ref and strata.image.digest (the digest REF
/// names: an index's for a multi-platform image): prepare from it. A
/// failed or interrupted pull commits no partial layer; pull again to
/// resume. An existing NAME made by an earlier pull is moved to the new
/// image unless something is built on it.
///
/// Examples:
///   strata pull registry.example.com/team/app:v1
///   strata pull 127.0.0.1:5000/app:v1 app --plain-http
///   strata prepare work app --mount /mnt/work
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// What to pull: HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The snapshot to name the image by [default: REF]
    pub name: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// The table form of a pull or import.
pub fn pulled_text(p: &oci::Pulled) -> String {
    let mut out = String::new();
    for l in &p.layers {
        out.push_str(&format!(
            "{:<7} {}\n",
            if l.downloaded { "fetched" } else { "exists" },
            l.chain_id
        ));
    }
    out.push_str(&format!("{}  {}\n", p.digest, p.name));
    out
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let access = args.registry.access()?;
    let name = args.name.clone().unwrap_or_else(|| args.reference.clone());
    oci::validate_image_name(&name)?;
    let mut registry = Registry::open(
        &args.reference,
        &access,
        oci_client::RegistryOperation::Pull,
    )?;
    let printer = ctx.printer.clone();
    let pulled = oci::pull(
        ctx.store()?,
        &mut registry,
        &name,
        &args.reference,
        &printer,
    )?;
    ctx.printer.data(&pulled, pulled_text)
}
