use super::Context;
use crate::oci::registry::Access;
use crate::oci::{self, auth::Credentials};
use crate::store::{Error, Kind, Result};

/// Log in to an OCI registry: check the credentials and store them.
///
/// The password (or token) is read from stdin; without --username, the user
/// name is asked on the terminal (`Username: `), as `docker login` asks it.
/// The credentials are checked against the registry (`GET /v2/`, with a
/// token exchange when the registry asks for one), then stored, base64 as
/// Docker and Podman do, in $REGISTRY_AUTH_FILE, else
/// $XDG_RUNTIME_DIR/containers/auth.json, else
/// ~/.config/containers/auth.json (mode 0600; other registries' entries are
/// kept). push and pull read that file, then Docker's ~/.docker/config.json.
///
/// Examples:
///   echo "$TOKEN" | strata login ghcr.io --username me --password-stdin
///   strata login 127.0.0.1:5000 -u ci --password-stdin --plain-http < pass.txt
///   strata login ghcr.io --password-stdin < token.txt   # asks `Username: `
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The registry: HOST[:PORT]
    pub registry: String,
    /// The user name (asked on the terminal when not given)
    #[arg(long, short = 'u', value_name = "USER")]
    pub username: Option<String>,
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
    // A missing option, as a missing --username is with no terminal to ask
    // on: a usage error.
    if !args.password_stdin {
        return Err(Error::new(
            Kind::Usage,
            "strata login needs --password-stdin: it reads the password (or token) from stdin only",
        )
        .with_hint("add --password-stdin: echo \"$PASSWORD\" | strata login REGISTRY -u USER --password-stdin"));
    }
    oci::registry::check_registry_host(&args.registry)?;
    // Refused before the user name is asked.
    oci::registry::timeout_setting()?;
    let username = match args.username {
        Some(name) => name,
        None => ask_username(ctx)?,
    };
    // Before the password is read: nothing is asked or written for a name
    // that could not be stored.
    oci::auth::check_username(&username)?;
    let creds = Credentials {
        username: username.clone(),
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
        username,
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

/// The user name, asked on the terminal as `docker login` asks it; a usage
/// error where there is no terminal (a script must give --username).
fn ask_username(ctx: &Context) -> Result<String> {
    let Some(name) = ctx.printer.ask("Username: ")? else {
        return Err(Error::new(
            Kind::Usage,
            "strata login needs --username: there is no terminal to ask the user name on",
        )
        .with_hint("echo \"$PASSWORD\" | strata login REGISTRY --username USER --password-stdin"));
    };
    Ok(name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use crate::oci::registry::is_registry_host;

    #[test]
    fn registry_hosts() {
        for ok in [
            "registry.example.com",
            "127.0.0.1:5000",
            "localhost",
            "my-reg1:443",
            "h:1",
            "h:65535",
            "255.255.255.255",
            "1.2.3.example",
        ] {
            assert!(is_registry_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "../x",
            "h#frag",
            "user@h",
            "h?q",
            " h",
            "h:",
            "h:port",
            ".h",
            "h..i",
            "[::1]:5000",
            "h:0",
            "h:65536",
            "h:99999",
            "h:+80",
            "-x",
            "a-.b",
            "my-reg_1:443",
            "999.1.1.1",
            "1.2.3",
        ] {
            assert!(!is_registry_host(bad), "{bad:?}");
        }
    }
}
