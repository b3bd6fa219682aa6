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

/// `$HOME` when it is an absolute path: a relative one named files in the
/// current directory (audit). Unset, there is no home here (the passwd
/// entry is not asked, as it is for the store: the tests rely on an unset
/// `HOME` reading no file of the machine's).
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute())
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
    if let Some(d) = crate::config::xdg_dir("XDG_RUNTIME_DIR") {
        out.push(d.join("containers/auth.json"));
    }
    if let Some(d) =
        crate::config::xdg_dir("XDG_CONFIG_HOME").or_else(|| home().map(|h| h.join(".config")))
    {
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
        .or_else(|| {
            crate::config::xdg_dir("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json"))
        })
        .or_else(|| {
            crate::config::xdg_dir("XDG_CONFIG_HOME")
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

/// The most bytes of an auth file strata reads. Docker's and Podman's
/// hold about 100 bytes a registry, so this is some 40,000 registries;
/// reading `REGISTRY_AUTH_FILE=/dev/zero` whole grew without bound (audit).
const MAX_FILE_BYTES: u64 = 4 << 20;

fn read_file(path: &Path) -> Result<Option<Value>> {
    match crate::config::read_at_most(path, MAX_FILE_BYTES) {
        Ok(Some(b)) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::invalid(format!("{} is not valid JSON", path.display())).with_source(e)
        }),
        Ok(None) => Err(Error::invalid(format!(
            "cannot use the auth file {}: it is larger than {} MiB, the most strata reads",
            path.display(),
            MAX_FILE_BYTES >> 20
        ))
        .with_hint("an auth file holds about 100 bytes a registry: is it the right file?")),
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
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    change(path, true, |path, v| {
        let mut v = v.unwrap_or_else(|| json!({}));
        auths_of(path, &mut v)?.insert(registry.to_string(), json!({ "auth": auth }));
        write(path, &v)
    })
}

/// Runs `f` on auth file `path` (through a symlink to the file it names,
/// as docker does) and its content (None when missing), under an
/// exclusive lock on its directory: a login or logout reads, changes and
/// replaces the whole file, and two at once lost one's entry, or brought
/// back the credentials a logout said it removed (audit). The lock is on
/// the directory, not a file of its own, so nothing is left beside the
/// file, which other tools share. The directory is made (0700) when
/// missing if `make`; else there is no file to change (`logout` creates
/// nothing).
fn change<T>(
    path: &Path,
    make: bool,
    f: impl FnOnce(&Path, Option<Value>) -> Result<T>,
) -> Result<T> {
    use std::os::unix::fs::DirBuilderExt;
    let path = through_links(path)?;
    let dir = dir_of(&path);
    if !make && !dir.exists() {
        return f(&path, None);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    // A directory its owner cannot read (`d-wx`) cannot be opened to be
    // locked, nor can every file system lock: the file is then changed
    // unlocked, as it always was before (review).
    let unlockable = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EACCES | libc::ENOLCK | libc::EOPNOTSUPP)
        )
    };
    let locked = match std::fs::File::open(dir).and_then(|d| d.lock().map(|()| d)) {
        Ok(d) => Some(d),
        Err(e) if unlockable(&e) => None,
        Err(e) => return Err(Error::io(format!("cannot lock {}", dir.display()), e)),
    };
    let done = f(&path, read_file(&path)?);
    drop(locked);
    done
}

/// The directory of file `path`: "." for a bare name, whose parent is ""
/// (review: `REGISTRY_AUTH_FILE=auth.json` could not be locked, and
/// logout took it for missing).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `path`, or the file it names when it is a symlink (followed as the
/// kernel does, at most 40 times), which may not exist yet.
fn through_links(path: &Path) -> Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            Ok(dest) => path = path.parent().unwrap_or(Path::new("/")).join(dest),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }
    Err(Error::invalid(format!(
        "{} is a loop of symbolic links",
        path.display()
    )))
}

/// The `auths` object of auth file `v` (made when missing). A file whose
/// top level or `auths` is not an object is not one strata may rewrite
/// (audit: `[1,2]` was replaced by strata's entry), as JSON that does not
/// parse is not.
fn auths_of<'a>(path: &Path, v: &'a mut Value) -> Result<&'a mut serde_json::Map<String, Value>> {
    let not_auth = |what: &str| {
        Error::invalid(format!(
            "{} is not an auth file: {what} is not a JSON object",
            path.display()
        ))
        .with_hint("fix or move the file; strata rewrites only auth files it can read")
    };
    let obj = v.as_object_mut().ok_or_else(|| not_auth("its top level"))?;
    obj.entry("auths")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| not_auth("its `auths`"))
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
    change(path, false, |path, v| remove_from(path, v, registry))
}

fn remove_from(path: &Path, v: Option<Value>, registry: &str) -> Result<Option<Removed>> {
    let Some(mut v) = v else {
        return Ok(None);
    };
    if v.as_object().is_some_and(|o| !o.contains_key("auths")) {
        return Ok(None);
    }
    let auths = auths_of(path, &mut v)?;
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

/// Writes `v` as the auth file `path` (no symlink; its directory exists:
/// see [`change`]): mode 0600, atomically.
fn write(path: &Path, v: &Value) -> Result<()> {
    use crate::store::newfile::NewFile;
    use std::io::Write;
    let dir = dir_of(path);
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
