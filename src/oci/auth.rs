//! Registry credentials: `--username/--password-stdin`, else the
//! Podman/Docker auth files, else anonymous; and `strata login`'s file.
//!
//! Files read, first match wins (Podman's order): `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`). Each has
//! `{"auths": {"HOST": {"auth": base64("user:password")}}}`; credential
//! helpers are not run. `strata logout` removes entries from `strata
//! login`'s file only.

use crate::store::{Error, Result};
use base64::Engine as _;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A username and password for one registry.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The auth files consulted, in order.
pub fn files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = env_path("REGISTRY_AUTH_FILE") {
        out.push(p);
    }
    if let Some(d) = env_path("XDG_RUNTIME_DIR") {
        out.push(d.join("containers/auth.json"));
    }
    if let Some(d) = env_path("XDG_CONFIG_HOME").or_else(|| home().map(|h| h.join(".config"))) {
        out.push(d.join("containers/auth.json"));
    }
    match env_path("DOCKER_CONFIG") {
        Some(d) => out.push(d.join("config.json")),
        None => {
            if let Some(h) = home() {
                out.push(h.join(".docker/config.json"));
            }
        }
    }
    out
}

/// Where `strata login` writes: `$REGISTRY_AUTH_FILE`, else
/// `$XDG_RUNTIME_DIR/containers/auth.json` (as Podman), else
/// `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`.
pub fn login_file() -> Result<PathBuf> {
    env_path("REGISTRY_AUTH_FILE")
        .or_else(|| env_path("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")))
        .or_else(|| {
            env_path("XDG_CONFIG_HOME")
                .or_else(|| home().map(|h| h.join(".config")))
                .map(|d| d.join("containers/auth.json"))
        })
        .ok_or_else(|| {
            Error::invalid("no place for credentials: neither XDG_RUNTIME_DIR nor HOME is set")
                .with_hint("set REGISTRY_AUTH_FILE=FILE")
        })
}

/// The keys a registry's entry may have in an auth file.
fn host_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if registry == "docker.io" || registry == "index.docker.io" {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("docker.io".into());
        keys.push("index.docker.io".into());
    }
    keys
}

fn decode(entry: &Value) -> Option<Credentials> {
    let auth = entry.get("auth")?.as_str()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

fn read_file(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::invalid(format!("{} is not valid JSON", path.display())).with_source(e)
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// Credentials for `registry` from the auth files, if any.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    let keys = host_keys(registry);
    for f in files() {
        let Some(v) = read_file(&f)? else { continue };
        if let Some(c) = held(&v, &keys) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// The credentials auth file `v` holds under the first of `keys` that has
/// some.
fn held(v: &Value, keys: &[String]) -> Option<Credentials> {
    let auths = v.get("auths")?;
    keys.iter().find_map(|k| auths.get(k).and_then(decode))
}

/// Refuses a user name that the auth files could not give back: they keep
/// `base64(user:password)` and split it at the first `:`, so `al:ice` with
/// `pw` would be read back as user `al` with password `ice:pw` (RFC 7617
/// forbids `:` in a user-id, and control characters in both). Empty is
/// refused too: it names nobody.
pub fn check_username(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("the user name is empty")
            .with_hint("type the user name at the prompt, or give --username USER"));
    }
    let problem = if name.contains(':') {
        "contains `:`, which separates it from the password in HTTP basic auth"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    let quoted = format!("{name:?}");
    Err(Error::invalid(format!(
        "the user name {} {problem}",
        super::clipped(&quoted)
    ))
    .with_hint("give the registry account's user name (or the token's), without `:`"))
}

/// Reads a password from stdin (one line, the newline dropped).
pub fn password_from_stdin() -> Result<String> {
    use std::io::Read;
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| {
        // Not UTF-8: the value given is wrong, not the machine (it was
        // internal, "stream did not contain valid UTF-8").
        if e.kind() == std::io::ErrorKind::InvalidData {
            Error::invalid("the password must be UTF-8")
                .with_hint("give the password (or token) on stdin as UTF-8 text")
        } else {
            Error::io("cannot read the password from stdin", e)
        }
    })?;
    let p = s.strip_suffix('\n').unwrap_or(&s);
    let p = p.strip_suffix('\r').unwrap_or(p);
    if p.is_empty() {
        return Err(Error::invalid("the password on stdin is empty"));
    }
    Ok(p.to_string())
}

/// Stores credentials for `registry` in `path` (created with mode 0600;
/// other entries kept). Returns the file written.
pub fn store(path: &Path, registry: &str, c: &Credentials) -> Result<()> {
    let mut v = read_file(path)?.unwrap_or_else(|| json!({}));
    if !v.is_object() {
        v = json!({});
    }
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    let obj = v.as_object_mut().expect("an object");
    let auths = obj.entry("auths").or_insert_with(|| json!({}));
    if !auths.is_object() {
        *auths = json!({});
    }
    auths
        .as_object_mut()
        .expect("an object")
        .insert(registry.to_string(), json!({ "auth": auth }));
    write(path, &v)
}

/// What [`remove`] took out of an auth file.
pub struct Removed {
    /// The entries' keys, in the order [`lookup`] tries them.
    pub keys: Vec<String>,
    /// The user name of the first entry with one (the one push and pull
    /// would have used).
    pub username: Option<String>,
}

/// Removes `registry`'s entries from `path`: every key [`lookup`] would
/// take for it (`HOST`, `https://HOST`, Docker Hub's aliases…), with or
/// without credentials in them; the file's other entries and fields are
/// kept. None, and nothing written, when the file or the entry is missing.
pub fn remove(path: &Path, registry: &str) -> Result<Option<Removed>> {
    let Some(mut v) = read_file(path)? else {
        return Ok(None);
    };
    let Some(auths) = v.get_mut("auths").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    let mut removed = Removed {
        keys: Vec::new(),
        username: None,
    };
    for k in host_keys(registry) {
        if let Some(entry) = auths.remove(&k) {
            if removed.username.is_none() {
                removed.username = decode(&entry).map(|c| c.username);
            }
            removed.keys.push(k);
        }
    }
    if removed.keys.is_empty() {
        return Ok(None);
    }
    write(path, &v)?;
    Ok(Some(removed))
}

/// The auth files other than `except` that hold credentials for
/// `registry`, which push and pull would still use: Podman's other files,
/// Docker's. A file that cannot be read is left out (`except` is the one
/// asked about).
pub fn holding_elsewhere(registry: &str, except: &Path) -> Vec<PathBuf> {
    let keys = host_keys(registry);
    files()
        .into_iter()
        .filter(|f| f != except)
        .filter(|f| matches!(read_file(f), Ok(Some(v)) if held(&v, &keys).is_some()))
        .collect()
}

/// The registries with an entry in `strata login`'s file, as `logout`
/// takes them (`https://HOST/v1/` is HOST): for completion. Empty when
/// there is no file or it cannot be read.
pub fn logged_in() -> Vec<String> {
    let Ok(file) = login_file() else {
        return Vec::new();
    };
    let Ok(Some(v)) = read_file(&file) else {
        return Vec::new();
    };
    let Some(auths) = v.get("auths").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut hosts: Vec<String> = auths
        .keys()
        .map(|k| {
            let k = k
                .strip_prefix("https://")
                .or_else(|| k.strip_prefix("http://"))
                .unwrap_or(k);
            k.split('/').next().unwrap_or(k).to_string()
        })
        .filter(|h| super::registry::is_registry_host(h))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Writes `v` as the auth file `path`: mode 0600, its directory made
/// (0700) when missing, atomically.
fn write(path: &Path, v: &Value) -> Result<()> {
    use crate::store::newfile::NewFile;
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let text = serde_json::to_vec_pretty(v).map_err(|e| Error::internal(e.to_string()))?;
    // Written unnamed and synced before it replaces the file (which other
    // tools share): a killed login or logout leaves the old file and no
    // temporary.
    let write = || -> std::io::Result<()> {
        let mut f = NewFile::create_in(dir, 0o600)?;
        f.as_file_mut().write_all(&text)?;
        f.as_file_mut().write_all(b"\n")?;
        f.as_file().sync_all()?;
        f.persist(path)
    };
    write().map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}
