use super::Context;
use crate::oci::{
    self,
    registry::{Access, Registry},
};
use crate::printer::human_size;
use crate::store::layer::Compression;
use crate::store::{Error, Result};

/// Publish the chain ending at a committed snapshot to an OCI registry.
///
/// Every snapshot of KEY's chain becomes one layer (its diff against its
/// parent, gzip unless --compression zstd), with an image config listing
/// their diff_ids and an OCI manifest tagged REF. Blobs the registry has
/// are not uploaded again, and a layer's digests are computed once and
/// remembered, so pushing the same chain again only checks. Aliases made by
/// `pull` (empty snapshots labelled strata.image.ref) are not layers.
/// Credentials: --username with --password-stdin, else `strata login`'s,
/// Podman's or Docker's auth files, else anonymous. Prints the manifest
/// digest.
///
/// Examples:
///   strata push app registry.example.com/team/app:v1
///   strata push app 127.0.0.1:5000/app:v1 --plain-http -o json
///   echo "$TOKEN" | strata push app ghcr.io/me/app:v1 --username me --password-stdin
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The committed snapshot at the top of the image
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(super::completions::committed))]
    pub key: String,
    /// Where to push: HOST[:PORT]/REPOSITORY[:TAG]
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Layer compression
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: LayerCompression,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Options to reach a registry (push, pull, login).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Speak HTTP, not HTTPS (a local registry without TLS)
    #[arg(long)]
    pub plain_http: bool,
    /// Log in as this user (the password comes from --password-stdin)
    #[arg(long, short = 'u', value_name = "USER", requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the password (or token) from stdin
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

impl RegistryArgs {
    pub fn access(&self) -> Result<Access> {
        if let Some(name) = &self.username {
            oci::auth::check_username(name)?;
        }
        let password = if self.password_stdin {
            Some(oci::auth::password_from_stdin()?)
        } else {
            None
        };
        Ok(Access {
            plain_http: self.plain_http,
            username: self.username.clone(),
            password,
        })
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayerCompression {
    Gzip,
    Zstd,
}

impl From<LayerCompression> for Compression {
    fn from(c: LayerCompression) -> Compression {
        match c {
            LayerCompression::Gzip => Compression::Gzip,
            LayerCompression::Zstd => Compression::Zstd,
        }
    }
}

/// The table form of a push or export.
pub fn pushed_text(p: &oci::Pushed, verb: &str) -> String {
    let mut out = String::new();
    for l in &p.layers {
        // One column for the verb, whatever its length (audit: export's
        // `wrote` and `exists` lines did not line up).
        out.push_str(&format!(
            "{:<7} {}  {}  {}\n",
            if l.uploaded {
                verb
            } else if l.mounted {
                "mounted"
            } else {
                "exists"
            },
            &l.digest,
            human_size(l.size),
            l.name
        ));
    }
    out.push_str(&format!("{}  {}\n", p.digest, p.reference));
    out
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    let access = args.registry.access()?;
    let reference = oci::registry::parse_reference(&args.reference)?;
    // A manifest's digest is known only once strata has written it: a REF
    // naming one would upload every blob, then fail at the manifest.
    if reference.digest().is_some() {
        return Err(Error::invalid(format!(
            "cannot push to {}: a push names a tag, not a digest",
            args.reference
        ))
        .with_hint("write HOST[:PORT]/REPOSITORY[:TAG]; the pushed manifest's digest is printed"));
    }
    // Fail on a missing or uncommitted KEY before touching the network.
    ctx.store()?.chain_of(&args.key)?;
    let mut registry = Registry::open(
        &args.reference,
        &access,
        oci_client::RegistryOperation::Push,
    )?;
    let printer = ctx.printer.clone();
    let store = ctx.store()?;
    let pushed = oci::push(
        store,
        &args.key,
        &mut registry,
        args.compression.into(),
        &printer,
    )?;
    ctx.printer.data(&pushed, |p| pushed_text(p, "pushed"))
}
