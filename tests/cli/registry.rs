//! Registries and OCI layouts: `push` then `pull` into an empty store gives the same
//! tree, a second push uploads nothing, images sharing a base share its snapshots, a
//! corrupted blob commits nothing, and skopeo/umoci interoperate through `export`,
//! `push` and OCI layouts. Runs Debian's `docker-registry` (CNCF distribution) on a
//! loopback port, stopped by its PID: open, with htpasswd basic auth, or with token
//! auth from `token_server.py` beside this file.

use crate::support::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry serve` child on 127.0.0.1, killed by PID when dropped.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
    /// The token server of a registry with [`Auth::Token`].
    token: Option<TokenServer>,
    _dir: tempfile::TempDir,
}

/// How a [`Registry`] wants clients to authenticate.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// Not at all: anyone pushes and pulls.
    None,
    /// HTTP basic auth for one user and password (htpasswd, bcrypt).
    Htpasswd(&'a str, &'a str),
    /// Bearer tokens (`auth: token`, the Docker Hub / Harbor flow) from a
    /// [`TokenServer`] that knows one user and password and gives anonymous
    /// clients `pull` only.
    Token(&'a str, &'a str),
}

/// A self-signed RSA key and certificate from `openssl req`, with `extra`
/// arguments (subject, extensions).
fn self_signed(key: &Path, cert: &Path, extra: &[&str]) {
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(extra)
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(cert),
        "openssl req",
    );
}

/// `tests/cli/token_server.py` on 127.0.0.1 (Python's standard library, tokens signed
/// by `openssl`), killed by PID when dropped.
struct TokenServer {
    child: Child,
    port: u16,
    /// The certificate that signs the tokens: the registry's `rootcertbundle`.
    cert: PathBuf,
    log: PathBuf,
}

impl TokenServer {
    /// Makes an RSA key and a self-signed certificate in `dir` (the certificate is the
    /// registry's `rootcertbundle`, and goes in each token's `x5c`) and starts the
    /// server for `user`/`password`; it prints the port it listens on.
    fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        let (key, cert) = (dir.join("token-key.pem"), dir.join("token-cert.pem"));
        self_signed(&key, &cert, &["-subj", "/CN=strata-token-issuer"]);
        let log = dir.join("token.log");
        let stderr = dir.join("token-server.stderr");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/token_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([&key, &cert])
            .args([TOKEN_ISSUER, TOKEN_SERVICE, user, password])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("cannot start python3");
        let mut line = String::new();
        use std::io::BufRead;
        let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the token server did not start: {}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        TokenServer {
            child,
            port,
            cert,
            log,
        }
    }

    /// One line per token request: `USER|- SCOPES -> GRANTED | STATUS` (`-` is
    /// anonymous, `?` refused credentials).
    fn requests(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOKEN_ISSUER: &str = "strata-issuer";
const TOKEN_SERVICE: &str = "strata-test";

impl Registry {
    fn start() -> Option<Registry> {
        Registry::start_with(Auth::None, false)
    }

    /// A registry that wants `auth_by`; with `tls`, it speaks HTTPS with a self-signed
    /// certificate for 127.0.0.1 ([`Registry::cert`]).
    fn start_with(auth_by: Auth, tls: bool) -> Option<Registry> {
        if !Path::new(REGISTRY_BIN).exists() && !require(&["docker-registry"]) {
            return None;
        }
        if matches!(auth_by, Auth::Htpasswd(..)) && !require(&["htpasswd"]) {
            return None;
        }
        if matches!(auth_by, Auth::Token(..)) && !require(&["python3", "openssl"]) {
            return None;
        }
        if tls && !require(&["openssl"]) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-registry-")
            .tempdir()
            .unwrap();
        let storage = dir.path().join("storage");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        let mut auth = String::new();
        let mut token = None;
        if let Auth::Htpasswd(u, p) = auth_by {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            fs::write(&file, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                file.display()
            );
        }
        if let Auth::Token(u, p) = auth_by {
            let server = TokenServer::start(dir.path(), u, p);
            auth = format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                server.port,
                server.cert.display()
            );
            token = Some(server);
        }
        let mut http_tls = String::new();
        if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            self_signed(
                &key,
                &cert,
                &[
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    // rustls refuses a CA certificate as the server's own.
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                ],
            );
            http_tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{auth}http:\n  addr: 127.0.0.1:{port}\n{http_tls}",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("cannot start docker-registry");
        let mut reg = Registry {
            child,
            port,
            storage,
            token,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if reg.ping() {
                return Some(reg);
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                let log = fs::read_to_string(reg._dir.path().join("log")).unwrap_or_default();
                panic!("docker-registry exited ({status}): {log}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's self-signed certificate (with `tls`).
    fn cert(&self) -> PathBuf {
        self._dir.path().join("cert.pem")
    }

    /// `GET /v2/` answers (200, 401 when it wants credentials, 400 for plain HTTP to
    /// its HTTPS port).
    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        ["200", "401", "400"].iter().any(|c| {
            out.starts_with(&format!("HTTP/1.0 {c}")) || out.starts_with(&format!("HTTP/1.1 {c}"))
        })
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    /// The file a blob's bytes are stored in.
    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base_ops() -> Vec<Op> {
    vec![
        dir("/bin", 0o755),
        file("/bin/tool", "#!/bin/sh\necho tool\n", 0o755),
        dir("/etc", 0o755),
        file("/etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644),
        file("/etc/secret", "s", 0o600),
        chown("/etc/secret", 1000, 1000),
        symlink("bin/tool", "/tool"),
        link("/bin/tool", "/bin/tool2"),
        dir("/var", 0o755),
        file("/var/old", "old", 0o644),
    ]
}

fn app_ops(tag: &str) -> Vec<Op> {
    vec![
        file("/app", &format!("app {tag}\n"), 0o755),
        remove_all("/var/old"),
        file(
            "/etc/passwd",
            "root:x:0:0::/root:/bin/sh\napp:x:1:1::/:/bin/sh\n",
            0o644,
        ),
    ]
}

fn plain(s: &Store, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.push("--plain-http");
    s.strata(&all).success()
}

/// Push then pull into an empty store gives the same tree; the second push uploads
/// nothing (digests come from the index).
fn push_pull_round_trip(driver: &str) {
    let a = setup!(driver);
    let Some(reg) = Registry::start() else { return };
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    let r = reg.reference("team/app:v1");
    let first = plain(&a, &["push", "--json", "app", &r]).json();
    assert_eq!(first["ref"], r.as_str());
    let layers = first["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert!(layers.iter().all(|l| l["uploaded"] == true), "{first}");
    let second = plain(&a, &["push", "--json", "app", &r]).json();
    assert!(
        second["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["uploaded"] == false),
        "second push uploaded again: {second}"
    );
    for (x, y) in layers.iter().zip(second["layers"].as_array().unwrap()) {
        assert_eq!((&x["digest"], &x["diff_id"]), (&y["digest"], &y["diff_id"]));
    }

    let b = setup!(driver);
    let pulled = plain(&b, &["pull", "--json", &r]).json();
    assert_eq!(pulled["name"], r.as_str());
    assert_eq!(pulled["digest"], second["digest"]);
    let chain: Vec<&str> = pulled["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["chain_id"].as_str().unwrap())
        .collect();
    // chainID(L0) = diffID(L0).
    assert_eq!(chain[0], layers[0]["diff_id"].as_str().unwrap());
    b.view_tree(&r)
        .assert_eq(&a.view_tree("app"), "pulled image");
    let info = b.info(&r);
    assert_eq!(info["parent"], chain[1]);
    assert_eq!(info["labels"]["strata.image.ref"], r.as_str());
    // Pulling again downloads nothing; the alias stays.
    let again = plain(&b, &["pull", "--json", &r]).json();
    assert!(
        again["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["downloaded"] == false)
    );
    // A chain built on the pulled image pushes without its alias layer.
    b.layer("more", Some(&r), &[file("/more", "more", 0o644)]);
    let pushed = plain(
        &b,
        &["push", "--json", "more", &reg.reference("team/app:more")],
    )
    .json();
    let pl = pushed["layers"].as_array().unwrap();
    assert_eq!(pl.len(), 3, "{pushed}");
    assert_eq!(pl[0]["digest"], layers[0]["digest"]);
    assert_eq!(pl[0]["uploaded"], false);
    assert_eq!(pl[2]["uploaded"], true);
}

/// Writes `bytes` as a blob of the layout at `dir`; returns its digest.
fn put_blob(dir: &std::path::Path, bytes: &[u8]) -> String {
    let tmp = dir.join("blob.tmp");
    fs::write(&tmp, bytes).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&tmp)
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    fs::rename(&tmp, dir.join("blobs/sha256").join(&hex)).unwrap();
    format!("sha256:{hex}")
}

/// An image index (multi-platform image): import picks linux and the host's
/// architecture, and says which platforms there are when none fits.
fn image_index_picks_the_host_platform(driver: &str) {
    let a = setup!(driver);
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    let dir = a.scratch("layout");
    a.strata(&["export", "app", dir.to_str().unwrap(), "--tag", "v1"])
        .success();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut real = index["manifests"][0].clone();
    real.as_object_mut().unwrap().remove("annotations");
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    real["platform"] = serde_json::json!({"os": "linux", "architecture": host});
    let foreign = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)),
        "size": 2,
        "platform": {"os": "linux", "architecture": other}
    });
    let write_index = |manifests: Vec<serde_json::Value>, tag: &str| {
        let nested = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&nested).unwrap();
        let digest = put_blob(&dir, &bytes);
        let mut top: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        top["manifests"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest,
                "size": bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}
            }));
        fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
        digest
    };
    let manifest = real["digest"].clone();
    let multi = write_index(vec![foreign.clone(), real], "multi");
    write_index(vec![foreign], "elsewhere");

    let b = setup!(driver);
    let layout = dir.to_str().unwrap();
    let imported = b
        .strata(&["import", "--json", &format!("{layout}:multi"), "multi"])
        .success()
        .json();
    // The digest is the one the tag names, the index's (as `docker pull`
    // says); the image manifest taken from it is named beside it.
    assert_eq!(imported["digest"], multi.as_str(), "{imported}");
    assert_eq!(imported["manifest"], manifest, "{imported}");
    assert_eq!(
        b.info("multi")["labels"]["strata.image.digest"],
        multi.as_str()
    );
    b.view_tree("multi")
        .assert_eq(&a.view_tree("app"), "the host's image");
    let run = b.fails(
        &["import", &format!("{layout}:elsewhere"), "nope"],
        "not_found",
    );
    assert!(
        run.stderr.contains(other),
        "names the platforms there are: {}",
        run.session()
    );
    assert!(!b.names(&[]).contains(&"nope".to_string()));
}

/// A pull killed (SIGKILL) right after its first layer is committed leaves
/// no partial snapshot, and the next pull resumes: the first layer is not
/// downloaded again.
fn interrupted_pull_resumes(driver: &str) {
    let a = setup!(driver);
    let Some(reg) = Registry::start() else { return };
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    let r = reg.reference("team/resume:v1");
    plain(&a, &["push", "app", &r]);

    let b = setup!(driver);
    b.killed_at(&["pull", "--plain-http", &r], "create:committed");
    b.strata(&["prune"]).success();
    b.strata(&["check"]).success();
    let names = b.names(&[]);
    assert_eq!(names.len(), 1, "only the first layer is there: {names:?}");
    assert!(names[0].starts_with("sha256:"), "{names:?}");
    let resumed = plain(&b, &["pull", "--json", &r]).json();
    let layers = resumed["layers"].as_array().unwrap();
    assert_eq!(layers[0]["downloaded"], false, "{resumed}");
    assert_eq!(layers[1]["downloaded"], true, "{resumed}");
    b.view_tree(&r)
        .assert_eq(&a.view_tree("app"), "resumed pull");
}

/// Two images on one base share the base's chain-ID snapshot after pull.
fn shared_base(driver: &str) {
    let a = setup!(driver);
    let Some(reg) = Registry::start() else { return };
    a.layer("base", None, &base_ops());
    a.layer("one", Some("base"), &app_ops("one"));
    a.layer("two", Some("base"), &app_ops("two"));
    plain(&a, &["push", "one", &reg.reference("one:v1")]);
    plain(&a, &["push", "two", &reg.reference("two:v1")]);

    let b = setup!(driver);
    let p1 = plain(&b, &["pull", "--json", &reg.reference("one:v1"), "one"]).json();
    let p2 = plain(&b, &["pull", "--json", &reg.reference("two:v1"), "two"]).json();
    assert_eq!(p1["layers"][0]["chain_id"], p2["layers"][0]["chain_id"]);
    assert_eq!(p2["layers"][0]["downloaded"], false, "{p2}");
    assert_eq!(p2["layers"][1]["downloaded"], true, "{p2}");
    let base = p1["layers"][0]["chain_id"].as_str().unwrap();
    let names = b.names(&[]);
    assert_eq!(names.iter().filter(|n| *n == base).count(), 1, "{names:?}");
    assert_eq!(names.len(), 5, "{names:?}");
    let top1 = b.info("one")["parent"].as_str().unwrap().to_string();
    let top2 = b.info("two")["parent"].as_str().unwrap().to_string();
    assert_eq!(b.info(&top1)["parent"], base);
    assert_eq!(b.info(&top2)["parent"], base);
    b.view_tree("two")
        .assert_eq(&a.view_tree("two"), "second image");
    // NAME already taken by something that is not a pulled image.
    b.layer("mine", None, &[]);
    let run = b.fails(
        &["pull", "--plain-http", &reg.reference("one:v1"), "mine"],
        "already_exists",
    );
    assert!(run.stderr.contains("mine"), "{}", run.session());
}

/// A layer blob corrupted on the registry is refused (`invalid`) and nothing is
/// committed.
fn corrupted_blob(driver: &str) {
    let a = setup!(driver);
    let Some(reg) = Registry::start() else { return };
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    let r = reg.reference("bad:v1");
    let pushed = plain(&a, &["push", "--json", "app", &r]).json();
    let digest = pushed["layers"][0]["digest"].as_str().unwrap();
    let data = reg.blob_data(digest);
    let len = fs::metadata(&data).unwrap().len() as usize;
    fs::write(&data, vec![b'x'; len]).unwrap();

    let b = setup!(driver);
    let before = b.names(&[]);
    let run = b.strata(&["-o", "json", "pull", "--plain-http", &r]);
    assert_eq!(run.code, 6, "{}", run.session());
    assert!(run.stderr.contains("invalid"), "{}", run.session());
    assert_eq!(b.names(&[]), before, "a corrupted pull committed something");
    b.strata(&["check"]).success();
    // Longer than its descriptor: the download stops there (it used to go
    // on as long as the registry sent, into $TMPDIR) and is not retried.
    fs::write(&data, vec![b'x'; len + (4 << 20)]).unwrap();
    let run = b.strata(&["-o", "json", "pull", "--plain-http", &r]);
    assert_eq!(run.code, 6, "{}", run.session());
    assert!(run.stderr.contains("larger than"), "{}", run.session());
    assert!(!run.stderr.contains("tried"), "{}", run.session());
    assert_eq!(b.names(&[]), before, "a corrupted pull committed something");
}

/// A native store with committed `base`, exported to a new OCI layout as
/// `tag`; None when the store cannot be set up (see [`Store::setup`]).
fn exported_base(tag: &str) -> Option<(Store, PathBuf)> {
    let a = Store::setup("native")?;
    a.layer("base", None, &base_ops());
    let layout = a.scratch("layout");
    a.strata(&["export", "base", layout.to_str().unwrap(), "--tag", tag])
        .success();
    Some((a, layout))
}

/// [`exported_base`] as `v1`, and `app` on `base` exported to the same
/// layout as `v2`: the store and the two tagged sources, `LAYOUT:v1` and
/// `LAYOUT:v2`.
fn base_and_app_tags() -> Option<(Store, String, String)> {
    let (a, layout) = exported_base("v1")?;
    a.layer("app", Some("base"), &app_ops("v2"));
    let dir = layout.to_str().unwrap();
    a.strata(&["export", "app", dir, "--tag", "v2"]).success();
    let (v1, v2) = (format!("{dir}:v1"), format!("{dir}:v2"));
    Some((a, v1, v2))
}

/// A NAME held by something other than an image's alias is refused before
/// any layer is fetched (audit: the whole image was downloaded and
/// committed first). Two imports naming different images with one NAME at
/// once both succeed, the last to finish naming its image, as one after the
/// other would (audit: the loser failed with a bare "already exists").
#[test]
fn pull_into_a_taken_or_contested_name() {
    let Some((a, v1, v2)) = base_and_app_tags() else {
        return;
    };

    let b = Store::setup("native").unwrap();
    b.strata(&["prepare", "taken"]).success();
    let run = b.fails(&["import", &v2, "taken"], "already_exists");
    assert!(
        run.stderr.contains("not an image pulled or imported"),
        "{}",
        run.session()
    );
    // The hint fits import as well as pull (it named `strata pull`).
    assert!(!run.stderr.contains("strata pull"), "{}", run.session());
    assert_eq!(b.names(&[]), ["taken"], "layers were committed first");
    // Nor can NAME be the chain ID of one of the image's own layers (audit:
    // the layers were committed, then the name was found taken by one).
    let probe = Store::setup("native").unwrap();
    probe.strata(&["import", &v2, "probe"]).success();
    let ids: Vec<String> = probe
        .names(&[])
        .into_iter()
        .filter(|n| n != "probe")
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    for id in &ids {
        let run = b.fails(&["import", &v2, id], "invalid");
        assert!(
            run.stderr.contains("form of a layer's chain ID"),
            "{}",
            run.session()
        );
        assert_eq!(b.names(&[]), ["taken"], "layers were committed first");
    }

    let first = Paused::start(&b, &["import", &v1, "img"], "pull:alias-planned");
    b.strata(&["import", &v2, "img"]).success();
    assert_eq!(b.info("img")["labels"]["strata.image.ref"], v2.as_str());
    let out = first.resume();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.info("img")["labels"]["strata.image.ref"], v1.as_str());
    b.view_tree("img")
        .assert_eq(&a.view_tree("base"), "the last import's image");
    b.strata(&["check"]).success();
}

/// A snapshot with an image's alias label under one of an image's chain IDs
/// is an image's name, not the layer (audit: `pull REG/c C1`, C1 the chain
/// ID of a layer of `big`, then `pull REG/big` took the empty alias for
/// that layer, exit 0, its files missing). Such a NAME is refused now
/// (`invalid`, whichever image's chain ID it is); one made before is
/// `already_exists`, found before any layer is applied.
#[test]
fn an_alias_under_a_chain_id_is_not_taken_for_the_layer() {
    let Some((a, v1, v2)) = base_and_app_tags() else {
        return;
    };
    let probe = Store::setup("native").unwrap();
    probe.strata(&["import", &v2, "probe"]).success();
    let chain = probe.info("probe")["parent"].as_str().unwrap().to_string();
    let root = probe.info(&chain)["parent"].as_str().unwrap().to_string();

    // The audit's NAME, the chain ID of another image's layer.
    let b = Store::setup("native").unwrap();
    let run = b.fails(&["import", &v1, &chain], "invalid");
    assert!(
        run.stderr.contains("form of a layer's chain ID"),
        "{}",
        run.session()
    );
    assert!(b.names(&[]).is_empty(), "{}", run.session());

    // An alias made so before: the right parent, the alias label.
    b.strata(&["import", &v1, "small"]).success();
    b.strata(&["prepare", "k", &root]).success();
    b.strata(&["commit", &chain, "k", "--label", "strata.image.ref=old"])
        .success();
    let before = b.names(&[]);
    let run = b.fails(&["import", &v2, "big"], "already_exists");
    assert!(
        run.stderr
            .contains(&format!("`{chain}` is an image's name, not a layer")),
        "{}",
        run.session()
    );
    assert!(run.stderr.contains("strata rm"), "{}", run.session());
    assert_eq!(b.names(&[]), before, "{}", run.session());

    // On no parent, with the layer below missing: refused before that
    // layer is applied.
    let c = Store::setup("native").unwrap();
    c.strata(&["prepare", "k"]).success();
    c.strata(&["commit", &chain, "k", "--label", "strata.image.ref=old"])
        .success();
    let run = c.fails(&["import", &v2, "big"], "already_exists");
    assert!(run.stderr.contains("image's name"), "{}", run.session());
    assert_eq!(c.names(&[]), [chain.as_str()], "{}", run.session());

    // Once the name is removed, the image is whole.
    b.strata(&["rm", &chain]).success();
    b.strata(&["import", &v2, "big"]).success();
    b.view_tree("big")
        .assert_eq(&a.view_tree("app"), "the image");
    b.strata(&["check"]).success();
}

/// Importing onto an alias of another image that has something built on it
/// is `already_exists` before any layer is applied (audit: the whole image
/// was downloaded and its layers committed, then refused).
#[test]
fn a_name_with_snapshots_on_it_is_refused_before_any_layer() {
    let Some((_a, v1, v2)) = base_and_app_tags() else {
        return;
    };
    let b = Store::setup("native").unwrap();
    b.strata(&["import", &v1, "img"]).success();
    b.strata(&["prepare", "work", "img"]).success();
    let before = b.names(&[]);
    let run = b.fails(&["import", &v2, "img"], "already_exists");
    assert!(
        run.stderr.contains("has snapshots built on it"),
        "{}",
        run.session()
    );
    assert_eq!(b.names(&[]), before, "a layer was committed first");
    b.strata(&["check"]).success();
}

/// Rewrites the one image of OCI layout `layout`: `edit` changes its
/// manifest and its config, which are stored again under their new digests
/// (the index then points at the new manifest).
fn edit_layout(layout: &Path, edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value)) {
    use sha2::Digest;
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let read = |digest: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(blob(digest)).unwrap()).unwrap()
    };
    let store = |value: &serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(value).unwrap();
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        fs::write(blob(&digest), &bytes).unwrap();
        (digest, bytes.len())
    };
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    edit(&mut manifest, &mut config);
    let (digest, size) = store(&config);
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = store(&manifest);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A layer whose descriptor gives another size than the blob's is refused
/// (`invalid`), though its digest is right, and nothing is committed.
#[test]
fn layer_size_must_match_its_descriptor() {
    let Some((_a, layout)) = exported_base("v1") else {
        return;
    };
    edit_layout(&layout, |manifest, _| {
        manifest["layers"][0]["size"] = 5.into()
    });

    let b = Store::setup("native").unwrap();
    let src = format!("{}:v1", layout.display());
    let run = b.fails(&["import", &src, "app"], "invalid");
    assert!(
        run.stderr.contains("descriptor says 5"),
        "{}",
        run.session()
    );
    assert!(b.names(&[]).is_empty(), "{}", run.session());
    b.strata(&["check"]).success();
}

/// A layer that is not the one the image's config names (its `diff_id`)
/// is refused before it is committed: killed right after any commit, the
/// import leaves nothing under the chain ID (it used to commit the layer,
/// then check and remove it). And a `diff_id` that is not a digest is
/// refused, never taken for a snapshot key of the store's own.
#[test]
fn a_layer_is_checked_against_its_diff_id_before_it_is_committed() {
    let Some((_a, layout)) = exported_base("v1") else {
        return;
    };
    let other = format!("sha256:{}", "ab".repeat(32));
    edit_layout(&layout, |_, config| {
        config["rootfs"]["diff_ids"][0] = other.clone().into();
    });
    let b = Store::setup("native").unwrap();
    let src = format!("{}:v1", layout.display());
    let run = b.strata_with(
        &["-o", "json", "import", &src, "app"],
        With {
            env: &[("STRATA_CRASH_AT", "create:committed")],
            ..Default::default()
        },
    );
    assert_eq!(run.code, 6, "refused before any commit: {}", run.session());
    assert!(run.stderr.contains(&other), "{}", run.session());
    assert!(b.names(&[]).is_empty(), "{}", run.session());
    b.strata(&["check"]).success();

    // A config naming the store's own snapshot as a diff_id.
    b.strata(&["prepare", "mine"]).success();
    b.strata(&["commit", "own", "mine"]).success();
    edit_layout(&layout, |_, config| {
        config["rootfs"]["diff_ids"][0] = "own".into();
    });
    let run = b.fails(&["import", &src, "app"], "invalid");
    assert!(run.stderr.contains("diff_id"), "{}", run.session());
    assert_eq!(b.names(&[]), ["own"], "{}", run.session());
    assert_eq!(b.info("own")["labels"], serde_json::json!({}));
}

/// A hostile layout on disk: a layer blob that is a FIFO or a device (a
/// read would block or never end), a layer digest that is not a digest (a
/// multi-byte character made the progress message panic); each is
/// `invalid`, quickly, and nothing is committed. And `export` writes blobs
/// only into the layout's own directories, never through a symlinked
/// `blobs/sha256` (into a committed snapshot, here).
#[test]
fn hostile_layouts() {
    let Some((a, layout)) = exported_base("v1") else {
        return;
    };
    let src = format!("{}:v1", layout.display());
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer_path = layout.join("blobs/sha256").join(&layer[7..]);
    let saved = fs::read(&layer_path).unwrap();
    let b = Store::setup("native").unwrap();
    let import = |what: &str, says: &str| {
        let before = b.names(&[]);
        let started = Instant::now();
        let run = b.fails(&["import", &src, "app2"], "invalid");
        assert!(run.stderr.contains(says), "{what}: {}", run.session());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: {}",
            run.session()
        );
        assert_eq!(b.names(&[]), before, "{what}: {}", run.session());
    };
    fs::remove_file(&layer_path).unwrap();
    sh_ok(
        &format!("mkfifo {}", shell_quote(layer_path.to_str().unwrap())),
        "mkfifo",
    );
    import("a FIFO", "not a regular file");
    fs::remove_file(&layer_path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &layer_path).unwrap();
    import("/dev/zero", "not a regular file");
    fs::remove_file(&layer_path).unwrap();
    fs::write(&layer_path, &saved).unwrap();
    b.strata(&["import", &src, "app"]).success();

    let odd = format!("sha256:{}é{}", "a".repeat(11), "b".repeat(51));
    edit_layout(&layout, |manifest, _| {
        manifest["layers"][0]["digest"] = odd.clone().into();
    });
    import("a digest that is not one", "is not a sha256 digest");
    edit_layout(&layout, |manifest, _| {
        manifest["layers"][0]["digest"] = layer.clone().into();
        manifest["layers"][0]["size"] = (-1).into();
    });
    import("a negative size", "is not a number of bytes");
    b.strata(&["check"]).success();
    // The layout's version: the image spec's 1.0.0 only.
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"9.9.9"}"#,
    )
    .unwrap();
    b.fails(&["import", &src, "app2"], "unsupported");
    fs::write(layout.join("oci-layout"), "garbage").unwrap();
    b.fails(&["import", &src, "app2"], "invalid");
    // export onto a file that is not a directory.
    let file = a.scratch("file");
    fs::write(&file, "x").unwrap();
    a.fails(&["export", "base", file.to_str().unwrap()], "invalid");

    // export through a symlinked blobs/sha256, into a committed snapshot.
    let dirs = a.snapshot_dirs();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let tree = a.root.join("snapshots").join(&dirs[0]).join("fs");
    let before = a.view_tree("base");
    let evil = a.scratch_dir("evil");
    fs::create_dir(evil.join("blobs")).unwrap();
    std::os::unix::fs::symlink(&tree, evil.join("blobs/sha256")).unwrap();
    a.fails(&["export", "base", evil.to_str().unwrap()], "invalid");
    a.view_tree("base")
        .assert_eq(&before, "base after a refused export");
    // The same one level up: a symlinked `blobs`, under which `sha256` must
    // not be made (audit: it was, inside the committed snapshot).
    let evil = a.scratch_dir("evil2");
    std::os::unix::fs::symlink(&tree, evil.join("blobs")).unwrap();
    a.fails(&["export", "base", evil.to_str().unwrap()], "invalid");
    assert!(!tree.join("sha256").exists(), "made in the snapshot");
    a.view_tree("base")
        .assert_eq(&before, "base after a refused export");
    a.strata(&["check"]).success();
}

/// `export` into a layout that is not one strata could read back, or whose
/// paths are wrong, is refused before any blob is written, with one line and
/// `invalid` (or `unsupported` for another layout version); a blob path
/// holding the wrong thing (junk, a symlink out) is replaced, never trusted.
/// (Audit: a non-object index.json crashed export after writing the blobs;
/// a junk blob was kept, so the layout could not be imported.)
#[test]
fn export_into_wrong_layouts() {
    let Some((a, good)) = exported_base("v1") else {
        return;
    };
    let export = |dir: &Path| -> Run { a.strata(&["export", "base", dir.to_str().unwrap()]) };
    let blobs = |dir: &Path| fs::read_dir(dir.join("blobs/sha256")).map_or(0, |d| d.count());
    for (index, why) in [
        ("[1,2,3]", "not an object"),
        ("\"str\"", "a string"),
        ("{\"manifests\": 1}", "manifests not an array"),
    ] {
        let dir = a.scratch_dir("lay");
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(dir.join("index.json"), index).unwrap();
        let run = export(&dir);
        assert_eq!(run.code, 6, "{why}: {}", run.session());
        assert!(
            run.stderr.contains("is not an OCI image index"),
            "{why}: {}",
            run.session()
        );
        assert_eq!(blobs(&dir), 0, "{why}: no blob written");
    }
    let dir = a.scratch_dir("lay");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    a.fails(&["export", "base", dir.to_str().unwrap()], "unsupported");
    assert_eq!(
        fs::read_to_string(dir.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"2.0.0"}"#
    );
    let fifo = a.scratch_dir("lay");
    sh_ok(
        &format!(
            "cd {} && mkfifo index.json && echo '{{\"imageLayoutVersion\":\"1.0.0\"}}' > oci-layout",
            shell_quote(fifo.to_str().unwrap())
        ),
        "mkfifo",
    );
    let run = a.fails(&["export", "base", fifo.to_str().unwrap()], "invalid");
    assert!(
        run.stderr.contains("not a regular file"),
        "{}",
        run.session()
    );
    let b = Store::setup("native").unwrap();
    b.fails(&["import", fifo.to_str().unwrap(), "x"], "invalid");
    let dangling = a.scratch("dangling");
    std::os::unix::fs::symlink(a.scratch("nowhere").join("lay"), &dangling).unwrap();
    a.fails(&["export", "base", dangling.to_str().unwrap()], "invalid");
    // apply's FILE a directory: no layer, no half-made snapshot.
    let run = a.fails(&["apply", "x", "base", dir.to_str().unwrap()], "invalid");
    assert!(run.stderr.contains("is a directory"), "{}", run.session());
    assert_eq!(a.names(&[]), ["base"]);

    // The layer's blob path holding junk, a symlink out, a directory (the
    // layer's digest is the same at every export; the config's has the
    // time of the export in it).
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(good.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| PathBuf::from("blobs/sha256").join(&digest[7..]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(good.join(blob(index["manifests"][0]["digest"].as_str().unwrap()))).unwrap(),
    )
    .unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let want = fs::read(good.join(&layer)).unwrap();
    let copy = a.scratch("copy");
    sh_ok(
        &format!(
            "cp -a {} {}",
            shell_quote(good.to_str().unwrap()),
            shell_quote(copy.to_str().unwrap())
        ),
        "cp",
    );
    let outside = a.scratch("outside");
    fs::write(&outside, "mine").unwrap();
    let in_copy = copy.join(&layer);
    for wrong in ["junk", "a symlink out"] {
        fs::remove_file(&in_copy).unwrap();
        if wrong == "junk" {
            fs::write(&in_copy, "junk").unwrap();
        } else {
            std::os::unix::fs::symlink(&outside, &in_copy).unwrap();
        }
        export(&copy).success();
        let meta = fs::symlink_metadata(&in_copy).unwrap();
        assert!(meta.is_file(), "{wrong}: replaced by a regular file");
        assert_eq!(fs::read(&in_copy).unwrap(), want, "{wrong}");
    }
    assert_eq!(fs::read_to_string(&outside).unwrap(), "mine");
    b.strata(&["import", &format!("{}:latest", copy.display()), "back"])
        .success();
    b.view_tree("back")
        .assert_eq(&a.view_tree("base"), "imported from the mended layout");
    fs::remove_file(&in_copy).unwrap();
    fs::create_dir(&in_copy).unwrap();
    let run = a.fails(&["export", "base", copy.to_str().unwrap()], "invalid");
    assert!(run.stderr.contains("is a directory"), "{}", run.session());
    a.strata(&["check"]).success();
}

/// `export` killed (SIGKILL) with a blob written, just before it is put in place,
/// leaves no temporary in the layout (a `.tmpXXXXXX` in `blobs/sha256/` used to stay
/// forever), since blobs are written unnamed; what the layout held stays. A normal
/// export then fills it, every file mode 0644 whatever the umask, as before.
#[test]
fn export_killed_before_a_rename_leaves_no_temporary() {
    let Some(a) = Store::setup("native") else {
        return;
    };
    a.layer("base", None, &base_ops());
    let layout = a.scratch_dir("layout");
    fs::write(layout.join("mine"), "mine").unwrap();
    let args = ["export", "base", layout.to_str().unwrap()];
    let killed = a.killed_at(&args, "export:blob-written");
    let entries = || Tree::read(&layout).entries;
    let names: Vec<String> = entries().into_keys().collect();
    assert_eq!(
        names,
        ["blobs", "blobs/sha256", "mine", "oci-layout"],
        "{}",
        killed.session()
    );
    a.strata(&args).success();
    for (name, entry) in entries() {
        let base = name.rsplit('/').next().unwrap();
        assert!(!base.starts_with('.'), "{name} left in the layout");
        if entry.kind == "file" && name != "mine" {
            assert_eq!(entry.mode, 0o644, "{name}: {:o}", entry.mode);
        }
    }
    let b = Store::setup("native").unwrap();
    b.strata(&["import", layout.to_str().unwrap(), "back"])
        .success();
    b.view_tree("back")
        .assert_eq(&a.view_tree("base"), "imported");
}

/// `import` takes what skopeo and umoci write: tags holding `/` and `:`
/// (`DIR:example.com/app:v1`), indexes inside indexes, and of several
/// entries for the host's architecture the one without a variant (as
/// containerd). A manifest whose descriptor gives another size is refused,
/// and so is a chain-ID layer of the store's own that sits on another
/// parent than the image's.
#[test]
fn import_tags_nested_indexes_and_descriptors() {
    let Some((a, layout)) = exported_base("example.com/app:v1") else {
        return;
    };
    let dir = layout.to_str().unwrap();
    a.strata(&["export", "base", dir, "--tag", "library/app"])
        .success();
    let b = Store::setup("native").unwrap();
    for (tag, name) in [("example.com/app:v1", "one"), ("library/app", "two")] {
        b.strata(&["import", &format!("{dir}:{tag}"), name])
            .success();
        b.view_tree(name).assert_eq(&a.view_tree("base"), tag);
    }
    b.fails(
        &["import", &format!("{dir}:example.com/app:v2"), "three"],
        "not_found",
    );

    let index_path = layout.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let manifest = index["manifests"][0].clone();
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut entry = manifest.clone();
    entry.as_object_mut().unwrap().remove("annotations");
    entry["platform"] = serde_json::json!({"os": "linux", "architecture": host});
    // First an entry with a variant whose manifest is missing: taking it
    // would fail.
    let mut variant = entry.clone();
    variant["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    variant["platform"]["variant"] = "v3".into();
    let wrap = |manifests: Vec<serde_json::Value>| -> serde_json::Value {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .unwrap();
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": put_blob(&layout, &bytes),
            "size": bytes.len(),
            "platform": {"os": "linux", "architecture": host},
        })
    };
    let inner = wrap(vec![variant, entry]);
    let mut top = wrap(vec![inner]);
    top.as_object_mut().unwrap().remove("platform");
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "nested"});
    let mut wrong_size = manifest.clone();
    wrong_size["size"] = 1.into();
    wrong_size["annotations"]["org.opencontainers.image.ref.name"] = "sized".into();
    let mut edited = index.clone();
    let list = edited["manifests"].as_array_mut().unwrap();
    list.push(top);
    list.push(wrong_size);
    fs::write(&index_path, serde_json::to_vec(&edited).unwrap()).unwrap();

    b.strata(&["import", &format!("{dir}:nested"), "nested"])
        .success();
    b.view_tree("nested")
        .assert_eq(&a.view_tree("base"), "through two indexes");
    let run = b.fails(&["import", &format!("{dir}:sized"), "sized"], "invalid");
    assert!(
        run.stderr.contains("descriptor says 1"),
        "{}",
        run.session()
    );

    // A layer of the store's own under the image's chain ID, on a parent.
    let c = Store::setup("native").unwrap();
    let config_digest = {
        let m: serde_json::Value = serde_json::from_slice(
            &fs::read(
                layout
                    .join("blobs/sha256")
                    .join(&manifest["digest"].as_str().unwrap()[7..]),
            )
            .unwrap(),
        )
        .unwrap();
        m["config"]["digest"].as_str().unwrap().to_string()
    };
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&config_digest[7..])).unwrap(),
    )
    .unwrap();
    let chain_id = config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let empty = [0u8; 1024];
    c.strata_with(
        &["apply", "floor"],
        With {
            stdin: Some(&empty),
            ..Default::default()
        },
    )
    .success();
    c.strata_with(
        &["apply", &chain_id, "floor"],
        With {
            stdin: Some(&empty),
            ..Default::default()
        },
    )
    .success();
    let run = c.fails(
        &["import", &format!("{dir}:library/app"), "img"],
        "already_exists",
    );
    assert!(run.stderr.contains("on `floor`"), "{}", run.session());
    assert!(
        !c.names(&[]).contains(&"img".to_string()),
        "{}",
        run.session()
    );
}

/// Index entries without a `platform` (optional in the image spec; an entry naming
/// another index usually has none), as containerd takes them: an entry whose
/// platform fits comes first; else one without a platform is tried, an index walked
/// (within the depth limit), a manifest taken when its config names the host's
/// platform, passed over when it names another or none, or is an artifact's
/// (review: a signature's `{}` config was taken for the image). Nothing fitting is
/// `not_found`, saying what there is (it took no entry without a platform, and said
/// "it has: ?/?").
#[test]
fn import_takes_entries_without_a_platform() {
    use serde_json::{Value, json};
    let Some((a, layout)) = exported_base("base") else {
        return;
    };
    let dir = layout.to_str().unwrap();
    let blob = |digest: &str| -> Value {
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap())
            .unwrap()
    };
    let put = |v: &Value| -> Value {
        let bytes = serde_json::to_vec(v).unwrap();
        json!({
            "mediaType": v["mediaType"],
            "digest": put_blob(&layout, &bytes),
            "size": bytes.len(),
        })
    };
    let index_path = layout.join("index.json");
    let top: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let mut manifest_desc = top["manifests"][0].clone();
    manifest_desc.as_object_mut().unwrap().remove("annotations");
    let manifest = blob(manifest_desc["digest"].as_str().unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    let host = config["architecture"].as_str().unwrap().to_string();
    let other = if host == "s390x" { "ppc64le" } else { "s390x" };
    // The same image with another config: for `other`, or naming no platform.
    let with_config = |config: &Value| -> Value {
        let mut m = manifest.clone();
        let c = put(config);
        m["config"]["digest"] = c["digest"].clone();
        m["config"]["size"] = c["size"].clone();
        put(&m)
    };
    let mut foreign_config = config.clone();
    foreign_config["architecture"] = other.into();
    let foreign = with_config(&foreign_config);
    let mut bare_config = config.clone();
    bare_config.as_object_mut().unwrap().remove("os");
    bare_config.as_object_mut().unwrap().remove("architecture");
    let bare = with_config(&bare_config);
    // A signature as OCI 1.1 makes one: an empty config, no layers.
    let mut signature = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.sig",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": put_blob(&layout, b"{}"),
            "size": 2,
        },
        "layers": [],
    });
    let signature_entry = {
        let mut d = put(&signature);
        d["artifactType"] = signature["artifactType"].clone();
        d
    };
    // The same without `artifactType` anywhere: its config is still not an image's.
    signature.as_object_mut().unwrap().remove("artifactType");
    let unmarked = put(&signature);
    let mut newer_config = config.clone();
    newer_config["variant"] = "v99".into();
    let newer = with_config(&newer_config);
    // Another manifest for the host (another digest).
    let mut twin = manifest.clone();
    twin["annotations"] = json!({"twin": "yes"});
    let twin = put(&twin);
    let index = |entries: Vec<Value>| -> Value {
        put(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }))
    };
    let on = |mut desc: Value, arch: &str| -> Value {
        desc["platform"] = json!({"os": "linux", "architecture": arch});
        desc
    };
    let nested = |depth: usize| -> Value {
        (0..depth).fold(manifest_desc.clone(), |inner, _| index(vec![inner]))
    };
    let mut tags: Vec<(&str, Value)> = vec![
        // Two indexes, no platform anywhere.
        ("deep2", nested(2)),
        // A manifest for another platform, passed over for the index after it.
        (
            "after",
            index(vec![foreign.clone(), index(vec![manifest_desc.clone()])]),
        ),
        // The entry whose platform fits wins over one without a platform before it.
        (
            "prefer",
            index(vec![twin.clone(), on(manifest_desc.clone(), &host)]),
        ),
        // A config that names no platform is passed over.
        ("bare", index(vec![bare.clone(), manifest_desc.clone()])),
        // So are artifacts, for the image after them.
        (
            "signed",
            index(vec![
                signature_entry.clone(),
                unmarked.clone(),
                manifest_desc.clone(),
            ]),
        ),
        (
            "only-signatures",
            index(vec![
                on(foreign.clone(), other),
                signature_entry.clone(),
                unmarked.clone(),
                bare.clone(),
            ]),
        ),
        // A newer variant, only when nothing else fits.
        ("newer", index(vec![newer.clone(), twin.clone()])),
        ("newer-only", index(vec![newer.clone()])),
        (
            "none",
            index(vec![on(twin.clone(), other), foreign.clone()]),
        ),
        ("deep8", nested(8)),
        ("deep9", nested(9)),
        // Each a manifest and its config to read.
        ("many", index(vec![foreign.clone(); 17])),
    ];
    let mut edited = top.clone();
    for (tag, desc) in tags.iter_mut() {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": *tag});
        edited["manifests"]
            .as_array_mut()
            .unwrap()
            .push(desc.clone());
    }
    fs::write(&index_path, serde_json::to_vec(&edited).unwrap()).unwrap();

    let b = Store::setup("native").unwrap();
    let import = |tag: &str| {
        b.strata(&["import", "--json", &format!("{dir}:{tag}"), tag])
            .success()
            .json()
    };
    for (tag, want) in [
        ("deep2", &manifest_desc),
        ("after", &manifest_desc),
        ("prefer", &manifest_desc),
        ("bare", &manifest_desc),
        ("signed", &manifest_desc),
        ("newer", &twin),
        ("newer-only", &newer),
        ("deep8", &manifest_desc),
    ] {
        let out = import(tag);
        assert_eq!(out["manifest"], want["digest"], "{tag}: {out}");
        b.view_tree(tag).assert_eq(&a.view_tree("base"), tag);
    }
    let run = b.fails(&["import", &format!("{dir}:none"), "none"], "not_found");
    let message = run.json_error()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!(
            "(it has: linux/{other}, an entry without a platform (a manifest for linux/{other}))"
        )) && !message.contains("?/?"),
        "{}",
        run.session()
    );
    // Nothing but another platform, artifacts and a config naming none.
    let run = b.fails(
        &[
            "import",
            &format!("{dir}:only-signatures"),
            "only-signatures",
        ],
        "not_found",
    );
    let message = run.json_error()["message"].as_str().unwrap().to_string();
    let no = "an entry without a platform";
    assert!(
        message.contains(&format!(
            "(it has: linux/{other}, {no} (an artifact) ×2, {no} (a manifest for ?/?))"
        )),
        "{}",
        run.session()
    );
    let run = b.fails(&["import", &format!("{dir}:deep9"), "deep9"], "invalid");
    assert!(
        run.stderr.contains("nested more than 8 deep"),
        "{}",
        run.session()
    );
    let run = b.fails(&["import", &format!("{dir}:many"), "many"], "invalid");
    assert!(
        run.stderr
            .contains("more than 32 manifests, indexes and configs read"),
        "{}",
        run.session()
    );
    assert!(
        !b.names(&[])
            .iter()
            .any(|n| ["none", "only-signatures", "deep9", "many"].contains(&n.as_str()))
    );
}

/// An image with no layers (allowed by the image spec; `umoci new` makes
/// one) imports as an empty root alias, and exports back with no layers.
#[test]
fn an_image_with_no_layers() {
    let Some((a, layout)) = exported_base("v1") else {
        return;
    };
    edit_layout(&layout, |manifest, config| {
        manifest["layers"] = serde_json::json!([]);
        config["rootfs"]["diff_ids"] = serde_json::json!([]);
    });
    let b = Store::setup("native").unwrap();
    let src = format!("{}:v1", layout.display());
    b.strata(&["import", &src, "scratch"]).success();
    let info = b.info("scratch");
    assert_eq!(info["kind"], "committed", "{info}");
    assert_eq!(info["parent"], serde_json::Value::Null, "{info}");
    assert_eq!(b.names(&[]), ["scratch"]);
    b.strata(&["import", &src, "scratch"]).success();
    let out = a.scratch("out");
    b.strata(&["export", "scratch", out.to_str().unwrap(), "--tag", "t"])
        .success();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("blobs/sha256").join(&digest[7..])).unwrap())
            .unwrap();
    assert_eq!(manifest["layers"], serde_json::json!([]), "{manifest}");
    b.strata(&["check"]).success();
}

/// Exports into one layout at once each keep their tag (index.json is
/// changed under a lock; without it a third to a half were lost).
#[test]
fn concurrent_exports_keep_every_tag() {
    let Some((a, layout)) = exported_base("first") else {
        return;
    };
    let children: Vec<Child> = (0..12)
        .map(|i| {
            Command::new(BIN)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env(CONFIG_VAR, no_config(&a.root))
                .arg("--root")
                .arg(&a.root)
                .args(["export", "base"])
                .arg(&layout)
                .args(["--tag", &format!("t{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut tags: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    tags.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    want.push("first".into());
    want.sort();
    assert_eq!(tags, want);
}

/// `export` → `skopeo copy oci:DIR:TAG docker://…` → `pull` gives the same tree; and
/// `export` → `import` too.
fn export_skopeo_pull(driver: &str) {
    let a = setup!(driver);
    if !require(&["skopeo"]) {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    let layout = a.scratch("layout");
    let exported = a
        .strata(&[
            "export",
            "--json",
            "app",
            layout.to_str().unwrap(),
            "--tag",
            "v1",
        ])
        .success()
        .json();
    assert!(layout.join("oci-layout").is_file());
    let r = reg.reference("from-skopeo:v1");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{r}")),
        "skopeo copy",
    );

    let b = setup!(driver);
    let pulled = plain(&b, &["pull", "--json", &r, "app"]).json();
    assert_eq!(pulled["layers"].as_array().unwrap().len(), 2);
    b.view_tree("app")
        .assert_eq(&a.view_tree("app"), "pulled after skopeo copy");

    let c = setup!(driver);
    let src = format!("{}:v1", layout.display());
    let imported = c
        .strata(&["import", "--json", &src, "app"])
        .success()
        .json();
    assert_eq!(imported["digest"], exported["digest"]);
    c.view_tree("app")
        .assert_eq(&a.view_tree("app"), "imported layout");
}

/// `skopeo copy docker://… oci:DIR:TAG` of a pushed image unpacks with umoci to the
/// tree strata shows.
fn push_skopeo_umoci(driver: &str) {
    let a = setup!(driver);
    if !require(&["skopeo", "umoci"]) {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    let r = reg.reference("to-umoci:v1");
    plain(&a, &["push", "app", &r]);
    let layout = a.scratch("copied");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{r}"))
            .arg(format!("oci:{}:v1", layout.display())),
        "skopeo copy",
    );
    let bundle = a.scratch("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle),
        "umoci unpack",
    );
    Tree::read(&bundle.join("rootfs")).assert_eq(&a.view_tree("app"), "umoci's unpack");
}

/// `login` stores credentials (mode 0600) where push and pull read them; unknown
/// images are `not_found`; a registry that does not answer is `internal`.
#[test]
fn login_and_errors() {
    let Some(reg) = Registry::start() else { return };
    let s = Store::uninitialized("native");
    let auth = s.scratch("auth.json");
    let env = [("REGISTRY_AUTH_FILE", auth.to_str().unwrap())];
    let run = s.strata_with(
        &[
            "login",
            "--json",
            &reg.host(),
            "-u",
            "ci",
            "--password-stdin",
            "--plain-http",
        ],
        With {
            stdin: Some(b"s3cret\n"),
            env: &env,
            ..Default::default()
        },
    );
    let out = run.success().json();
    assert_eq!(out["auth_file"], auth.to_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&auth).unwrap()).unwrap();
    // base64("ci:s3cret")
    assert_eq!(saved["auths"][reg.host()]["auth"], "Y2k6czNjcmV0");
    s.fails(
        &["pull", "--plain-http", &reg.reference("nothing:here")],
        "not_found",
    );
    s.fails(
        &["push", "--plain-http", "missing", &reg.reference("x:y")],
        "not_found",
    );
    s.fails(&["pull", "--plain-http", "not a reference"], "invalid");
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.fails(
        &["pull", "--plain-http", &format!("127.0.0.1:{dead}/x:y")],
        "internal",
    );
    // A push to a digest (with or without a tag) is refused before anything
    // else: the manifest's digest is strata's to compute (audit: every blob
    // was uploaded, then the manifest refused).
    for at in ["x", "x:y"] {
        let r = format!("127.0.0.1:{dead}/{at}@sha256:{}", "0".repeat(64));
        let run = s.fails(&["push", "--plain-http", "missing", &r], "invalid");
        assert!(run.stderr.contains("not a digest"), "{}", run.session());
    }
    // A registry that takes the connection and never answers: `login` gives
    // up (it used to wait forever), in STRATA_REGISTRY_TIMEOUT seconds here.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    let started = Instant::now();
    let env = [
        ("REGISTRY_AUTH_FILE", auth.to_str().unwrap()),
        ("STRATA_REGISTRY_TIMEOUT", "2"),
    ];
    let run = login_as_ci(&s, &host, &env, b"s3cret\n");
    let run = run.fails_json("internal");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{}",
        run.session()
    );
    drop(silent);
    // Something that is not a registry (a 503 at /v2/, both tries) is not
    // said to have refused the credentials.
    let broken = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", broken.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for c in broken.incoming().take(2).flatten() {
            refuse(c);
        }
    });
    let run = login_as_ci(&s, &host, &env, b"s3cret\n").fails_json("internal");
    assert!(run.stderr.contains("503"), "{}", run.session());
    assert!(
        !run.stderr.contains("refused the credentials"),
        "{}",
        run.session()
    );
    // HOST[:PORT] only: nothing else would ever match a reference.
    for bad in ["user@host", "host#x", " host", "host:port"] {
        login_as_ci(&s, bad, &env, b"s3cret\n").fails_json("invalid");
    }
}

/// `login` without `--username` asks `Username: ` on the terminal, as
/// `docker login` does, and takes the password from stdin as before; with
/// no terminal to ask on it is a usage error (exit 2) with a hint, and
/// stores nothing.
#[test]
fn login_asks_the_user_name_on_the_terminal() {
    let s = Store::uninitialized("none");
    // A registry that asks for no credentials: `GET /v2/` is a 200.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            request_head(&mut c);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
            );
        }
    });
    let auth = s.scratch("auth.json");
    // Without --password-stdin, the only way to give the password: a usage error
    // too, with the form that works (it was `invalid`, exit 6).
    let env = [("REGISTRY_AUTH_FILE", auth.to_str().unwrap())];
    let no_password = ["login", &host, "-u", "ci", "--plain-http"];
    let run = s.strata_with(
        &no_password,
        With {
            env: &env,
            ..With::default()
        },
    );
    assert_eq!(run.code, 2, "{}", run.session());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        lines[0].starts_with("error: ")
            && lines[0].contains("--password-stdin")
            && lines.len() == 2
            && lines[1].starts_with("hint: ")
            && lines[1].contains("--password-stdin"),
        "{}",
        run.session()
    );
    s.fails(&no_password, "usage");
    assert!(!auth.exists());
    // No controlling terminal (a new session), stdin the password.
    for json in [false, true] {
        let mut cmd = command(&s.root, &[] as &[&str]);
        if json {
            cmd.args(["-o", "json"]);
        }
        cmd.args(["login", &host, "--password-stdin", "--plain-http"])
            .env("REGISTRY_AUTH_FILE", &auth)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid(2) is async-signal-safe, and nothing else runs.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"s3cret\n");
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        if json {
            let v: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
            assert_eq!(v["error"]["kind"], "usage", "{stderr}");
        } else {
            let lines: Vec<&str> = stderr.lines().collect();
            assert!(
                lines[0].starts_with("error: ") && lines[0].contains("--username"),
                "{stderr}"
            );
            assert!(
                lines.iter().skip(1).all(|l| l.starts_with("hint: ")),
                "{stderr}"
            );
        }
        assert!(!auth.exists(), "stored without a user name");
    }
    // On a terminal (`script`): the name typed at the prompt, the password
    // from stdin.
    let tty = login_on_a_terminal(&s, &host, &auth, b"me\n");
    assert!(tty.contains("Username: "), "{tty}");
    assert!(tty.contains(&format!("logged in to {host} as me")), "{tty}");
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&auth).unwrap()).unwrap();
    // base64("me:s3cret")
    assert_eq!(saved["auths"][&host]["auth"], "bWU6czNjcmV0", "{tty}");
}

/// `echo s3cret | strata login HOST --password-stdin --plain-http` on a terminal
/// (`script`), `typed` at its prompt; what the terminal showed.
fn login_on_a_terminal(s: &Store, host: &str, auth: &Path, typed: &[u8]) -> String {
    let line = format!(
        "echo s3cret | {BIN} --root {} login {host} --password-stdin --plain-http",
        shell_quote(s.root.to_str().unwrap())
    );
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .env("REGISTRY_AUTH_FILE", auth)
        .env(CONFIG_VAR, no_config(&s.root))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    child.stdin.take().unwrap().write_all(typed).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

/// A user name with `:` is `invalid` and nothing is stored or sent, given with
/// `-u` to login, push or pull, or typed at login's prompt: the auth file keeps
/// `base64(user:password)`, so `al:ice` with `pw` was stored, then read back as
/// user `al` with password `ice:pw` (RFC 7617 forbids `:` in a user-id).
#[test]
fn a_user_name_with_a_colon_is_refused() {
    let s = setup!("native");
    s.layer("top", None, &base_ops());
    // A registry that asks for no credentials: every command would succeed.
    let reg = Hostile::start(|_, _| false);
    let auth = s.scratch("auth.json");
    let env = [("REGISTRY_AUTH_FILE", auth.to_str().unwrap())];
    let r = reg.reference();
    let pushed = format!("{}/x/pushed:t", reg.host);
    let u = ["-u", "al:ice", "--password-stdin", "--plain-http"];
    for args in [
        vec!["login", &reg.host],
        vec!["pull", &r],
        vec!["push", "top", &pushed],
    ] {
        let mut args = args.clone();
        args.extend_from_slice(&u);
        let run = with_env(&s, &args, &env, Some(b"pw\n")).fails_json("invalid");
        assert!(
            run.stderr
                .contains(r#"the user name \"al:ice\" contains `:`"#),
            "{}",
            run.session()
        );
    }
    assert!(!auth.exists());
    assert_eq!(s.names(&[]), vec!["top".to_string()]);
    let tty = login_on_a_terminal(&s, &reg.host, &auth, b"al:ice\n");
    assert!(tty.contains("contains `:`"), "{tty}");
    assert!(!auth.exists(), "{tty}");
}

/// `logout HOST` removes that registry's entries (also one under `http://HOST`, a key
/// push and pull read too) from login's file, rewritten with mode 0600, other entries
/// and unknown fields kept: a push there is refused with the login hint again, while
/// a push through the registry's other name (`localhost:PORT`) still works with that
/// name's credentials. A second logout is `not_found` and leaves the file as it was,
/// byte for byte (not rewritten).
#[test]
fn logout_removes_one_registry() {
    let a = setup!("native");
    let Some(reg) = Registry::start_with(Auth::Htpasswd("ci", "s3cret"), false) else {
        return;
    };
    let (home, r) = app_with_home(&a, &reg);
    let env = [("HOME", home.to_str().unwrap())];
    let auth = home.join(".config/containers/auth.json");
    let other = format!("localhost:{}", reg.port);
    for host in [reg.host(), other.clone()] {
        assert_logged_in(login_as_ci(&a, &host, &env, b"s3cret\n"), &auth);
    }
    // Fields login does not write, and a Docker-style key for the same registry.
    let mut saved: serde_json::Value = serde_json::from_slice(&fs::read(&auth).unwrap()).unwrap();
    saved["credHelpers"] = serde_json::json!({"example.com": "pass"});
    saved["auths"][&other]["email"] = "ci@example.com".into();
    saved["auths"][format!("http://{}", reg.host())] = saved["auths"][reg.host()].clone();
    fs::write(&auth, serde_json::to_vec(&saved).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&auth, fs::Permissions::from_mode(0o644)).unwrap();

    let out = with_env(&a, &["logout", &reg.host()], &env, None)
        .success()
        .json();
    assert_eq!(
        out,
        serde_json::json!({
            "registry": reg.host(),
            "username": "ci",
            "auth_file": auth.to_str().unwrap(),
            "removed": [reg.host(), format!("http://{}", reg.host())],
            "elsewhere": [],
        })
    );
    let after: serde_json::Value = serde_json::from_slice(&fs::read(&auth).unwrap()).unwrap();
    let mut want = saved.clone();
    let auths = want["auths"].as_object_mut().unwrap();
    auths.remove(&reg.host());
    auths.remove(&format!("http://{}", reg.host()));
    assert_eq!(after, want, "only the registry's entries go");
    assert_eq!(
        fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Logged out: refused, with the hint to log in (the 401 path).
    let run = with_env(&a, &["push", "--plain-http", "app", &r], &env, None).fails_json("invalid");
    let hint = format!("strata login {} --plain-http", reg.host());
    assert!(run.stderr.contains(&hint), "{}", run.session());
    // Still logged in under the other name.
    let elsewhere = format!("{other}/team/app:v1");
    with_env(&a, &["push", "--plain-http", "app", &elsewhere], &env, None).success();

    // Again: not logged in, nothing written.
    let before = fs::read(&auth).unwrap();
    let meta = fs::metadata(&auth).unwrap();
    let run = a.strata_with(
        &["logout", &reg.host()],
        With {
            env: &env,
            ..With::default()
        },
    );
    let run = run.fails_with(3, &format!("not logged in to {}", reg.host()));
    assert!(run.stdout.is_empty(), "{}", run.session());
    assert_eq!(fs::read(&auth).unwrap(), before, "{}", run.session());
    use std::os::unix::fs::MetadataExt;
    let now = fs::metadata(&auth).unwrap();
    assert_eq!(
        (now.ino(), now.mtime_nsec()),
        (meta.ino(), meta.mtime_nsec())
    );
    with_env(&a, &["logout", &reg.host()], &env, None).fails_json("not_found");
    assert_eq!(fs::read(&auth).unwrap(), before);
}

/// Logins and logouts at once on one auth file each keep the others' entries (audit:
/// two logins lost one; a logout said it removed credentials a login wrote back); a
/// symlinked auth file is written through, as docker does, and stays a link; a file
/// that is JSON but not an auth file is refused, not replaced.
#[test]
fn logins_at_once_keep_every_entry() {
    let s = Store::uninitialized("none");
    let dir = s.scratch_dir("auth");
    let real = dir.join("real.json");
    let link = dir.join("link.json");
    std::os::unix::fs::symlink("real.json", &link).unwrap();
    let env = [("REGISTRY_AUTH_FILE", link.to_str().unwrap())];
    // Registries that ask for no credentials: each login is kept anyway.
    let regs: Vec<Hostile> = (0..6).map(|_| Hostile::start(|_, _| false)).collect();
    let login = |host: &str| login_as_ci(&s, host, &env, b"pw");
    let hosts = |path: &Path| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
        let mut keys: Vec<String> = v["auths"].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let mut want: Vec<String> = regs[1..].iter().map(|r| r.host.clone()).collect();
    want.sort();
    for round in 0..4 {
        login(&regs[0].host).success();
        std::thread::scope(|t| {
            let logout = t.spawn(|| with_env(&s, &["logout", &regs[0].host], &env, None));
            let runs: Vec<_> = regs[1..]
                .iter()
                .map(|r| t.spawn(|| login(&r.host)))
                .collect();
            for run in runs {
                run.join().unwrap().success();
            }
            logout.join().unwrap().success();
        });
        assert_eq!(hosts(&real), want, "round {round}");
    }
    assert!(
        fs::symlink_metadata(&link).unwrap().is_symlink(),
        "the link was replaced"
    );

    // A bare name is in the working directory (review: "cannot lock : No such
    // file", and logout took the file for missing).
    let bare = |args: &[&str], stdin: &[u8]| {
        let mut cmd = command(&s.root, args);
        cmd.current_dir(&dir).env("REGISTRY_AUTH_FILE", "bare.json");
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    let host = regs[0].host.as_str();
    bare(&ci_login(host), b"pw");
    assert_eq!(hosts(&dir.join("bare.json")), [host]);
    bare(&["logout", host], b"");
    assert_eq!(hosts(&dir.join("bare.json")), Vec::<String>::new());

    for bad in ["[1,2]", r#"{"auths":[1]}"#] {
        fs::write(&real, bad).unwrap();
        let run = login(&regs[0].host).fails_json("invalid");
        assert!(
            run.stderr.contains("is not an auth file"),
            "{}",
            run.session()
        );
        with_env(&s, &["logout", &regs[0].host], &env, None).fails_json("invalid");
        assert_eq!(fs::read_to_string(&real).unwrap(), bad);
    }
}

/// `logout` without a registry to ask: a host login would refuse is `invalid` before
/// anything, also with no auth file; with no auth file (or no entry) it is
/// `not_found` and creates nothing, neither the file's directory nor the store; an
/// entry under Docker Hub's key goes for `docker.io`; the JSON object and the note
/// (silent with `-q`); and credentials left in Docker's file are named, on success
/// and in the `not_found` hint, which is left as it was.
#[test]
fn logout_without_a_registry() {
    let s = Store::uninitialized("none");
    let home = s.scratch_dir("home");
    let env = [("HOME", home.to_str().unwrap())];
    let logout = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["logout"];
        all.extend_from_slice(args);
        with_env(&s, &all, env, None)
    };
    let bad = [
        "user@host",
        "host#x",
        " host",
        "host:port",
        "https://reg.example",
        "a/b",
    ];
    for host in bad {
        logout(&[host], &env).fails_json("invalid");
    }
    logout(&["--", "-x"], &env).fails_json("invalid");
    let run = logout(&["127.0.0.1:5000"], &env).fails_json("not_found");
    let err = run.json_error();
    assert_eq!(
        err["message"],
        format!(
            "not logged in to 127.0.0.1:5000 (no entry in {})",
            home.join(".config/containers/auth.json").display()
        )
    );
    assert!(
        err["hints"].as_array().unwrap().is_empty(),
        "{}",
        run.session()
    );
    let dir = s.scratch("containers");
    let file = dir.join("auth.json");
    let file_env = [
        ("HOME", home.to_str().unwrap()),
        ("REGISTRY_AUTH_FILE", file.to_str().unwrap()),
    ];
    logout(&["127.0.0.1:5000"], &file_env).fails_json("not_found");
    assert_eq!(fs::read_dir(&home).unwrap().count(), 0, "created in HOME");
    assert!(!dir.exists(), "created {}", dir.display());

    // base64("me:pw")
    let me = serde_json::json!({"auth": "bWU6cHc="});
    let saved = serde_json::json!({"auths": {
        "reg.example": me,
        "https://index.docker.io/v1/": me,
        "other.example:5000": me,
    }});
    fs::create_dir(&dir).unwrap();
    fs::write(&file, saved.to_string()).unwrap();
    let docker = home.join(".docker/config.json");
    fs::create_dir(home.join(".docker")).unwrap();
    let docker_saved = serde_json::json!({"auths": {"reg.example": me, "ghcr.io": me}});
    fs::write(&docker, docker_saved.to_string()).unwrap();
    for host in bad {
        logout(&[host], &file_env).fails_json("invalid");
    }
    assert_eq!(fs::read(&file).unwrap(), saved.to_string().as_bytes());

    let out = logout(&["docker.io"], &file_env).success().json();
    assert_eq!(
        out,
        serde_json::json!({
            "registry": "docker.io",
            "username": "me",
            "auth_file": file.to_str().unwrap(),
            "removed": ["https://index.docker.io/v1/"],
            "elsewhere": [],
        })
    );
    let run = s
        .strata_with(
            &["logout", "reg.example"],
            With {
                env: &file_env,
                ..With::default()
            },
        )
        .success();
    assert_eq!(run.stdout, "", "{}", run.session());
    assert_eq!(
        run.stderr,
        format!(
            "removed the credentials for reg.example from {}\npush and pull still take credentials for reg.example from {}\n",
            file.display(),
            docker.display()
        )
    );
    let run = s
        .strata_with(
            &["-q", "logout", "other.example:5000"],
            With {
                env: &file_env,
                ..With::default()
            },
        )
        .success();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let after: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(after, serde_json::json!({"auths": {}}));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Only in Docker's file: named in the hint, with the way to remove it there.
    let run = logout(&["ghcr.io"], &file_env).fails_json("not_found");
    let hints = run.json_error()["hints"].to_string();
    assert!(
        hints.contains(&format!(
            "REGISTRY_AUTH_FILE={} strata logout ghcr.io",
            docker.display()
        )),
        "{}",
        run.session()
    );
    assert_eq!(
        fs::read(&docker).unwrap(),
        docker_saved.to_string().as_bytes()
    );
    assert!(!s.root.exists(), "logout made the store");
}

/// `strata -o json ARGS…` with `env` (and stdin), for commands that read credentials.
fn with_env(s: &Store, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Run {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    s.strata_with(
        &all,
        With {
            stdin,
            env,
            ..Default::default()
        },
    )
}

/// `login HOST -u ci --password-stdin --plain-http`.
fn ci_login(host: &str) -> [&str; 6] {
    [
        "login",
        host,
        "-u",
        "ci",
        "--password-stdin",
        "--plain-http",
    ]
}

/// `strata login HOST -u ci --password-stdin --plain-http`, `pass` on stdin.
fn login_as_ci(s: &Store, host: &str, env: &[(&str, &str)], pass: &[u8]) -> Run {
    with_env(s, &ci_login(host), env, Some(pass))
}

/// A login that succeeded: verified, and the credentials in `auth`, mode 0600.
fn assert_logged_in(run: Run, auth: &std::path::Path) {
    let out = run.success().json();
    assert_eq!(out["auth_file"], auth.to_str().unwrap());
    assert_eq!(out["verified"], true);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(auth).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// `strata push --plain-http -u ci --password-stdin app REF`, no auth file.
fn push_app_as_ci(s: &Store, reference: &str, password: &[u8]) -> Run {
    let args = [
        "push",
        "--plain-http",
        "-u",
        "ci",
        "--password-stdin",
        "app",
        reference,
    ];
    with_env(s, &args, &[], Some(password))
}

/// Layers `base` and `app` (on it) in `a`, an empty HOME of their own for
/// credentials, and the reference `app` is pushed to on `reg`.
fn app_with_home(a: &Store, reg: &Registry) -> (PathBuf, String) {
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    (a.scratch_dir("home"), reg.reference("team/app:v1"))
}

/// A registry with htpasswd auth: anonymous push is `invalid` with a hint to log in; a
/// wrong password does not log in; `login` stores the credentials under $HOME (mode
/// 0600) and push and pull use them; `--username/--password-stdin` work on push; and
/// Docker's `~/.docker/config.json` is read too.
#[test]
fn credentials() {
    let a = setup!("native");
    let Some(reg) = Registry::start_with(Auth::Htpasswd("ci", "s3cret"), false) else {
        return;
    };
    let (home, r) = app_with_home(&a, &reg);
    let home_env = [("HOME", home.to_str().unwrap())];

    let run =
        with_env(&a, &["push", "--plain-http", "app", &r], &home_env, None).fails_json("invalid");
    assert!(run.stderr.contains("strata login"), "{}", run.session());
    let run = with_env(&a, &["pull", "--plain-http", &r], &home_env, None);
    assert!(run.code == 6 || run.code == 3, "{}", run.session());

    let login = |pass: &[u8]| login_as_ci(&a, &reg.host(), &home_env, pass);
    let run = login(b"wrong\n").fails_json("invalid");
    assert!(run.stderr.contains("refused"), "{}", run.session());
    let auth = home.join(".config/containers/auth.json");
    assert!(!auth.exists(), "a failed login wrote {}", auth.display());
    assert_logged_in(login(b"s3cret\n"), &auth);

    let pushed = with_env(&a, &["push", "--plain-http", "app", &r], &home_env, None)
        .success()
        .json();
    assert!(
        pushed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["uploaded"] == true)
    );
    let b = setup!("native");
    with_env(&b, &["pull", "--plain-http", &r, "app"], &home_env, None).success();
    b.view_tree("app")
        .assert_eq(&a.view_tree("app"), "pulled with stored credentials");

    // On the command line, without any auth file.
    let direct = reg.reference("direct/app:v1");
    let push_as_ci = |password: &[u8]| push_app_as_ci(&a, &direct, password);
    push_as_ci(b"s3cret\n").success();
    let run = push_as_ci(b"nope\n").fails_json("invalid");
    assert!(run.stderr.contains("strata login"), "{}", run.session());

    // Docker's config file, found through $HOME.
    let docker_home = a.scratch_dir("docker-home");
    fs::create_dir(docker_home.join(".docker")).unwrap();
    fs::write(
        docker_home.join(".docker/config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "Y2k6czNjcmV0"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let c = setup!("native");
    let docker_env = [("HOME", docker_home.to_str().unwrap())];
    with_env(
        &c,
        &["pull", "--plain-http", &direct, "app"],
        &docker_env,
        None,
    )
    .success();
    c.view_tree("app")
        .assert_eq(&a.view_tree("app"), "pulled with Docker's credentials");
    // And through $DOCKER_CONFIG.
    let d = setup!("native");
    let dc = docker_home.join(".docker");
    let dc_env = [("DOCKER_CONFIG", dc.to_str().unwrap())];
    with_env(&d, &["pull", "--plain-http", &r, "app"], &dc_env, None).success();
}

/// A registry with token auth (distribution's `auth: token` and a separate JWT token
/// server, the Docker Hub / Harbor flow; see `token_server.py`, which gives anonymous
/// clients `pull` only): anonymous push is `invalid` with the hint to log in; a wrong
/// password does not log in and writes nothing; `login` checks the password through the
/// token server and stores it; push then pull round-trip the files with tokens for the
/// repository; anonymous pull works; `--username/--password-stdin` work on push, and a
/// chain pushed to a second repository gets there (uploaded: a mount would need a
/// token for both repositories, which oci-client does not ask for).
#[test]
fn token_auth() {
    let a = setup!("native");
    let Some(reg) = Registry::start_with(Auth::Token("ci", "s3cret"), false) else {
        return;
    };
    let tokens = reg.token.as_ref().unwrap();
    let (home, r) = app_with_home(&a, &reg);
    let home_env = [("HOME", home.to_str().unwrap())];

    // Anonymous: a token for pull only, so the registry refuses the upload.
    let run =
        with_env(&a, &["push", "--plain-http", "app", &r], &home_env, None).fails_json("invalid");
    let login_hint = format!("strata login {} --plain-http", reg.host());
    assert!(run.stderr.contains(&login_hint), "{}", run.session());
    assert!(
        tokens
            .requests()
            .contains("-|repository:team/app:pull,push -> repository:team/app:pull | 200"),
        "no anonymous token: {}",
        tokens.requests()
    );
    with_env(&a, &["pull", "--plain-http", &r], &home_env, None).fails_json("not_found");

    let login = |pass: &[u8]| login_as_ci(&a, &reg.host(), &home_env, pass);
    let run = login(b"wrong\n").fails_json("invalid");
    assert!(
        run.stderr.contains("refused") && !run.stderr.contains("log in first"),
        "{}",
        run.session()
    );
    assert!(
        tokens.requests().contains("?|repository:") && tokens.requests().contains("| 401"),
        "the token server was not asked: {}",
        tokens.requests()
    );
    let auth = home.join(".config/containers/auth.json");
    assert!(!auth.exists(), "a failed login wrote {}", auth.display());
    assert_logged_in(login(b"s3cret\n"), &auth);

    let pushed = with_env(&a, &["push", "--plain-http", "app", &r], &home_env, None)
        .success()
        .json();
    let layers = pushed["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{pushed}");
    assert!(layers.iter().all(|l| l["uploaded"] == true), "{pushed}");
    assert!(
        tokens
            .requests()
            .contains("ci|repository:team/app:pull,push -> repository:team/app:pull,push | 200"),
        "no push token for ci: {}",
        tokens.requests()
    );
    let again = with_env(&a, &["push", "--plain-http", "app", &r], &home_env, None)
        .success()
        .json();
    assert!(
        again["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["uploaded"] == false),
        "second push uploaded again: {again}"
    );

    let b = setup!("native");
    let pulled = with_env(&b, &["pull", "--plain-http", &r, "app"], &home_env, None)
        .success()
        .json();
    assert_eq!(pulled["digest"], again["digest"]);
    let tree = b.view_tree("app");
    tree.assert_eq(&a.view_tree("app"), "pulled with a token");
    assert_eq!(tree.content("app").as_deref(), Some("app v1\n"));
    assert_eq!(
        tree.content("etc/passwd").as_deref(),
        Some("root:x:0:0::/root:/bin/sh\napp:x:1:1::/:/bin/sh\n")
    );
    assert_eq!(
        tree.content("bin/tool").as_deref(),
        Some("#!/bin/sh\necho tool\n")
    );
    assert!(
        tree.content("var/old").is_none(),
        "a removed file came back"
    );
    // Anonymous clients may pull.
    let c = setup!("native");
    with_env(&c, &["pull", "--plain-http", &r, "app"], &[], None).success();
    c.view_tree("app")
        .assert_eq(&a.view_tree("app"), "pulled anonymously");

    // On the command line, without any auth file, to a second repository.
    let direct = reg.reference("direct/app:v1");
    let push_as_ci = |password: &[u8]| push_app_as_ci(&a, &direct, password);
    let run = push_as_ci(b"nope\n").fails_json("invalid");
    assert!(run.stderr.contains(&login_hint), "{}", run.session());
    let pushed = push_as_ci(b"s3cret\n").success().json();
    assert!(
        pushed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["uploaded"] == true || l["mounted"] == true),
        "{pushed}"
    );
    let d = setup!("native");
    with_env(&d, &["pull", "--plain-http", &direct, "app"], &[], None).success();
    d.view_tree("app")
        .assert_eq(&a.view_tree("app"), "pulled from the second repository");
}

/// Pushing a chain to a second repository of the same registry mounts its blobs from
/// the first instead of uploading them; a pulled chain remembers where it came from,
/// so pushing it to a third repository mounts too.
fn cross_repository_mount(driver: &str) {
    let a = setup!(driver);
    let Some(reg) = Registry::start() else { return };
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    let one = plain(&a, &["push", "--json", "app", &reg.reference("one/app:v1")]).json();
    assert!(
        one["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["uploaded"] == true && l["mounted"] == false),
        "{one}"
    );
    let labels = &a.info("base")["labels"];
    let loc = labels["strata.layer.repo"].as_str().unwrap_or_default();
    assert_eq!(
        loc,
        format!(
            "{}@{}",
            reg.reference("one/app"),
            one["layers"][0]["digest"].as_str().unwrap()
        )
    );

    let two = plain(&a, &["push", "--json", "app", &reg.reference("two/app:v1")]).json();
    for l in two["layers"].as_array().unwrap() {
        assert_eq!(
            (&l["uploaded"], &l["mounted"]),
            (&false.into(), &true.into()),
            "{two}"
        );
    }
    let text = plain(&a, &["push", "app", &reg.reference("three/app:v1")]);
    assert!(text.stdout.starts_with("mounted "), "{}", text.session());
    // The registry links the blobs into the new repository.
    let digest = two["layers"][1]["digest"].as_str().unwrap();
    let link = reg
        .storage
        .join("docker/registry/v2/repositories/two/app/_layers/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
        .join("link");
    assert!(link.is_file(), "{} is missing", link.display());

    let b = setup!(driver);
    plain(&b, &["pull", "--json", &reg.reference("two/app:v1"), "app"]);
    b.view_tree("app")
        .assert_eq(&a.view_tree("app"), "pulled mounted blobs");
    b.layer("more", Some("app"), &[file("/more", "more", 0o644)]);
    let four = plain(
        &b,
        &["push", "--json", "more", &reg.reference("four/app:v1")],
    )
    .json();
    let l = four["layers"].as_array().unwrap();
    assert_eq!(l.len(), 3, "{four}");
    assert!(
        l[..2]
            .iter()
            .all(|l| l["mounted"] == true && l["uploaded"] == false),
        "{four}"
    );
    assert_eq!(
        (&l[2]["uploaded"], &l[2]["mounted"]),
        (&true.into(), &false.into())
    );
}

/// A pulled layer keeps the registry's digests: pushing the chain to a
/// second registry (which lacks the blobs, so strata writes the layer
/// itself, another gzip) does not replace them, and a later push to
/// another repository of the first registry mounts the original blob
/// instead of uploading strata's. (Audit: the second push replaced them.)
#[test]
fn pulled_digests_survive_a_push_elsewhere() {
    if !require(&["skopeo"]) {
        return;
    }
    let Some((a, layout)) = exported_base("v1") else {
        return;
    };
    let (Some(one), Some(two)) = (Registry::start(), Registry::start()) else {
        return;
    };
    // The layer gzipped by another hand (level 1): same diff_id, other digest.
    let mut layer = String::new();
    edit_layout(&layout, |manifest, _| {
        let old = manifest["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let blobs = layout.join("blobs/sha256");
        let tar = sh_ok(
            &format!(
                "gzip -dc {} | gzip -1 > {}/regz && sha256sum {}/regz | cut -d' ' -f1",
                shell_quote(blobs.join(&old[7..]).to_str().unwrap()),
                shell_quote(blobs.to_str().unwrap()),
                shell_quote(blobs.to_str().unwrap())
            ),
            "gzip -1",
        );
        layer = format!("sha256:{}", tar.trim());
        fs::rename(blobs.join("regz"), blobs.join(&layer[7..])).unwrap();
        manifest["layers"][0]["digest"] = layer.clone().into();
        manifest["layers"][0]["size"] = fs::metadata(blobs.join(&layer[7..])).unwrap().len().into();
    });
    let src = one.reference("src/app:v1");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{src}")),
        "skopeo copy",
    );
    drop(a);
    let b = Store::setup("native").unwrap();
    plain(&b, &["pull", &src, "app"]);
    let elsewhere = plain(&b, &["push", "--json", "app", &two.reference("x/app:v1")]).json();
    let pushed = &elsewhere["layers"][0];
    assert_ne!(
        pushed["digest"],
        layer.as_str(),
        "strata's own gzip: {elsewhere}"
    );
    assert_eq!(pushed["uploaded"], true, "{elsewhere}");
    let back = plain(
        &b,
        &["push", "--json", "app", &one.reference("other/app:v1")],
    )
    .json();
    let l = &back["layers"][0];
    assert_eq!(l["digest"], layer.as_str(), "the pulled blob: {back}");
    assert_eq!(
        (&l["mounted"], &l["uploaded"]),
        (&true.into(), &false.into()),
        "{back}"
    );
    let again = plain(&b, &["push", "--json", "app", &two.reference("y/app:v1")]).json();
    let l = &again["layers"][0];
    assert_eq!(l["digest"], pushed["digest"], "{again}");
    assert_eq!(
        (&l["mounted"], &l["uploaded"]),
        (&true.into(), &false.into()),
        "{again}"
    );
}

/// A TCP proxy in front of a registry that answers the first N connections with
/// `503 Service Unavailable`, then forwards.
struct FlakyProxy {
    port: u16,
    fail: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlakyProxy {
    fn start(upstream: u16) -> FlakyProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fail = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, fd, st) = (fail.clone(), failed.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    fd.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || refuse(client));
                } else {
                    std::thread::spawn(move || forward(client, upstream));
                }
            }
        });
        FlakyProxy {
            port,
            fail,
            failed,
            stop,
        }
    }

    /// Makes the next `n` connections fail.
    fn arm(&self, n: usize) {
        self.fail.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn failed(&self) -> usize {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_tag}", self.port)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request (head and a Content-Length body) and answers 503.
/// The head of the request on `c` (request line and headers), lower-cased.
fn request_head(c: &mut TcpStream) -> String {
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

fn refuse(mut c: TcpStream) {
    let text = request_head(&mut c);
    let length: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let _ = std::io::copy(&mut (&mut c).take(length), &mut std::io::sink());
    let _ = c.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let _ = c.shutdown(std::net::Shutdown::Both);
}

fn forward(mut c: TcpStream, upstream: u16) {
    let Ok(mut u) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut c2), Ok(mut u2)) = (c.try_clone(), u.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut u, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// Push and pull get through a registry that answers 503 to the first requests (they
/// are retried); one that keeps failing, or a dead port, is `internal` after the
/// bounded tries, naming the registry.
#[test]
fn retries() {
    let a = setup!("native");
    let Some(reg) = Registry::start() else { return };
    let proxy = FlakyProxy::start(reg.port);
    a.layer("base", None, &base_ops());
    a.layer("app", Some("base"), &app_ops("v1"));
    let r = proxy.reference("flaky/app:v1");
    // The first answers the version check (taken as "no auth needed"), the next two
    // use up the tries of one request but the last.
    proxy.arm(3);
    let pushed = plain(&a, &["push", "--json", "app", &r]).json();
    assert_eq!(proxy.failed(), 3);
    assert!(
        pushed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["uploaded"] == true)
    );

    let b = setup!("native");
    proxy.arm(3);
    plain(&b, &["pull", "--json", &r, "app"]);
    assert_eq!(proxy.failed(), 6);
    b.view_tree("app")
        .assert_eq(&a.view_tree("app"), "pulled through retries");

    proxy.arm(100);
    let run = b.fails(&["pull", "--plain-http", &r, "again"], "internal");
    assert!(
        run.stderr.contains(&r) && run.stderr.contains("tried 3 times"),
        "{}",
        run.session()
    );
    assert!(run.stderr.contains("503"), "{}", run.session());
    // At least the three tries of the manifest (oci-client also checks /v2/ first).
    assert!(proxy.failed() >= 6 + 3, "{}", proxy.failed());

    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead_ref = format!("127.0.0.1:{dead}/x:y");
    let start = Instant::now();
    let run = b.fails(&["push", "--plain-http", "app", &dead_ref], "internal");
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{dead}")) && run.stderr.contains("tried 3 times"),
        "{}",
        run.session()
    );
    // Said as what was asked (it was "cannot authenticate", read as a
    // credentials problem), and the hint does not ask for the
    // --plain-http the line has.
    let running = format!("is `127.0.0.1:{dead}` the registry's HOST[:PORT], and is it running?");
    let run = b.strata(&["push", "--plain-http", "app", &dead_ref]);
    assert!(
        run.stderr.contains(&format!(
            "error: cannot push to {dead_ref}: the registry cannot be reached"
        )) && run.stderr.contains(&running)
            && !run.stderr.contains("add --plain-http"),
        "{}",
        run.session()
    );
    let dead_host = format!("127.0.0.1:{dead}");
    let login = [
        "login",
        "-u",
        "u",
        "--password-stdin",
        "--plain-http",
        &dead_host,
    ];
    let pw = || With {
        stdin: Some(b"pw"),
        ..Default::default()
    };
    let run = b.strata_with(&login, pw());
    assert!(
        run.code == 1 && run.stderr.contains(&running) && !run.stderr.contains("add --plain-http"),
        "{}",
        run.session()
    );
    let run = b.strata_with(&["login", "-u", "u", "--password-stdin", &dead_host], pw());
    assert!(
        run.code == 1
            && run
                .stderr
                .contains("for a registry without TLS, add --plain-http"),
        "{}",
        run.session()
    );
    // 0.5 s then 1 s between the tries.
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "{}",
        run.session()
    );
}

/// `strata --root ROOT ARGS` on a pseudo-terminal, progress shown at once;
/// what the terminal saw.
fn on_tty_now(store: &Store, args: &str) -> String {
    let env = [("NO_COLOR", "1"), ("STRATA_PROGRESS_DELAY_MS", "0")];
    on_tty(store, 120, &env, args)
}

/// `pull` and `import` show a progress bar per layer on a terminal.
#[test]
fn progress_per_layer() {
    let Some(reg) = Registry::start() else { return };
    let a = Store::uninitialized("native");
    a.strata(&["init", "--driver", "native"]).success();
    a.strata(&["prepare", "w"]).success();
    let dir = writable_dir(&a, "w");
    for i in 0..3000 {
        fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    a.strata(&["commit", "big", "w"]).success();
    let layout = a.scratch("layout");
    a.strata(&["export", "big", layout.to_str().unwrap()])
        .success();
    let r = reg.reference("big:v1");
    plain(&a, &["push", "big", &r]);

    let b = Store::uninitialized("native");
    b.strata(&["init", "--driver", "native"]).success();
    let tty = on_tty_now(&b, &format!("import {} big", layout.display()));
    assert!(tty.contains("applying layer 1/1"), "no progress: {tty:?}");
    let c = Store::uninitialized("native");
    c.strata(&["init", "--driver", "native"]).success();
    let tty = on_tty_now(&c, &format!("pull --plain-http {r} big"));
    assert!(tty.contains("layer 1/1"), "no progress: {tty:?}");
    assert_eq!(c.info("big")["parent"], b.info("big")["parent"]);
}

/// HTTPS with a CA the system does not know: refused (no retries) with a hint; trusted
/// through `SSL_CERT_FILE`, `login`, push and pull work (basic auth over TLS).
#[test]
fn tls_with_a_private_ca() {
    let a = setup!("native");
    let Some(reg) = Registry::start_with(Auth::Htpasswd("ci", "s3cret"), true) else {
        return;
    };
    a.layer("base", None, &base_ops());
    let r = reg.reference("tls/app:v1");
    let auth = a.scratch("auth.json");
    let cert = reg.cert();
    let untrusted = [("REGISTRY_AUTH_FILE", auth.to_str().unwrap())];
    let run = with_env(&a, &["push", "base", &r], &untrusted, None).fails_json("internal");
    assert!(
        run.stderr.contains("not trusted")
            && run.stderr.contains("SSL_CERT_FILE")
            && !run.stderr.contains("tried"),
        "{}",
        run.session()
    );
    let env = [
        ("REGISTRY_AUTH_FILE", auth.to_str().unwrap()),
        ("SSL_CERT_FILE", cert.to_str().unwrap()),
    ];
    with_env(&a, &["push", "base", &r], &env, None).fails_json("invalid");
    with_env(
        &a,
        &["login", &reg.host(), "-u", "ci", "--password-stdin"],
        &env,
        Some(b"s3cret"),
    )
    .success();
    with_env(&a, &["push", "base", &r], &env, None).success();
    let b = setup!("native");
    with_env(&b, &["pull", &r, "base"], &env, None).success();
    b.view_tree("base")
        .assert_eq(&a.view_tree("base"), "pulled over HTTPS");
}

/// A registry whose manifest never ends: pull stops reading at the 64 MiB a manifest
/// may have (`invalid`, nothing made) instead of reading until memory runs out.
#[test]
fn endless_manifest() {
    let s = setup!("native");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let ok = "HTTP/1.1 200 OK\r\nConnection: close\r\n";
                if request_head(&mut c).starts_with("get /v2/ ") {
                    let _ = write!(c, "{ok}Content-Length: 2\r\n\r\n{{}}");
                    return;
                }
                let mt = "application/vnd.oci.image.manifest.v1+json";
                let _ = write!(c, "{ok}Content-Type: {mt}\r\n\r\n{{\"a\": \"");
                let chunk = vec![b'x'; 1 << 16];
                while c.write_all(&chunk).is_ok() {}
            });
        }
    });
    let started = Instant::now();
    let run = s.fails(&["pull", "--plain-http", &format!("{host}/x:y")], "invalid");
    assert!(
        run.stderr.contains("larger than 64 MiB"),
        "{}",
        run.session()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{}",
        run.session()
    );
    assert_eq!(s.names(&[]), Vec::<String>::new());
}

/// A hand-made registry on 127.0.0.1 with one image, `x/y:t`: one layer (an empty
/// tar, [`Hostile::LAYER`], uncompressed) and its config. Each request is first offered
/// to `answer` (its head, lower-cased, and the connection): when that answers it, it
/// returns true; else the registry answers as a registry would. A thread per
/// connection, one request each; the listener lives as long as the test binary.
struct Hostile {
    host: String,
}

impl Hostile {
    /// The layer: an empty tar (its end-of-archive blocks).
    const LAYER: [u8; 1024] = [0; 1024];

    fn layer_digest() -> String {
        sha256_of(&Hostile::LAYER)
    }

    /// The image config: the host's platform, the one layer.
    fn config() -> String {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [Hostile::layer_digest()]},
        })
        .to_string()
    }

    /// The image manifest `x/y:t` names.
    fn manifest() -> String {
        let config = Hostile::config();
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_of(config.as_bytes()),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": Hostile::layer_digest(),
                "size": Hostile::LAYER.len(),
            }],
        })
        .to_string()
    }

    fn start(answer: impl Fn(&str, &mut TcpStream) -> bool + Send + Sync + 'static) -> Hostile {
        let layer = Hostile::layer_digest();
        let config = Hostile::config();
        let config_digest = sha256_of(config.as_bytes());
        let manifest = Hostile::manifest();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let answer = answer.clone();
                let (layer, config, manifest) = (layer.clone(), config.clone(), manifest.clone());
                let config_path = format!("/v2/x/y/blobs/{config_digest}");
                std::thread::spawn(move || {
                    let head = request_head(&mut c);
                    if answer(&head, &mut c) {
                        return;
                    }
                    let (status, body): (&str, &[u8]) = match path_of(&head) {
                        "/v2/" => ("200 OK", b"{}"),
                        "/v2/x/y/manifests/t" => ("200 OK", manifest.as_bytes()),
                        p if p == config_path => ("200 OK", config.as_bytes()),
                        p if p == format!("/v2/x/y/blobs/{layer}") => ("200 OK", &Hostile::LAYER),
                        _ => ("404 Not Found", b""),
                    };
                    let _ = write!(
                        c,
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(body);
                });
            }
        });
        Hostile { host }
    }

    fn reference(&self) -> String {
        format!("{}/x/y:t", self.host)
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The path a request's head asks for.
fn path_of(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

/// Whether `head` is the GET of the layer blob of [`Hostile`].
fn is_layer(head: &str) -> bool {
    head.starts_with("get ")
        && path_of(head) == format!("/v2/x/y/blobs/{}", Hostile::layer_digest())
}

/// A registry that answers the layer's GET with a 500 and a 20 MB body: strata reads
/// a little of it (its peak memory is about that of a 100-byte body), and says one
/// short line naming the blob, also with `-v` and as JSON (the body was read whole
/// and printed whole, as the line's root cause).
#[test]
fn a_huge_error_body_is_neither_read_nor_printed_whole() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const BIG: usize = 20 << 20;
    let s = setup!("native");
    let size = std::sync::Arc::new(AtomicUsize::new(100));
    let body_size = size.clone();
    let reg = Hostile::start(move |head, c| {
        if !is_layer(head) {
            return false;
        }
        let size = body_size.load(Ordering::SeqCst);
        let _ = write!(
            c,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\
             Content-Length: {size}\r\nConnection: close\r\n\r\n"
        );
        let chunk = vec![b'x'; (1 << 16).min(size)];
        let mut sent = 0;
        while sent < size && c.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        true
    });
    let r = reg.reference();
    let layer = Hostile::layer_digest();
    let (small, small_kib) = s.strata_peak(&["pull", "--plain-http", &r]);
    assert_eq!(small.code, 1, "{}", small.session());
    size.store(BIG, Ordering::SeqCst);
    let (run, peak_kib) = s.strata_peak(&["pull", "--plain-http", &r]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(
        run.stderr.len() < 2048,
        "{} bytes on stderr",
        run.stderr.len()
    );
    // The body costs next to nothing (it cost about 3 times its size).
    if let (Some(small_kib), Some(peak_kib)) = (small_kib, peak_kib) {
        assert!(
            peak_kib < small_kib + (BIG / 4 / 1024) as u64,
            "peak memory {peak_kib} KiB for a {BIG}-byte error body, {small_kib} KiB for 100 bytes"
        );
    }
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.session());
    assert!(
        lines[0].starts_with("error: ")
            && lines[0].contains(&format!("blob {layer}"))
            && lines[0].contains("500")
            && lines[0].contains("tried 3 times"),
        "{}",
        run.session()
    );
    let run = s.strata(&["-v", "pull", "--plain-http", &r]);
    assert_eq!(run.code, 1, "{}", run.session());
    assert!(
        run.stderr.len() < 4096,
        "{} bytes with -v",
        run.stderr.len()
    );
    let run = s.strata(&["-o", "json", "pull", "--plain-http", &r]);
    assert!(
        run.stderr.len() < 4096,
        "{} bytes as JSON",
        run.stderr.len()
    );
    run.fails_json("internal");
    assert_eq!(s.names(&[]), Vec::<String>::new());
}

/// A manifest refused with a 500 and a 5 KB page: its text is quoted once, clipped
/// (it was quoted clipped, then again whole as the line's root cause).
#[test]
fn a_registry_error_text_is_quoted_once_and_clipped() {
    let s = setup!("native");
    let reg = Hostile::start(|head, c| {
        if path_of(head) != "/v2/x/y/manifests/t" {
            return false;
        }
        let body = format!("MARK{}", "y".repeat(5000));
        let _ = write!(
            c,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        true
    });
    let r = reg.reference();
    let run = s.strata(&["pull", "--plain-http", &r]);
    assert_eq!(run.code, 1, "{}", run.session());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.session());
    assert!(
        lines[0].len() < 1000,
        "{} bytes: {}",
        lines[0].len(),
        run.session()
    );
    assert_eq!(run.stderr.matches("MARK").count(), 1, "{}", run.session());
    assert!(
        lines[0].contains("answered 500: MARKyyy"),
        "{}",
        run.session()
    );
    let run = s.strata(&["-v", "pull", "--plain-http", &r]);
    assert_eq!(run.stderr.matches("MARK").count(), 1, "{}", run.session());
    assert!(run.stderr.len() < 2048, "{}", run.session());
    let run = s
        .strata(&["-o", "json", "pull", "--plain-http", &r])
        .fails_json("internal");
    assert_eq!(run.stderr.matches("MARK").count(), 1, "{}", run.session());
}

/// Answers a request on `c` with a 200 and `body`, and closes the connection.
fn answer_ok(c: &mut TcpStream, body: &[u8]) {
    answer_head(c, body.len());
    let _ = c.write_all(body);
}

/// The head of a 200 answer of `len` bytes on `c`, which closes the connection
/// after them.
fn answer_head(c: &mut TcpStream, len: usize) {
    let _ = write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
}

/// REF names an index whose one entry, without a platform, names another index,
/// whose one entry, without a platform, names the image manifest: pull walks both
/// and takes it (it took no entry without a platform: `not_found`, "it has: ?/?").
#[test]
fn pull_walks_index_entries_without_a_platform() {
    use serde_json::json;
    let s = setup!("native");
    let manifest = Hostile::manifest();
    let index = |mt: &str, bytes: &str| {
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": mt,
                "digest": sha256_of(bytes.as_bytes()),
                "size": bytes.len(),
            }],
        })
        .to_string()
    };
    let inner = index("application/vnd.oci.image.manifest.v1+json", &manifest);
    let top = index("application/vnd.oci.image.index.v1+json", &inner);
    let (want_top, want_manifest) = (sha256_of(top.as_bytes()), sha256_of(manifest.as_bytes()));
    let by_digest: Vec<(String, String)> = [&manifest, &inner]
        .into_iter()
        .map(|b| {
            (
                format!("/v2/x/y/manifests/{}", sha256_of(b.as_bytes())),
                b.clone(),
            )
        })
        .collect();
    let reg = Hostile::start(move |head, c| {
        let path = path_of(head);
        let body = if path == "/v2/x/y/manifests/t" {
            &top
        } else if let Some((_, b)) = by_digest.iter().find(|(p, _)| p == path) {
            b
        } else {
            return false;
        };
        answer_ok(c, body.as_bytes());
        true
    });
    let out = s
        .strata(&["pull", "--json", "--plain-http", &reg.reference(), "img"])
        .success()
        .json();
    assert_eq!(out["digest"], want_top.as_str(), "{out}");
    assert_eq!(out["manifest"], want_manifest.as_str(), "{out}");
    assert_eq!(s.info("img")["kind"], "committed");
}

/// An index of thousands of entries for platforms strata does not run, each with a
/// long name: `not_found`, one short line naming the first few, each clipped, and
/// how many more (audit: 150,000 entries of 200 characters made one 33 MB line).
#[test]
fn an_index_of_many_unknown_platforms_is_listed_briefly() {
    const ENTRIES: usize = 3000;
    let s = setup!("native");
    let manifests: Vec<serde_json::Value> = (0..ENTRIES)
        .map(|i| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{:064x}", i),
                "size": 1,
                "platform": {"os": "linux", "architecture": format!("{i}{}", "z".repeat(300))},
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
    .to_string();
    let reg = Hostile::start(move |head, c| {
        if path_of(head) != "/v2/x/y/manifests/t" {
            return false;
        }
        answer_ok(c, index.as_bytes());
        true
    });
    let run = s.strata(&["pull", "--plain-http", &reg.reference(), "img"]);
    assert_eq!(run.code, 3, "{}", run.session());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.session());
    assert!(
        run.stderr.len() < 16 * 1024,
        "{} bytes on stderr",
        run.stderr.len()
    );
    assert!(
        run.stderr.contains(&format!("… and {} more", ENTRIES - 16)),
        "{}",
        &run.stderr[..run.stderr.len().min(4000)]
    );
    assert_eq!(s.names(&[]), Vec::<String>::new());
}

/// A registry that could never be reached (a port past 65535 or 0, an address of
/// 999.1.1.1, a host starting with `-`) is `invalid` before any request, for pull,
/// push and login alike (they were `internal`: the parser took any digits, and
/// login tried the DNS), and nothing is stored.
#[test]
fn unreachable_registry_names_are_invalid() {
    let s = setup!("native");
    s.layer("top", None, &base_ops());
    let auth = s.scratch("auth.json");
    let env = [("REGISTRY_AUTH_FILE", auth.to_str().unwrap())];
    let fails = |args: &[&str]| {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let run = s.strata_with(
            &all,
            With {
                stdin: Some(b"pw\n"),
                env: &env,
                ..Default::default()
            },
        );
        run.fails_json("invalid");
    };
    for r in ["127.0.0.1:99999/app", "127.0.0.1:0/app", "999.1.1.1/app"] {
        fails(&["pull", "--plain-http", r]);
        fails(&["push", "--plain-http", "top", r]);
    }
    for host in ["127.0.0.1:99999", "999.1.1.1", "-x", "h:0", "a-.example"] {
        fails(&["login", "-u", "a", "--password-stdin", "--", host]);
    }
    assert!(!auth.exists());
}

/// A reference without a registry is a Docker Hub one: refused there, the login hint
/// names `docker.io` (it named the reference's first part: `strata login ubuntu:22.04`,
/// `strata login myuser`). `127.0.0.1:PORT` alone is a Docker Hub repository too: the
/// registry that cannot be reached is named docker.io (it read as if 127.0.0.1:PORT
/// could not be), with a hint that a registry reference needs a repository. Docker Hub
/// is reached only through `HTTP_PROXY` (a fake answering 401, or a closed port), so
/// nothing leaves the machine.
#[test]
fn a_reference_without_a_registry_names_docker_hub() {
    use std::sync::{Arc, Mutex};
    let s = setup!("native");
    s.layer("top", None, &base_ops());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let proxy = Hostile::start(move |head, c| {
        seen.lock().unwrap().push(path_of(head).to_string());
        let _ = write!(
            c,
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        true
    });
    let via = |proxy: &str, args: &[&str]| {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let env = [("HTTP_PROXY", proxy), ("NO_PROXY", "")];
        s.strata_with(
            &all,
            With {
                env: &env,
                ..Default::default()
            },
        )
    };
    let fake = format!("http://{}", proxy.host);
    let login = "strata login docker.io --plain-http --username USER";
    let repository_hint = "a registry reference needs a repository, HOST:PORT/REPOSITORY[:TAG]";
    for r in ["ubuntu:22.04", "myuser/app:v1"] {
        let run = via(&fake, &["pull", "--plain-http", r]).fails_json("invalid");
        assert!(run.stderr.contains(login), "{}", run.session());
        assert!(!run.stderr.contains(repository_hint), "{}", run.session());
    }
    let paths = asked.lock().unwrap().join(" ");
    assert!(
        paths.contains("http://index.docker.io/v2/library/ubuntu/manifests/22.04")
            && paths.contains("http://index.docker.io/v2/myuser/app/manifests/v1"),
        "{paths}"
    );
    let run = via(&fake, &["pull", "--plain-http", "127.0.0.1:15000"]).fails_json("invalid");
    assert!(
        run.stderr.contains(login) && run.stderr.contains(repository_hint),
        "{}",
        run.session()
    );

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = via(&nobody, &["push", "--plain-http", "top", "127.0.0.1:15000"]);
    let run = run.fails_json("internal");
    assert!(
        run.stderr
            .contains("cannot push to 127.0.0.1:15000: the registry docker.io cannot be reached")
            && run.stderr.contains(repository_hint),
        "{}",
        run.session()
    );
}

/// A token service that is not an http(s) address (`Bearer realm="file:///etc/passwd"`)
/// is `invalid`, named, for pull, push and login, with and without credentials (it was
/// `internal`, "the registry cannot be reached: URL scheme is not allowed").
#[test]
fn a_token_realm_not_on_http_is_invalid() {
    let s = setup!("native");
    s.layer("top", None, &base_ops());
    // Every request is refused with the challenge.
    let reg = Hostile::start(|_, c| {
        let _ = write!(
            c,
            "HTTP/1.1 401 Unauthorized\r\n\
             WWW-Authenticate: Bearer realm=\"file:///etc/passwd\",service=\"x\"\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        true
    });
    let auth = s.scratch("auth.json");
    let env = [("REGISTRY_AUTH_FILE", auth.to_str().unwrap())];
    let r = reg.reference();
    let u = ["-u", "a", "--password-stdin"];
    let login = ["login", "--plain-http", &reg.host];
    let pull = ["pull", "--plain-http", &r];
    let push = ["push", "--plain-http", "top", &r];
    for (args, creds) in [
        (&login[..], true),
        (&pull, false),
        (&pull, true),
        (&push, false),
    ] {
        let mut args = args.to_vec();
        if creds {
            args.extend_from_slice(&u);
        }
        let run = with_env(&s, &args, &env, Some(b"pw\n")).fails_json("invalid");
        assert!(
            run.stderr
                .contains("not an http:// or https:// address (file:///etc/passwd)"),
            "{}",
            run.session()
        );
    }
    assert!(!auth.exists());
    assert_eq!(s.names(&[]), vec!["top".to_string()]);
}

/// A layer removed just after its pull applied it (`rm` while the pull is paused at
/// `pull:applied`): the pull fails `not_found` with the hint to pull again, as when the
/// layer below goes (it was a bare "snapshot `sha256:…` does not exist"); pulling
/// again then works.
#[test]
fn a_layer_removed_after_its_apply_says_pull_again() {
    let s = setup!("native");
    let reg = Hostile::start(|_, _| false);
    let r = reg.reference();
    let pull = ["-o", "json", "pull", "--plain-http", &r, "app"];
    let paused = Paused::start(&s, &pull, "pull:applied");
    // One layer: its chain ID is its diff ID, the digest of the uncompressed blob.
    s.strata(&["rm", &Hostile::layer_digest()]).success();
    let out = paused.resume();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let err: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(err["error"]["kind"], "not_found", "{stderr}");
    assert!(
        err["error"]["hints"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h.as_str().is_some_and(|h| h
                .contains("another process removed a layer")
                && h.contains("pull again")))),
        "{stderr}"
    );
    assert_eq!(s.names(&[]), Vec::<String>::new());
    s.strata(&pull[2..]).success();
}

/// A password on stdin that is not UTF-8 is `invalid`, said so, before any request
/// (it was `internal`: "stream did not contain valid UTF-8").
#[test]
fn a_password_that_is_not_utf8_is_invalid() {
    let s = setup!("native");
    let auth = s.scratch("auth.json");
    let env = [("REGISTRY_AUTH_FILE", auth.to_str().unwrap())];
    let run = s.strata_with(
        &[
            "-o",
            "json",
            "login",
            "127.0.0.1:1",
            "-u",
            "alice",
            "--password-stdin",
        ],
        With {
            stdin: Some(b"p\xff\n"),
            env: &env,
            ..Default::default()
        },
    );
    let run = run.fails_json("invalid");
    assert!(run.stderr.contains("must be UTF-8"), "{}", run.session());
    assert!(!auth.exists());
}

/// A manifest pulled by digest whose bytes have another digest is named a manifest
/// (it was "blob sha256:… has digest …"), `invalid`, and nothing is committed.
#[test]
fn a_manifest_of_other_bytes_is_named_a_manifest() {
    let s = setup!("native");
    let digest = sha256_of(Hostile::manifest().as_bytes());
    let path = format!("/v2/x/y/manifests/{digest}");
    let reg = Hostile::start(move |head, c| {
        if path_of(head) != path {
            return false;
        }
        answer_ok(c, format!("{} ", Hostile::manifest()).as_bytes());
        true
    });
    let r = format!("{}/x/y@{digest}", reg.host);
    let run = s.fails(&["pull", "--plain-http", &r, "img"], "invalid");
    let message = run.json_error()["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with(&format!("manifest {digest} of {r} has digest sha256:"))
            && !message.contains("blob"),
        "{}",
        run.session()
    );
    assert_eq!(s.names(&[]), Vec::<String>::new());
}

/// A layer whose connection closes halfway through (its `Content-Length` says
/// more): said to be cut off, after the tries, naming the blob (it was said that
/// the registry "cannot be reached"); still `internal`.
#[test]
fn a_download_cut_off_is_said_to_be_cut_off() {
    let s = setup!("native");
    let reg = Hostile::start(|head, c| {
        if !is_layer(head) {
            return false;
        }
        answer_head(c, Hostile::LAYER.len());
        let _ = c.write_all(&Hostile::LAYER[..512]);
        true
    });
    let run = s.fails(&["pull", "--plain-http", &reg.reference()], "internal");
    let message = run.json_error()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!(
            "blob {}: the download was cut off before its end (tried 3 times)",
            Hostile::layer_digest()
        )) && !message.contains("cannot be reached"),
        "{}",
        run.session()
    );
    assert_eq!(s.names(&[]), Vec::<String>::new());
}

/// A registry that takes connections and never answers is asked as many times
/// as a request is tried, and no more: the second look at a token service's
/// address is for a request that could not be made (review: a fourth `GET
/// /v2/` after the three timed out, waited for as long again).
#[test]
fn a_silent_registry_is_not_asked_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = setup!("native");
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(c);
        }
    });
    let env = [("STRATA_REGISTRY_TIMEOUT", "1")];
    let r = format!("{host}/x/y:t");
    with_env(&s, &["pull", "--plain-http", &r], &env, None).fails_json("internal");
    assert_eq!(asked.load(Ordering::SeqCst), 3, "tries of one request");
}

/// `STRATA_REGISTRY_TIMEOUT` that is not a whole number of seconds from 1 up (or is
/// past what a deadline can hold) is refused, one `error:` line, `invalid`, before
/// any request (it was ignored, and `0` failed every request; a huge one panicked).
#[test]
fn a_bad_registry_timeout_is_refused() {
    let s = Store::uninitialized("native");
    // Nothing listens there: a request would fail as `internal`.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{dead}");
    let auth = s.scratch("auth.json");
    for bad in ["abc", "-1", "0.5", "0", "4294967296"] {
        let env = [
            ("STRATA_REGISTRY_TIMEOUT", bad),
            ("REGISTRY_AUTH_FILE", auth.to_str().unwrap()),
        ];
        let pull = ["pull", "--plain-http", &format!("{host}/x:y")];
        let login = [
            "login",
            &host,
            "-u",
            "u",
            "--password-stdin",
            "--plain-http",
        ];
        for args in [&pull[..], &login[..]] {
            let with = With {
                stdin: Some(b"s3cret\n"),
                env: &env,
                ..With::default()
            };
            let run = s.strata_with(args, with);
            assert_eq!(run.code, 6, "{}", run.session());
            assert_eq!(
                run.stderr,
                format!(
                    "error: STRATA_REGISTRY_TIMEOUT=\"{bad}\" is not a whole number of seconds from 1 to 4294967295\n"
                ),
                "{}",
                run.session()
            );
        }
    }
    assert!(!auth.exists());
}

/// A layer blob the registry does not have: `not_found`, naming the blob.
#[test]
fn a_missing_blob_is_named() {
    let s = setup!("native");
    let reg = Hostile::start(|head, c| {
        if !is_layer(head) {
            return false;
        }
        let body = r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#;
        let _ = write!(
            c,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        true
    });
    let run = s.fails(&["pull", "--plain-http", &reg.reference()], "not_found");
    let message = run.json_error()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!(
            "blob {}: blob unknown to registry",
            Hostile::layer_digest()
        )),
        "{}",
        run.session()
    );
    assert_eq!(s.names(&[]), Vec::<String>::new());
}

/// A layer blob shorter than its descriptor says, with an honest Content-Length:
/// `invalid`, said as such with both sizes, not retried (it was "does not match its
/// digest").
#[test]
fn a_short_blob_is_said_to_be_short() {
    let s = setup!("native");
    let reg = Hostile::start(|head, c| {
        if !is_layer(head) {
            return false;
        }
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\nContent-Length: 512\r\nConnection: close\r\n\r\n"
        );
        let _ = c.write_all(&Hostile::LAYER[..512]);
        true
    });
    let run = s.fails(&["pull", "--plain-http", &reg.reference()], "invalid");
    let message = run.json_error()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&Hostile::layer_digest())
            && message.contains("is 512 bytes, but its descriptor says 1024")
            && !message.contains("tried"),
        "{}",
        run.session()
    );
    assert!(
        run.stderr.contains("nothing was committed"),
        "{}",
        run.session()
    );
    assert_eq!(s.names(&[]), Vec::<String>::new());
}

/// `STRATA_REGISTRY_TIMEOUT` bounds each read of a blob, not the whole download: a
/// layer sent in pieces over more than that arrives; one that stops coming is given
/// up (`internal`, after the tries), naming the blob and saying it timed out (it was
/// said that the registry "cannot be reached").
#[test]
fn a_blob_may_take_long_but_not_stall() {
    let s = setup!("native");
    let reg = Hostile::start(|head, c| {
        if !is_layer(head) {
            return false;
        }
        answer_head(c, Hostile::LAYER.len());
        for piece in Hostile::LAYER.chunks(256) {
            let _ = c.write_all(piece);
            let _ = c.flush();
            std::thread::sleep(Duration::from_millis(1000));
        }
        true
    });
    let env = [("STRATA_REGISTRY_TIMEOUT", "2")];
    let with = || With {
        env: &env,
        ..With::default()
    };
    let started = Instant::now();
    s.strata_with(&["pull", "--plain-http", &reg.reference(), "slow"], with())
        .success();
    assert!(started.elapsed() >= Duration::from_secs(3));

    let stalled = Hostile::start(|head, c| {
        if !is_layer(head) {
            return false;
        }
        answer_head(c, Hostile::LAYER.len());
        let _ = c.write_all(&Hostile::LAYER[..256]);
        std::thread::sleep(Duration::from_secs(30));
        true
    });
    // Another store: this one has the layer now.
    let s = setup!("native");
    let started = Instant::now();
    let run = s.strata_with(
        &[
            "-o",
            "json",
            "pull",
            "--plain-http",
            &stalled.reference(),
            "stalled",
        ],
        with(),
    );
    let run = run.fails_json("internal");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{}",
        run.session()
    );
    let message = run.json_error()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!("blob {}", Hostile::layer_digest()))
            && message.contains("the registry stopped answering (timed out)")
            && message.contains("tried 3 times"),
        "{}",
        run.session()
    );
}

/// A blob redirected to another host (here another port): strata's own download
/// follows it without the credentials, which went only to the registry.
#[test]
fn a_blob_redirect_elsewhere_gets_no_credentials() {
    let s = setup!("native");
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let storage = TcpListener::bind("127.0.0.1:0").unwrap();
    let storage_port = storage.local_addr().unwrap().port();
    let seen = heads.clone();
    std::thread::spawn(move || {
        for mut c in storage.incoming().flatten() {
            seen.lock().unwrap().push(request_head(&mut c));
            answer_head(&mut c, Hostile::LAYER.len());
            let _ = c.write_all(&Hostile::LAYER);
        }
    });
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let registry_heads = asked.clone();
    let reg = Hostile::start(move |head, c| {
        if !is_layer(head) {
            return false;
        }
        registry_heads.lock().unwrap().push(head.to_string());
        let _ = write!(
            c,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{storage_port}/blob\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        true
    });
    let run = s.strata_with(
        &[
            "pull",
            "--plain-http",
            "-u",
            "ci",
            "--password-stdin",
            &reg.reference(),
            "img",
        ],
        With {
            stdin: Some(b"s3cret\n"),
            ..With::default()
        },
    );
    run.success();
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].contains("authorization: basic"),
        "no credentials to the registry: {asked:?}"
    );
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("get /blob "), "{heads:?}");
    assert!(
        !heads[0].contains("authorization"),
        "credentials sent on: {heads:?}"
    );
}

/// A registry on HTTPS that names a token service on plain HTTP: credentials are not
/// sent there (login, push with `-u`, pull with stored credentials are `invalid`, and
/// the token server never hears of `ci`); an anonymous pull still asks it for a token;
/// with `--plain-http` on a registry of plain HTTP the same service is used (`token_auth`).
#[test]
fn token_service_on_plain_http_under_tls() {
    let a = setup!("native");
    let Some(reg) = Registry::start_with(Auth::Token("ci", "s3cret"), true) else {
        return;
    };
    let tokens = reg.token.as_ref().unwrap();
    let (home, r) = app_with_home(&a, &reg);
    let cert = reg.cert();
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("SSL_CERT_FILE", cert.to_str().unwrap()),
    ];
    let refused = |run: Run| {
        let run = run.fails_json("invalid");
        assert!(
            run.stderr.contains("token service on plain HTTP")
                && run
                    .stderr
                    .contains(&format!("http://127.0.0.1:{}/token", tokens.port)),
            "{}",
            run.session()
        );
    };
    let login = ["login", &reg.host(), "-u", "ci", "--password-stdin"];
    refused(with_env(&a, &login, &env, Some(b"s3cret\n")));
    assert!(!home.join(".config/containers/auth.json").exists());
    let push = ["push", "-u", "ci", "--password-stdin", "app", &r];
    refused(with_env(&a, &push, &env, Some(b"s3cret\n")));

    // Credentials stored by hand (as another tool would) are not sent either.
    let auth = a.scratch("auth.json");
    let stored = format!(
        r#"{{"auths":{{"{}":{{"auth":"Y2k6czNjcmV0"}}}}}}"#,
        reg.host()
    );
    fs::write(&auth, stored).unwrap();
    let stored_env = [
        env[0],
        env[1],
        ("REGISTRY_AUTH_FILE", auth.to_str().unwrap()),
    ];
    refused(with_env(&a, &["pull", &r], &stored_env, None));
    assert!(
        !tokens.requests().contains("ci|") && !tokens.requests().contains("?|"),
        "credentials reached the token service: {}",
        tokens.requests()
    );

    // Anonymous: nothing secret to send, so the token is fetched as before.
    with_env(&a, &["pull", &r], &env, None).fails_json("not_found");
    assert!(
        tokens.requests().contains("-|repository:team/app:pull"),
        "no anonymous token: {}",
        tokens.requests()
    );
}

both_drivers!(
    image_index_picks_the_host_platform,
    interrupted_pull_resumes,
    push_pull_round_trip,
    shared_base,
    corrupted_blob,
    export_skopeo_pull,
    push_skopeo_umoci,
    cross_repository_mount
);

/// A bearer token that expires during a pull (here: the first one the
/// token service gives is refused for the layer) is renewed, once, and the
/// pull goes on: strata fetches blobs itself now, with the token oci-client
/// got, and oci-client renewed its own.
#[test]
fn an_expired_token_is_renewed_during_a_pull() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let s = setup!("native");
    let host = Arc::new(Mutex::new(String::new()));
    let issued = Arc::new(AtomicUsize::new(0));
    let (h, n) = (host.clone(), issued.clone());
    let reg = Hostile::start(move |head, c| {
        let answer = |c: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(body);
            true
        };
        if path_of(head) == "/v2/" {
            let realm = format!("http://{}/token", h.lock().unwrap());
            let challenge = format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"t\"\r\n");
            return answer(c, "401 Unauthorized", &challenge, b"{}");
        }
        if path_of(head).starts_with("/token") {
            let token = format!("token-{}", n.fetch_add(1, Ordering::SeqCst) + 1);
            return answer(
                c,
                "200 OK",
                "",
                format!("{{\"token\":\"{token}\"}}").as_bytes(),
            );
        }
        if is_layer(head) && !head.contains("authorization: bearer token-2") {
            return answer(c, "401 Unauthorized", "", b"");
        }
        false
    });
    *host.lock().unwrap() = reg.host.clone();
    let run = s.strata(&["pull", "--plain-http", &reg.reference(), "img"]);
    run.success();
    assert_eq!(issued.load(Ordering::SeqCst), 2, "one renewal");
    assert!(s.names(&[]).contains(&"img".to_string()));
}

/// A chain whose top layer holds a file named `.wh.f` (a name OCI layers keep for
/// deletions, so no layer can carry it) is not pushed at all: `invalid`, naming the
/// file, and the registry gets no blob and no manifest, not even the good base layer's.
#[test]
fn a_name_kept_for_whiteouts_pushes_nothing() {
    let s = setup!("native");
    let Some(reg) = Registry::start() else { return };
    s.layer("base", None, &base_ops());
    s.layer(
        "app",
        Some("base"),
        &[file("/etc/.wh.passwd", "mine\n", 0o644)],
    );
    let r = reg.reference("team/app:v1");
    let run = s.fails(&["push", "--plain-http", "app", &r], "invalid");
    assert!(
        run.stderr
            .contains("`etc/.wh.passwd` cannot go into a layer"),
        "{}",
        run.session()
    );
    let v2 = reg.storage.join("docker/registry/v2");
    for what in ["blobs", "repositories"] {
        assert!(
            !v2.join(what).exists(),
            "a refused push left {what} in the registry"
        );
    }
}
