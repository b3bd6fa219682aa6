//! Registries and OCI layouts: `push` then `pull` into an empty store gives the same
//! tree, a second push uploads nothing, images sharing a base share its snapshots, a
//! corrupted blob commits nothing, and skopeo/umoci interoperate through `export`,
//! `push` and OCI layouts. Runs Debian's `docker-registry` (CNCF distribution) on a
//! loopback port, stopped by its PID.

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
    _dir: tempfile::TempDir,
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// True when `tools` are installed; otherwise prints why the test is skipped (panics
/// with `CI=true`, so CI never skips).
fn require(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {} (apt-get install docker-registry skopeo umoci)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {why}");
    }
    eprintln!("skipped: {why}");
    false
}

impl Registry {
    fn start() -> Option<Registry> {
        if !Path::new(REGISTRY_BIN).exists() && !require(&["docker-registry"]) {
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
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
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

    /// `GET /v2/` answers 200.
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
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
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
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{r}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
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
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{r}"))
        .arg(format!("oci:{}:v1", layout.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = a.scratch("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
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
}

both_drivers!(
    push_pull_round_trip,
    shared_base,
    corrupted_blob,
    export_skopeo_pull,
    push_skopeo_umoci
);
