use super::Context;
use crate::oci::{self, auth::Credentials, registry::Access};
use crate::store::{Error, Result};

/// Log in to an OCI registry: check the credentials and store them.
///
/// The password (or token) is read from stdin. The credentials are checked
/// against the registry (`GET /v2/`, with a token exchange when the registry
/// asks for one), then stored, base64 as Docker and Podman do, in
/// $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json, else
/// ~/.config/containers/auth.json (mode 0600; other registries' entries are
/// kept). push and pull read that file, then Docker's ~/.docker/config.json.
///
/// Examples:
///   echo "$TOKEN" | strata login ghcr.io --username me --password-stdin
///   strata login 127.0.0.1:5000 -u ci --password-stdin --plain-http < pass.txt
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The registry: HOST[:PORT]
    pub registry: String,
    /// The user name
    #[arg(long, short = 'u', value_name = "USER")]
    pub username: String,
    /// Read the password (or token) from stdin (required)
    #[arg(long)]
    pub password_stdin: bool,
    /// Speak HTTP, not HTTPS (a local registry without TLS)
    #[arg(long)]
    pub plain_http: bool,
}

#[derive(serde::Serialize)]
struct LoggedIn {
    registry: String,
    username: String,
    auth_file: String,
    verified: bool,
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    if !args.password_stdin {
        return Err(Error::invalid("strata login reads the password from stdin only")
            .with_hint("add --password-stdin: echo \"$PASSWORD\" | strata login REGISTRY -u USER --password-stdin"));
    }
    if args.registry.is_empty() || args.registry.contains('/') {
        return Err(
            Error::invalid(format!("`{}` is not a registry host", args.registry))
                .with_hint("give HOST[:PORT], e.g. registry.example.com or 127.0.0.1:5000"),
        );
    }
    let creds = Credentials {
        username: args.username.clone(),
        password: oci::auth::password_from_stdin()?,
    };
    let access = Access {
        plain_http: args.plain_http,
        username: Some(creds.username.clone()),
        password: Some(creds.password.clone()),
    };
    let verified = oci::registry::verify_login(&args.registry, &access, &creds)?;
    if !verified {
        ctx.printer.note(&format!(
            "{} asks for no credentials; storing them anyway",
            args.registry
        ));
    }
    let file = oci::auth::login_file()?;
    oci::auth::store(&file, &args.registry, &creds)?;
    let out = LoggedIn {
        registry: args.registry,
        username: args.username,
        auth_file: file.display().to_string(),
        verified,
    };
    ctx.printer.data(&out, |o| {
        format!(
            "logged in to {} as {} (saved in {})\n",
            o.registry, o.username, o.auth_file
        )
    })
}
