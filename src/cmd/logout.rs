use super::Context;
use crate::oci;
use crate::printer::shell_quote;
use crate::store::{Error, Result};

/// Log out of an OCI registry: remove its credentials from login's file.
///
/// Removes the registry's entry from the file `strata login` writes
/// ($REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json, else
/// ~/.config/containers/auth.json), under any of the keys push and pull
/// read it by (HOST, https://HOST, Docker Hub's aliases); the file is
/// rewritten whole (mode 0600), other registries' entries kept. Not logged
/// in there is not_found (exit 3), and nothing is written. Other files
/// push and pull read (Docker's ~/.docker/config.json) are not changed:
/// they are named when they still hold credentials for the registry.
///
/// Examples:
///   strata logout ghcr.io
///   strata logout 127.0.0.1:5000
///   REGISTRY_AUTH_FILE=ci-auth.json strata logout registry.example.com
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The registry: HOST[:PORT]
    #[arg(add = clap_complete::engine::ArgValueCandidates::new(registries))]
    pub registry: String,
}

#[derive(serde::Serialize)]
struct LoggedOut {
    registry: String,
    /// The user name the removed entry held, if it held one.
    username: Option<String>,
    auth_file: String,
    /// The entries' keys removed (`HOST`, `https://HOST`, …).
    removed: Vec<String>,
    /// Other files push and pull still take credentials for the registry
    /// from.
    elsewhere: Vec<String>,
}

/// Completion candidates: the registries logged in to.
fn registries() -> Vec<clap_complete::engine::CompletionCandidate> {
    oci::auth::logged_in()
        .into_iter()
        .map(clap_complete::engine::CompletionCandidate::new)
        .collect()
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    oci::registry::check_registry_host(&args.registry)?;
    let file = oci::auth::login_file()?;
    let removed = oci::auth::remove(&file, &args.registry)?;
    let elsewhere: Vec<String> = oci::auth::holding_elsewhere(&args.registry, &file)
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let Some(removed) = removed else {
        let err = Error::not_found(format!(
            "not logged in to {} (no entry in {})",
            args.registry,
            file.display()
        ));
        return Err(match elsewhere.first() {
            None => err,
            Some(first) => err.with_hint(format!(
                "push and pull take its credentials from {}, which strata logout leaves alone \
                 unless it is named: REGISTRY_AUTH_FILE={} strata logout {}",
                elsewhere.join(" and "),
                shell_quote(first),
                args.registry
            )),
        });
    };
    let out = LoggedOut {
        registry: args.registry,
        username: removed.username,
        auth_file: file.display().to_string(),
        removed: removed.keys,
        elsewhere,
    };
    let mut note = format!(
        "removed the credentials for {} from {}",
        out.registry, out.auth_file
    );
    if !out.elsewhere.is_empty() {
        note.push_str(&format!(
            "\npush and pull still take credentials for {} from {}",
            out.registry,
            out.elsewhere.join(" and ")
        ));
    }
    ctx.printer.data_or_note(&out, &note)
}
