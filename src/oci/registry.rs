//! OCI registries through `oci-client`, driven from a current-thread tokio
//! runtime made only for the command that needs it. Every request is
//! tried up to [`TRIES`] times (0.5 s then 1 s apart) on connection errors
//! (an answer cut off too), timeouts, 429 and 5xx answers; untrusted TLS
//! certificates are not retried. Blobs another repository of the registry
//! has are mounted (`mount_blob`) rather than uploaded. Manifests and
//! blobs are fetched by strata itself, so that what it reads is bounded
//! (oci-client reads a manifest, and an error's body, whole).
//!
//! Errors: a registry that cannot be reached or answers with a server error
//! is `internal` (with the cause); missing images are `not_found`; refused
//! credentials or access (401/403, a failed token exchange) are `invalid`
//! with a hint to `strata login`; a blob whose content does not match its
//! digest is `invalid`. Text the registry chose is quoted clipped (see
//! [`clipped`]), and never again whole as the error's cause.

use super::auth::{self, Credentials};
use super::{Source, Target, clipped};
use crate::store::{Error, Result};
use bytes::Bytes;
use indicatif::ProgressBar;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// HTTP instead of HTTPS.
    pub plain_http: bool,
    /// Credentials given on the command line (else the auth files).
    pub username: Option<String>,
    pub password: Option<String>,
}

const ACCEPTED: &[&str] = &[
    super::MT_MANIFEST,
    super::MT_INDEX,
    super::MT_DOCKER_MANIFEST,
    super::MT_DOCKER_LIST,
];

/// One repository on one registry, ready to pull from or push to.
pub struct Registry {
    rt: tokio::runtime::Runtime,
    client: Client,
    monolithic: Option<Client>,
    plain_http: bool,
    reference: Reference,
    given: String,
    auth: RegistryAuth,
    /// The bearer token oci-client got for this repository, if the
    /// registry wants one: strata's own manifest and blob requests carry
    /// it.
    token: Option<String>,
    /// The client of strata's own requests (`/v2/`, manifests, blob
    /// downloads), made at the first one and kept: each client loads the
    /// trusted certificates.
    http: std::cell::OnceCell<reqwest::Client>,
}

/// How long a registry may keep strata waiting for a reply: 300 s per read
/// for pulls and pushes (a blob may be large; each read waits this long),
/// and 60 s in all for `login`. `STRATA_REGISTRY_TIMEOUT` (seconds) sets
/// both, for tests of a registry that never answers; [`timeout_setting`]
/// refuses a bad value before the first request.
fn timeout(default_secs: u64) -> Duration {
    Duration::from_secs(timeout_setting().ok().flatten().unwrap_or(default_secs))
}

/// `STRATA_REGISTRY_TIMEOUT`, if set: a positive whole number of seconds
/// (`invalid` otherwise: 0 would fail every request, and a value ignored
/// would wait the default instead of what was asked), at most
/// [`u32::MAX`] (136 years; a deadline past `Instant`'s range panicked).
pub fn timeout_setting() -> Result<Option<u64>> {
    const VAR: &str = "STRATA_REGISTRY_TIMEOUT";
    let refuse = |v: &str| {
        Error::invalid(format!(
            "{VAR}={v:?} is not a whole number of seconds from 1 to {}",
            u32::MAX
        ))
    };
    match std::env::var(VAR) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(secs) if secs > 0 => Ok(Some(secs.into())),
            _ => Err(refuse(&v)),
        },
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(refuse(&v.to_string_lossy())),
    }
}

fn client(plain_http: bool, monolithic: bool) -> Client {
    Client::new(ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        use_monolithic_push: monolithic,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(timeout(300)),
        user_agent: concat!("strata/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    })
}

/// Parses an image reference (`host[:port]/repo[:tag][@digest]`); its
/// registry must be one [`is_registry_host`] accepts (the parser takes any
/// digits for a port: `:99999` failed later as an internal error).
pub fn parse_reference(text: &str) -> Result<Reference> {
    const HINT: &str = "write HOST[:PORT]/REPOSITORY[:TAG], e.g. registry.example.com/app:v1";
    let reference = Reference::try_from(text).map_err(|e| {
        Error::invalid(format!("`{text}` is not an image reference: {e}")).with_hint(HINT)
    })?;
    if !is_registry_host(reference.registry()) {
        return Err(Error::invalid(format!(
            "`{text}` is not an image reference: `{}` is not a registry ({HOST_FORM})",
            reference.registry()
        ))
        .with_hint(HINT));
    }
    Ok(reference)
}

/// Refuses `text` given as a registry (`login`, `logout`) unless
/// [`is_registry_host`] takes it, before anything is asked or written.
pub fn check_registry_host(text: &str) -> Result<()> {
    if is_registry_host(text) {
        return Ok(());
    }
    Err(
        Error::invalid(format!("`{text}` is not a registry host ({HOST_FORM})"))
            .with_hint("give HOST[:PORT], e.g. registry.example.com or 127.0.0.1:5000"),
    )
}

/// What [`is_registry_host`] accepts, for messages.
pub const HOST_FORM: &str = "a DNS name or IPv4 address, and maybe a port from 1 to 65535";

/// Whether `text` is `HOST[:PORT]` as image references write a registry: a
/// DNS name (labels of letters and digits, `-` inside) or an IPv4 address,
/// and a port from 1 to 65535. Anything else could never be reached (a
/// port of 99999, an address of 999.1.1.1), or, for `login`, would be
/// stored under a name no reference matches (`user@host`, `host#x`).
pub fn is_registry_host(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let labels: Vec<&str> = host.split('.').collect();
    let numeric = labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = if numeric {
        labels.len() == 4 && labels.iter().all(|l| l.parse::<u8>().is_ok())
    } else {
        labels.iter().all(|l| is_dns_label(l))
    };
    port_ok && host_ok
}

/// A DNS label: 1 to 63 letters, digits and `-`, not first or last.
fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The runtime every registry operation runs on; making it also readies the
/// TLS library.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    // aws-lc is built without its start-up constructor (`AWS_LC_SYS_CFLAGS`
    // in .cargo/config.toml), which probes the CPU with `cpuid` in every
    // strata process, ~3% of a short command here. Such a build must be
    // initialised before use; without it the crypto would still be right,
    // but would not use the CPU's AES and SHA instructions.
    aws_lc_rs::init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the network runtime", e))
}

/// Credentials from `access`, else the auth files, else anonymous.
pub fn credentials(registry: &str, access: &Access) -> Result<RegistryAuth> {
    if let (Some(u), Some(p)) = (&access.username, &access.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    Ok(match auth::lookup(registry)? {
        Some(Credentials { username, password }) => RegistryAuth::Basic(username, password),
        None => RegistryAuth::Anonymous,
    })
}

impl Registry {
    /// Connects to the registry of `text` and authenticates for `op`.
    pub fn open(text: &str, access: &Access, op: RegistryOperation) -> Result<Registry> {
        timeout_setting()?;
        let reference = parse_reference(text)?;
        let auth = credentials(reference.registry(), access)?;
        let mut reg = Registry {
            rt: runtime()?,
            client: client(access.plain_http, false),
            monolithic: None,
            plain_http: access.plain_http,
            reference,
            given: text.to_string(),
            auth,
            token: None,
            http: std::cell::OnceCell::new(),
        };
        // Said as what the user asked for: "cannot authenticate" read as
        // a credentials problem where the registry could not be reached
        // (audit).
        let verb = match op {
            RegistryOperation::Pull => "pull",
            RegistryOperation::Push => "push to",
        };
        if !reg.plain_http && matches!(reg.auth, RegistryAuth::Basic(..)) {
            reg.refuse_plain_token_service(verb)?;
        }
        reg.token = reg
            .retry(verb, || reg.client.auth(&reg.reference, &reg.auth, op))
            .map_err(|e| match unbuildable(&e) {
                true => reg.bad_token_realm().unwrap_or(e),
                false => e,
            })?;
        Ok(reg)
    }

    /// Why authentication failed when the registry's token service is not
    /// an http(s) address (see [`check_token_realm`]), which oci-client
    /// reports as a request that could not be made. Asked only once it
    /// failed: one more `GET /v2/`, and any failure of it is left to the
    /// first error.
    fn bad_token_realm(&self) -> Option<Error> {
        let _in_runtime = self.rt.enter();
        let http = self.http().ok()?;
        let url = format!(
            "{}://{}/v2/",
            if self.plain_http { "http" } else { "https" },
            self.reference.resolve_registry()
        );
        let res = self
            .rt
            .block_on(http.get(&url).timeout(timeout(60)).send())
            .ok()?;
        check_token_realm(self.reference.registry(), &challenge_of(&res)).err()
    }

    /// Refuses credentials for a registry on HTTPS whose token service is
    /// on plain HTTP: oci-client would send the user name and password
    /// there as they are. The service is named in the challenge of
    /// `GET /v2/`, asked here once more before oci-client asks.
    fn refuse_plain_token_service(&self, verb: &str) -> Result<()> {
        let _in_runtime = self.rt.enter();
        let http = self.http()?;
        let url = format!("https://{}/v2/", self.reference.resolve_registry());
        let challenge = self.retry(verb, || async {
            let res = http.get(&url).timeout(timeout(300)).send().await?;
            Ok(challenge_of(&res))
        })?;
        check_token_service(self.reference.registry(), &challenge)
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The client of strata's own requests (see the field). Each read
    /// waits up to 300 s, with no bound on the whole (a blob may be
    /// large); requests for small answers set a total bound of their own.
    fn http(&self) -> Result<&reqwest::Client> {
        if let Some(http) = self.http.get() {
            return Ok(http);
        }
        let _in_runtime = self.rt.enter();
        let made = http_client(None, Some(timeout(300)))?;
        Ok(self.http.get_or_init(|| made))
    }

    /// `req` with the credentials oci-client would send: its bearer token
    /// for this repository, else the basic credentials. reqwest drops them
    /// on a redirect to another scheme, host or port.
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.token, &self.auth) {
            (Some(token), _) => req.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => req.basic_auth(user, Some(password)),
            _ => req,
        }
    }

    /// `{scheme}://{registry}/v2/{repository}/{kind}/{name}` of `r`.
    fn url(&self, r: &Reference, kind: &str, name: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{name}",
            if self.plain_http { "http" } else { "https" },
            r.resolve_registry(),
            r.repository(),
        )
    }

    /// GETs the manifest `r` names as oci-client would, but reads at most
    /// [`super::MAX_SMALL_BLOB`] bytes of it (oci-client reads any length
    /// whole, so a registry could exhaust memory). The outer error is the
    /// registry's (retried when transient); the inner one a manifest too
    /// large, never retried.
    async fn get_manifest(
        &self,
        http: &reqwest::Client,
        r: &Reference,
    ) -> std::result::Result<Result<Vec<u8>>, OciDistributionError> {
        let url = self.url(r, "manifests", r.digest().or(r.tag()).unwrap_or("latest"));
        let req = http
            .get(&url)
            .timeout(timeout(300))
            .header(reqwest::header::ACCEPT, ACCEPTED.join(", "));
        let mut res = self.authorized(req).send().await?;
        let status = res.status();
        if status != reqwest::StatusCode::OK {
            let body = error_body(&mut res).await;
            registry_answer(status, &body, &url)?;
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            if (body.len() + chunk.len()) as u64 > super::MAX_SMALL_BLOB {
                return Ok(Err(Error::invalid(format!(
                    "the manifest of {} is larger than {} MiB",
                    self.given,
                    super::MAX_SMALL_BLOB >> 20
                ))
                .with_hint(super::NOTHING_COMMITTED)));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Ok(body))
    }

    /// Runs `f` on the runtime, retrying transient failures.
    fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        with_retries(|| self.rt.block_on(f())).map_err(|(e, tries)| self.error(what, e, tries))
    }

    fn error(&self, what: &str, e: OciDistributionError, tries: u32) -> Error {
        map_error(
            &self.given,
            self.reference.registry(),
            what,
            self.plain_http,
            tries,
            e,
        )
    }

    /// [`Registry::error`] of a request for blob `digest`, which it names.
    fn blob_error(&self, what: &str, digest: &str, e: OciDistributionError, tries: u32) -> Error {
        let blob = format!("blob {digest}");
        let asked = Asked {
            given: &self.given,
            registry: self.reference.registry(),
            about: Some(&blob),
        };
        map_error_about(&asked, what, self.plain_http, tries, e)
    }

    /// `HOST[:PORT]/REPOSITORY` of this reference.
    fn location_of(&self) -> String {
        format!(
            "{}/{}",
            self.reference.registry(),
            self.reference.repository()
        )
    }

    /// Downloads blob `digest` into `out` (GET `/v2/REPOSITORY/blobs/DIGEST`,
    /// following redirects), stopping once it has more than `size` bytes
    /// (when `size` is known, not 0). An error's body is read only up to
    /// [`ERROR_BODY_MAX`], for its message. The digest is not checked here:
    /// the caller checks the file's size and digest. The outer error is the
    /// registry's (worth retrying when transient); the inner one is local
    /// (writing the file) or a blob larger than its descriptor: never
    /// retried, and not said to be the registry's failure.
    fn download(
        &self,
        http: &reqwest::Client,
        digest: &str,
        size: u64,
        out: &mut File,
        bar: &ProgressBar,
    ) -> std::result::Result<Result<()>, OciDistributionError> {
        let local = |e: std::io::Error| Error::io("cannot write a downloaded blob", e);
        if let Err(e) = out
            .set_len(0)
            .and_then(|()| out.seek(SeekFrom::Start(0)).map(drop))
        {
            return Ok(Err(local(e)));
        }
        bar.set_position(0);
        let larger = || {
            Error::invalid(format!(
                "blob {digest} of {} is larger than the {size} bytes its descriptor says",
                self.given
            ))
            .with_hint(super::NOTHING_COMMITTED)
        };
        let url = self.url(&self.reference, "blobs", digest);
        // The download is a long step: a caught Ctrl-C stops it at once,
        // also while the registry sends nothing.
        crate::store::interrupt::catch();
        let fetch = async {
            let mut res = self.authorized(http.get(&url)).send().await?;
            let status = res.status();
            if status != reqwest::StatusCode::OK {
                let body = error_body(&mut res).await;
                registry_answer(status, &body, &url)?;
            }
            if size > 0 && res.content_length().is_some_and(|n| n > size) {
                return Ok(Err(larger()));
            }
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut *out);
            let mut n = 0u64;
            while let Some(chunk) = res.chunk().await? {
                n += chunk.len() as u64;
                if size > 0 && n > size {
                    return Ok(Err(larger()));
                }
                if let Err(e) = w.write_all(&chunk) {
                    return Ok(Err(local(e)));
                }
                bar.set_position(n);
            }
            Ok(w.flush().map_err(local))
        };
        self.rt.block_on(async {
            tokio::select! {
                biased;
                () = crate::store::interrupt::stopped() => {
                    Ok(Err(local(std::io::Error::other(crate::store::interrupt::Interrupted))))
                }
                done = fetch => done,
            }
        })
    }

    fn upload(
        &mut self,
        digest: &str,
        size: u64,
        file: &mut File,
        bar: &ProgressBar,
    ) -> std::result::Result<(), OciDistributionError> {
        file.seek(SeekFrom::Start(0))?;
        bar.set_position(0);
        let chunks = Chunks {
            file: file.try_clone()?,
            sent: 0,
            bar: bar.clone(),
        };
        let stream = futures_util::stream::iter(chunks);
        let client = self.monolithic.as_ref().unwrap_or(&self.client);
        match self
            .rt
            .block_on(client.push_blob_stream(&self.reference, stream, digest, Some(size)))
        {
            // Chunked upload refused: the registry wants one PUT.
            Err(OciDistributionError::SpecViolationError(_)) if self.monolithic.is_none() => {
                let mono = client_for(self.plain_http, true);
                self.rt.block_on(mono.auth(
                    &self.reference,
                    &self.auth,
                    RegistryOperation::Push,
                ))?;
                self.monolithic = Some(mono);
                self.upload(digest, size, file, bar)
            }
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }
}

fn client_for(plain_http: bool, monolithic: bool) -> Client {
    client(plain_http, monolithic)
}

/// How many times a registry operation is tried.
pub const TRIES: u32 = 3;

/// The most of an error answer's body that is read: only its message is
/// wanted, and that is clipped (a registry could send one without end).
const ERROR_BODY_MAX: usize = 64 << 10;

/// The first [`ERROR_BODY_MAX`] bytes of the body of an error answer `res`;
/// a body that breaks off gives what came (the status is the answer).
async fn error_body(res: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        let room = ERROR_BODY_MAX - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == ERROR_BODY_MAX {
            break;
        }
    }
    body
}

/// Calls `f` until it succeeds, fails for good, or has been tried
/// [`TRIES`] times, sleeping 0.5 s then 1 s between tries; on failure gives
/// the last error and the number of tries.
fn with_retries<T>(
    mut f: impl FnMut() -> std::result::Result<T, OciDistributionError>,
) -> std::result::Result<T, (OciDistributionError, u32)> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if attempt < TRIES && transient(&e) => {
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// A file read as a stream of 8 MiB chunks (each one PATCH of a chunked
/// upload).
struct Chunks {
    file: File,
    sent: u64,
    bar: ProgressBar,
}

impl Iterator for Chunks {
    type Item = std::result::Result<Bytes, OciDistributionError>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::with_capacity(8 << 20);
        match (&mut self.file).take(8 << 20).read_to_end(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                self.sent += n as u64;
                self.bar.set_position(self.sent);
                Some(Ok(Bytes::from(buf)))
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}

fn is_digest_error(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::DigestError(_) => true,
        OciDistributionError::IoError(io) => io.to_string().contains("Invalid digest"),
        _ => false,
    }
}

/// What to do about a registry that cannot be reached: check its address,
/// and, unless it was already given, try `--plain-http` (audit: the hint
/// said to add it to a line that had it).
fn address_hint(registry: &str, plain_http: bool) -> String {
    match plain_http {
        true => format!("is `{registry}` the registry's HOST[:PORT], and is it running?"),
        false => format!(
            "is `{registry}` the registry's HOST[:PORT]? for a registry without TLS, add --plain-http"
        ),
    }
}

/// What to do about a TLS failure whose causes are `chain`.
fn tls_hint(chain: &str, plain_http: bool) -> Option<&'static str> {
    if plain_http {
        None
    } else if chain.contains("certificate") {
        Some(
            "trust the CA that signed the registry's certificate: add it to the system's \
             store, or name a PEM file of CAs with SSL_CERT_FILE=FILE (for a registry \
             without TLS, add --plain-http)",
        )
    } else if chain.contains("tls") || chain.contains("TLS") || chain.contains("corrupt message") {
        Some("for a registry without TLS, add --plain-http")
    } else {
        None
    }
}

fn is_certificate_error(r: &reqwest::Error) -> bool {
    cause_chain(r).contains("certificate")
}

/// Connection errors, timeouts, answers cut off, 429 and 5xx are worth
/// another try.
fn transient(e: &OciDistributionError) -> bool {
    if is_digest_error(e) {
        return false;
    }
    match e {
        // A certificate the client does not trust stays so.
        OciDistributionError::RequestError(r) if is_certificate_error(r) => false,
        OciDistributionError::RequestError(r) => {
            r.is_connect()
                || r.is_timeout()
                || r.is_body()
                // A body that broke off (reqwest says so of a response's
                // body as a decoding error): the connection was cut.
                || r.is_decode()
                || r.is_request()
                || r.status()
                    .is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests),
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Maps a registry failure to the contract's error kinds. `given` is the
/// reference (or host) as written, `registry` the one contacted
/// (`docker.io` for `ubuntu`), which the login hint and a registry that
/// cannot be reached name. `tries` is how many times the request was made
/// (said when more than one).
pub fn map_error(
    given: &str,
    registry: &str,
    what: &str,
    plain_http: bool,
    tries: u32,
    e: OciDistributionError,
) -> Error {
    let asked = Asked {
        given,
        registry,
        about: None,
    };
    map_error_about(&asked, what, plain_http, tries, e)
}

/// What a failed request was for.
struct Asked<'a> {
    /// The reference (or host) as written.
    given: &'a str,
    /// The registry contacted.
    registry: &'a str,
    /// What the request fetched (`blob sha256:…`), named after `given`.
    about: Option<&'a str>,
}

impl Asked<'_> {
    /// "the registry", naming it when `given` does not start with it (a
    /// reference without a registry part).
    fn the_registry(&self) -> String {
        if self.registry_written() {
            "the registry".to_string()
        } else {
            format!("the registry {}", self.registry)
        }
    }

    /// Whether `given` starts with the registry (or is it, for `login`).
    fn registry_written(&self) -> bool {
        self.given
            .strip_prefix(self.registry)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// A hint for a reference taken as a Docker Hub repository whose name
    /// looks like a registry (`127.0.0.1:5000`, `localhost`, `reg.example`):
    /// a registry reference needs a repository after it.
    fn repository_hint(&self) -> Option<String> {
        let name = self.given.split([':', '@']).next().unwrap_or(self.given);
        let like_host = !self.registry_written()
            && !self.given.contains('/')
            && (name.contains('.') || name == "localhost")
            && is_registry_host(self.given.split('@').next().unwrap_or(self.given));
        like_host.then(|| {
            format!(
                "`{}` was taken as a repository on {}: a registry reference needs a \
                 repository, HOST:PORT/REPOSITORY[:TAG]",
                self.given, self.registry
            )
        })
    }
}

/// [`map_error`] of a request about `asked.about` (`blob sha256:…`), which
/// the message names after the reference.
///
/// The registry's own text (an error envelope's messages, an error page, a
/// token service's answer) is quoted clipped in the message; the
/// oci-client error that carries it whole is then not kept as the cause,
/// which the printer would show after it (and again whole: a registry
/// could make that line as long as it liked).
fn map_error_about(
    asked: &Asked,
    what: &str,
    plain_http: bool,
    tries: u32,
    e: OciDistributionError,
) -> Error {
    let err = map_error_kind(asked, what, plain_http, tries, &e);
    let err = match asked.repository_hint() {
        Some(h) => err.with_hint(h),
        None => err,
    };
    match e {
        // Refused: the page the registry sent with it is the cause, clipped.
        OciDistributionError::ServerError {
            code: 401 | 403,
            message,
            ..
        } if !message.trim().is_empty() => err.with_source(Said(clipped(message.trim()).into())),
        // Quoted in the message already.
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::RegistryError { .. }
        | OciDistributionError::ServerError { .. } => err,
        e => err.with_source(e),
    }
}

/// The error [`map_error_about`] returns, before its hints and cause.
fn map_error_kind(
    asked: &Asked,
    what: &str,
    plain_http: bool,
    tries: u32,
    e: &OciDistributionError,
) -> Error {
    let login = format!(
        "log in first: strata login {}{} --username USER --password-stdin",
        asked.registry,
        if plain_http { " --plain-http" } else { "" }
    );
    let (given, about) = (asked.given, asked.about);
    let subject = match about {
        Some(about) => format!("{given}: {about}"),
        None => given.to_string(),
    };
    let msg = |m: &str| {
        if tries > 1 {
            format!("cannot {what} {subject}: {m} (tried {tries} times)")
        } else {
            format!("cannot {what} {subject}: {m}")
        }
    };
    match e {
        OciDistributionError::AuthenticationFailure(m) => Error::invalid(msg(&format!(
            "authentication failed: {}",
            clipped(m.trim())
        )))
        .with_hint(login),
        OciDistributionError::UnauthorizedError { .. } => {
            Error::invalid(msg("not authorized")).with_hint(login)
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            Error::not_found(msg("no such image"))
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let text = envelope
                .errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            let text = clipped(&text);
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Error::not_found(msg(&text))
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Error::invalid(msg(&text)).with_hint(login)
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::Unsupported)) {
                Error::unsupported(msg(&text))
            } else {
                Error::invalid(msg(&text))
            }
        }
        OciDistributionError::ServerError { code, message, .. } => match code {
            401 | 403 => Error::invalid(msg(&format!("refused ({code})"))).with_hint(login),
            404 => Error::not_found(msg(&format!("not found: {}", clipped(message)))),
            _ => Error::internal(msg(&format!(
                "the registry answered {code}: {}",
                clipped(message)
            ))),
        },
        _ if is_digest_error(e) => Error::invalid(msg(
            "a blob does not match its digest: it is corrupt or was tampered with",
        ))
        .with_hint("nothing was committed from it"),
        OciDistributionError::RequestError(r) if r.status().is_some() => {
            let code = r.status().map(|s| s.as_u16()).unwrap_or_default();
            match code {
                401 | 403 => Error::invalid(msg(&format!(
                    "refused ({code}): credentials are missing or wrong"
                )))
                .with_hint(login),
                404 => Error::not_found(msg("not found (404)")),
                _ => Error::internal(msg(&format!("the registry answered {code}"))),
            }
        }
        OciDistributionError::RequestError(r) => {
            let chain = cause_chain(r);
            let the_registry = asked.the_registry();
            let failed = if is_certificate_error(r) {
                "its TLS certificate is not trusted".to_string()
            } else if r.is_builder() {
                UNBUILDABLE.to_string()
            } else if r.is_timeout() && !r.is_connect() {
                format!("{the_registry} stopped answering (timed out)")
            } else if r.is_body() || r.is_decode() {
                // An answer's body broke off: the connection closed (or
                // was reset) before its end.
                if what == "pull" {
                    "the download was cut off before its end".to_string()
                } else {
                    "the connection was cut off before the end".to_string()
                }
            } else {
                format!("{the_registry} cannot be reached")
            };
            let err = Error::internal(msg(&failed));
            match tls_hint(&chain, plain_http) {
                Some(h) => err.with_hint(h),
                None if failed.ends_with("cannot be reached") => {
                    err.with_hint(address_hint(asked.registry, plain_http))
                }
                None => err,
            }
        }
        _ => Error::internal(msg("the registry request failed")),
    }
}

/// What a registry said, clipped: the cause of an error whose message does
/// not quote it.
#[derive(Debug)]
struct Said(String);

impl std::fmt::Display for Said {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the registry said: {}", self.0)
    }
}

impl std::error::Error for Said {}

impl Source for Registry {
    fn describe(&self) -> String {
        self.given.clone()
    }

    fn location(&self) -> Option<String> {
        Some(self.location_of())
    }

    fn manifest(&mut self, digest: Option<&str>) -> Result<(Vec<u8>, String)> {
        let r = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        let http = self.http()?;
        let bytes = match with_retries(|| self.rt.block_on(self.get_manifest(http, &r))) {
            Ok(got) => got?,
            Err((e, tries)) => return Err(self.error("pull", e, tries)),
        };
        let got = super::sha256(&bytes);
        if let Some(want) = digest.or(self.reference.digest())
            && got != want
        {
            return Err(super::manifest_mismatch(&self.given, want, &got));
        }
        Ok((bytes, got))
    }

    fn blob(&mut self, digest: &str, size: u64, bar: &ProgressBar) -> Result<File> {
        let mut f = super::temp_file()?;
        let mut renewed = false;
        loop {
            let http = self.http()?;
            match with_retries(|| self.download(http, digest, size, &mut f, bar)) {
                Ok(done) => break done?,
                // A token expires (a few minutes at Docker Hub), and a long
                // pull outlives it: a new one is asked for, once a blob, as
                // oci-client renews its own.
                Err((OciDistributionError::UnauthorizedError { .. }, _))
                    if self.token.is_some() && !renewed =>
                {
                    renewed = true;
                    self.token = self.retry("authenticate", || {
                        self.client
                            .auth(&self.reference, &self.auth, RegistryOperation::Pull)
                    })?;
                }
                Err((e, tries)) => return Err(self.blob_error("pull", digest, e, tries)),
            }
        }
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("cannot read a downloaded blob", e))?;
        Ok(f)
    }
}

impl Target for Registry {
    fn describe(&self) -> String {
        self.given.clone()
    }

    fn has_blob(&mut self, digest: &str, _size: u64) -> Result<bool> {
        with_retries(|| {
            self.rt
                .block_on(self.client.blob_exists(&self.reference, digest))
        })
        .map_err(|(e, tries)| self.blob_error("push to", digest, e, tries))
    }

    fn put_blob(
        &mut self,
        digest: &str,
        size: u64,
        file: &mut File,
        bar: &ProgressBar,
    ) -> Result<()> {
        // `upload` needs `&mut self` (it may switch to monolithic uploads).
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.upload(digest, size, file, bar) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < TRIES && transient(&e) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(self.blob_error("push to", digest, e, attempt)),
            }
        }
    }

    fn location(&self) -> Option<String> {
        Some(self.location_of())
    }

    fn mount_blob(&mut self, digest: &str, from: &str) -> Result<bool> {
        let Some((registry, repository)) = from.split_once('/') else {
            return Ok(false);
        };
        if registry != self.reference.registry() || repository == self.reference.repository() {
            return Ok(false);
        }
        let source = Reference::with_tag(
            registry.to_string(),
            repository.to_string(),
            "latest".to_string(),
        );
        // One try: a registry that cannot mount answers 202 (it opened an
        // upload instead, which is abandoned) or an error; either way the
        // caller uploads the blob.
        Ok(self
            .rt
            .block_on(self.client.mount_blob(&self.reference, &source, digest))
            .is_ok())
    }

    fn put_manifest(&mut self, media_type: &str, bytes: &[u8], _digest: &str) -> Result<()> {
        let ct = reqwest::header::HeaderValue::from_str(media_type)
            .map_err(|e| Error::internal(e.to_string()))?;
        let body = Bytes::copy_from_slice(bytes);
        self.retry("push to", || {
            self.client
                .push_manifest_raw(&self.reference, body.clone(), ct.clone())
        })?;
        Ok(())
    }
}

/// Verifies credentials against `registry` (`GET /v2/`, with a token
/// exchange when the registry asks for one).
pub fn verify_login(registry: &str, access: &Access, creds: &Credentials) -> Result<bool> {
    timeout_setting()?;
    let rt = runtime()?;
    // The requests' timers belong to the runtime, even those made before
    // `block_on`.
    let _in_runtime = rt.enter();
    let scheme = if access.plain_http { "http" } else { "https" };
    let url = format!("{scheme}://{registry}/v2/");
    let http = http_client(Some(timeout(60)), None)?;
    let unreachable = |e: reqwest::Error| {
        let err = Error::internal(format!(
            "cannot log in to {registry}: the registry cannot be reached"
        ));
        let hint = match tls_hint(&cause_chain(&e), access.plain_http) {
            Some(h) => h.to_string(),
            None => address_hint(registry, access.plain_http),
        };
        err.with_hint(hint).with_source(e)
    };
    let res = rt.block_on(http.get(&url).send()).map_err(unreachable)?;
    if res.status().is_success() {
        // The registry asks for no credentials at all.
        return Ok(false);
    }
    let challenge = challenge_of(&res);
    check_token_realm(registry, &challenge)?;
    if !access.plain_http {
        check_token_service(registry, &challenge)?;
    }
    if challenge.to_ascii_lowercase().starts_with("bearer") {
        // Token auth: let oci-client do the exchange for a dummy repository.
        let reference = parse_reference(&format!("{registry}/strata-login-check:latest"))?;
        let c = client(access.plain_http, false);
        let auth = RegistryAuth::Basic(creds.username.clone(), creds.password.clone());
        return match rt.block_on(c.auth(&reference, &auth, RegistryOperation::Pull)) {
            Ok(_) => Ok(true),
            // The token server answered other than 200: said as a refused
            // basic login, not "log in first" (this is the login). Its
            // answer (often `{"details": ...}`) is the cause, shown with -v.
            Err(e @ OciDistributionError::AuthenticationFailure(_)) => {
                let msg = format!(
                    "cannot log in to {registry}: the registry's token server refused the \
                     credentials"
                );
                Err(Error::invalid(msg).with_hint(REFUSED_HINT).with_source(e))
            }
            Err(e) => Err(map_error(
                registry,
                registry,
                "log in to",
                access.plain_http,
                1,
                e,
            )),
        };
    }
    let res = rt
        .block_on(
            http.get(&url)
                .basic_auth(&creds.username, Some(&creds.password))
                .send(),
        )
        .map_err(unreachable)?;
    let status = res.status();
    if status.is_success() {
        Ok(true)
    } else if matches!(status.as_u16(), 401 | 403) {
        Err(Error::invalid(format!(
            "cannot log in to {registry}: the registry refused the credentials ({status})"
        ))
        .with_hint(REFUSED_HINT))
    } else {
        // Not an answer about the credentials: no registry API there, or
        // a registry in trouble.
        Err(Error::internal(format!(
            "cannot log in to {registry}: the registry answered {status} at /v2/"
        ))
        .with_hint("is HOST[:PORT] a registry (OCI distribution API at /v2/)?"))
    }
}

/// What an answer's status means, as oci-client judges it (so errors map
/// alike): 200 is the manifest; 401 unauthorized; another 2xx a spec
/// violation; a 4xx the registry's error envelope (or its text); anything
/// else a server error.
fn registry_answer(
    status: reqwest::StatusCode,
    body: &[u8],
    url: &str,
) -> std::result::Result<(), OciDistributionError> {
    let url = url.to_string();
    let text = || String::from_utf8_lossy(body).to_string();
    match status.as_u16() {
        200 => Ok(()),
        401 => Err(OciDistributionError::UnauthorizedError { url }),
        code if status.is_success() => Err(OciDistributionError::SpecViolationError(format!(
            "Expected HTTP Status 200 OK, got {code} instead"
        ))),
        code if status.is_client_error() => Err(match serde_json::from_slice(body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
            Err(_) => OciDistributionError::ServerError {
                code,
                url,
                message: text(),
            },
        }),
        code => Err(OciDistributionError::ServerError {
            code,
            url,
            message: text(),
        }),
    }
}

/// An HTTP client for strata's own requests, with the connection timeout
/// and user agent of oci-client's, `total` for a whole request and `read`
/// for each read. Redirects are followed as reqwest does by default (at
/// most 10; the credentials are dropped on one to another scheme, host or
/// port).
fn http_client(total: Option<Duration>, read: Option<Duration>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")));
    if let Some(total) = total {
        builder = builder.timeout(total);
    }
    if let Some(read) = read {
        builder = builder.read_timeout(read);
    }
    builder
        .build()
        .map_err(|e| Error::internal("cannot make an HTTP client").with_source(e))
}

/// The `WWW-Authenticate` challenge of an answer ("" when there is none).
fn challenge_of(res: &reqwest::Response) -> String {
    res.headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The token service (`realm`) a `Bearer` challenge names, if any.
fn token_service(challenge: &str) -> Option<String> {
    http_auth::ChallengeParser::new(challenge)
        .filter_map(std::result::Result::ok)
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))?
        .params
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("realm"))
        .map(|(_, v)| v.to_unescaped())
}

/// Refuses a token service that is not an `http://` or `https://`
/// address (`file:///etc/passwd`): no token can come from there, and
/// asking failed as if the registry could not be reached (`internal`).
fn check_token_realm(registry: &str, challenge: &str) -> Result<()> {
    let Some(realm) = token_service(challenge) else {
        return Ok(());
    };
    let scheme = realm.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https")) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{registry} names a token service that is not an http:// or https:// address ({})",
        clipped(&realm)
    ))
    .with_hint("its token realm should be an https:// address: ask the registry's operator"))
}

/// Refuses a token service on plain HTTP named by a registry reached over
/// HTTPS: the credentials would cross the network unencrypted, where the
/// user asked for TLS. Anonymous requests carry nothing secret and are not
/// checked.
/// What a request that could not even be made (reqwest refused to build
/// it) failed with, as one to a token service that is not an http(s)
/// address does.
const UNBUILDABLE: &str = "a request for it could not be made";

/// Whether `e` is [`UNBUILDABLE`]'s: only then is the challenge asked again
/// to tell why (review: every failure, timeouts too, asked once more and
/// waited once more).
fn unbuildable(e: &Error) -> bool {
    e.message().ends_with(UNBUILDABLE)
}

fn check_token_service(registry: &str, challenge: &str) -> Result<()> {
    check_token_realm(registry, challenge)?;
    match token_service(challenge) {
        Some(realm)
            if realm
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://")) =>
        {
            Err(Error::invalid(format!(
                "{registry} is on HTTPS but names a token service on plain HTTP ({}); strata \
                 does not send credentials there unencrypted",
                clipped(&realm)
            ))
            .with_hint(
                "its token realm should be an https:// address: ask the registry's operator \
                 (pulls without credentials send nothing secret, and still work)",
            ))
        }
        _ => Ok(()),
    }
}

/// What to do when `login` is refused.
const REFUSED_HINT: &str = "check the user name and the password (or token) given on stdin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_service_of_a_challenge() {
        let realm = |c: &str| token_service(c);
        assert_eq!(
            realm(r#"Bearer realm="https://auth.example/token",service="reg""#).as_deref(),
            Some("https://auth.example/token")
        );
        // Another scheme first, names in any case, a quoted quote.
        assert_eq!(
            realm(r#"Basic realm="reg", bearer REALM="http://a/t\"x",scope="s""#).as_deref(),
            Some("http://a/t\"x")
        );
        assert_eq!(realm(r#"Basic realm="registry""#), None);
        assert_eq!(realm(""), None);
        assert_eq!(realm("Bearer service=x"), None);
    }

    #[test]
    fn a_registry_like_docker_hub_name_is_hinted() {
        let hint = |given: &str, registry: &str| {
            let asked = Asked {
                given,
                registry,
                about: None,
            };
            (asked.repository_hint().is_some(), asked.the_registry())
        };
        let docker = "the registry docker.io".to_string();
        assert_eq!(hint("127.0.0.1:15000", "docker.io"), (true, docker.clone()));
        assert_eq!(hint("localhost", "docker.io"), (true, docker.clone()));
        assert_eq!(hint("ubuntu:22.04", "docker.io"), (false, docker.clone()));
        assert_eq!(hint("myuser/app:v1", "docker.io"), (false, docker));
        // `login HOST`, and references that name their registry.
        let written = "the registry".to_string();
        assert_eq!(
            hint("127.0.0.1:5000", "127.0.0.1:5000"),
            (false, written.clone())
        );
        assert_eq!(
            hint("127.0.0.1:5000/app", "127.0.0.1:5000"),
            (false, written)
        );
    }

    #[test]
    fn token_services_not_on_http_are_refused() {
        for realm in ["file:///etc/passwd", "ftp://a/t", "/token", "", "httpx://a"] {
            let challenge = format!(r#"Bearer realm="{realm}",service="x""#);
            let err = check_token_realm("reg.example", &challenge).unwrap_err();
            assert_eq!(err.kind(), crate::store::Kind::Invalid);
            assert!(err.to_string().contains(&format!("({realm})")), "{err}");
            assert!(check_token_service("reg.example", &challenge).is_err());
        }
        for ok in ["HTTPS://a/t", "http://a/t", "https://a/t"] {
            let challenge = format!(r#"Bearer realm="{ok}""#);
            assert!(check_token_realm("reg.example", &challenge).is_ok(), "{ok}");
        }
        assert!(check_token_realm("reg.example", r#"Basic realm="file:///x""#).is_ok());
    }

    #[test]
    fn plain_http_token_services_are_refused() {
        let check = |c: &str| check_token_service("reg.example", c);
        let err = check(r#"Bearer realm="HTTP://auth.example/token""#).unwrap_err();
        assert_eq!(err.kind(), crate::store::Kind::Invalid);
        assert!(
            err.to_string().contains("HTTP://auth.example/token"),
            "{err}"
        );
        assert!(check(r#"Bearer realm="https://auth.example/token""#).is_ok());
        assert!(check(r#"Basic realm="http://not-a-token-service""#).is_ok());
        assert!(check("").is_ok());
    }
}
