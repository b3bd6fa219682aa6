//! The YAML config file and the resolution of settings from flags, the
//! environment, the file and defaults.

use crate::printer::Format;
use crate::store::{Driver, Error, Result};
use std::path::{Path, PathBuf};

/// The config file's contents. Unknown keys are an error, so a typo is
/// caught rather than silently ignored.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The store directory.
    pub root: Option<PathBuf>,
    /// The driver for a new store.
    pub driver: Option<DriverName>,
    /// The default output format.
    pub output: Option<Format>,
    #[serde(default)]
    pub overlay: Overlay,
}

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Extra overlay mount options (e.g. `xino=off`); never `metacopy=on` or
    /// `redirect_dir=on` (refused: a snapshot's upper directory would not be
    /// its change).
    #[serde(default)]
    pub mount_options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverName {
    Overlay,
    Native,
}

impl DriverName {
    pub fn as_str(self) -> &'static str {
        Driver::from(self).as_str()
    }
}

impl From<Driver> for DriverName {
    fn from(d: Driver) -> DriverName {
        match d {
            Driver::Overlay => DriverName::Overlay,
            Driver::Native => DriverName::Native,
        }
    }
}

impl From<DriverName> for Driver {
    fn from(d: DriverName) -> Driver {
        match d {
            DriverName::Overlay => Driver::Overlay,
            DriverName::Native => Driver::Native,
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Flag,
    Environment,
    File,
    /// Recorded in the store (its driver, chosen when it was created).
    Store,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Environment => "environment",
            Source::File => "file",
            Source::Store => "store",
            Source::Default => "default",
        }
    }
}

fn is_root() -> bool {
    crate::store::euid() == 0
}

/// The user's home directory, for the defaults: `$HOME` when it is an
/// absolute path, else (unset, empty or relative: audit, `HOME=` made the
/// store `.local/share/strata` in the current directory) the home the
/// passwd database gives the effective user (getpwuid_r), when that is an
/// absolute path. None when neither is.
pub(crate) fn home_dir() -> Option<PathBuf> {
    let absolute = |p: &PathBuf| p.is_absolute();
    let env = std::env::var_os("HOME").map(PathBuf::from);
    env.filter(absolute).or_else(|| {
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok()??;
        Some(user.dir).filter(absolute)
    })
}

/// The XDG base directory `$name` (`XDG_DATA_HOME`…) when it is an
/// absolute path: the XDG Base Directory spec has a relative one ignored,
/// as an unset one is (audit: `XDG_DATA_HOME=x` made the store `x/strata`
/// in the current directory).
pub(crate) fn xdg_dir(name: &str) -> Option<PathBuf> {
    env_path(name).filter(|p| p.is_absolute())
}

/// The error for a default that needs a home directory when there is
/// none ([`home_dir`]).
fn no_home(what: &str) -> Error {
    let home = match std::env::var_os("HOME") {
        None => "unset".to_string(),
        Some(h) if h.is_empty() => "empty".to_string(),
        Some(h) => format!("`{}`, not an absolute path", h.to_string_lossy()),
    };
    Error::invalid(format!(
        "no home directory for the default {what}: $HOME is {home}, and user {} has no \
         home directory in the passwd database",
        nix::unistd::geteuid()
    ))
    .with_hint("give the store with --root DIR or STRATA_ROOT=DIR, or set $HOME")
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The environment variable naming the config file read in place of the
/// default one (beyond the SPEC: docs/design.md).
pub const CONFIG_VAR: &str = "STRATA_CONFIG";

/// The default config file: `/etc/strata/config.yaml` as root, else
/// `${XDG_CONFIG_HOME:-~/.config}/strata/config.yaml`; None for a user
/// without a home directory ([`home_dir`]), who has no default file.
pub fn default_path() -> Option<PathBuf> {
    if is_root() {
        Some(PathBuf::from("/etc/strata/config.yaml"))
    } else {
        let dir = xdg_dir("XDG_CONFIG_HOME").or_else(|| Some(home_dir()?.join(".config")))?;
        Some(dir.join("strata/config.yaml"))
    }
}

/// The default store: `/var/lib/strata` as root, else
/// `${XDG_DATA_HOME:-$HOME/.local/share}/strata`; `invalid` for a user
/// without a home directory ([`home_dir`]).
pub fn default_root() -> Result<PathBuf> {
    if is_root() {
        Ok(PathBuf::from("/var/lib/strata"))
    } else {
        let dir = match xdg_dir("XDG_DATA_HOME") {
            Some(dir) => dir,
            None => home_dir()
                .ok_or_else(|| no_home("store"))?
                .join(".local/share"),
        };
        Ok(dir.join("strata"))
    }
}

/// The config file read without `--config`, and where its name came from:
/// `$STRATA_CONFIG` when set and not empty (source `environment`), else
/// [`default_path`] (source `default`). Either may be missing; None when
/// there is no default file.
pub fn unnamed_path() -> Option<(PathBuf, Source)> {
    match env_path(CONFIG_VAR) {
        Some(path) => Some((path, Source::Environment)),
        None => Some((default_path()?, Source::Default)),
    }
}

/// The most bytes of a config file strata reads: one is a few lines of
/// YAML, and reading `--config /dev/zero` whole grew without bound (audit).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// How many `[` and `{` a config file may open (see [`load`]).
const MAX_FLOW_DEPTH: usize = 64;

/// How many `[` and `{` of `text` open a flow collection, YAML's comments
/// (a `#` starting a line or after a blank) left out: a bound on how deep
/// they nest. Closers are not counted down: one in a quoted string would
/// let a file nest deeper than it shows (review: `["]",` 60,000 times
/// took 16 s).
fn flow_depth(text: &str) -> usize {
    let mut openers = 0usize;
    for line in text.lines() {
        let mut after_blank = true;
        for b in line.bytes() {
            match b {
                b'#' if after_blank => break,
                b'[' | b'{' => openers += 1,
                _ => {}
            }
            after_blank = b == b' ' || b == b'\t';
        }
    }
    openers
}

/// Reads file `path` whole, or None when it has more than `limit` bytes
/// (only `limit + 1` are read: `/dev/zero` ends too). A pipe is read as a
/// file is (`--config <(…)`); a FIFO without a writer blocks in `open`,
/// as `cat`'s does.
pub(crate) fn read_at_most(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// The config file looked for: its path, where that came from (`flag`,
/// `environment` or `default`), and whether it was there to read.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub path: PathBuf,
    pub source: Source,
    pub found: bool,
}

/// Reads the config file: `named` (which must exist), else the one
/// [`unnamed_path`] names (which may be missing). Returns the file looked
/// for and its contents (the defaults when it is missing).
pub fn load(named: Option<&Path>) -> Result<(Lookup, File)> {
    let (path, source) = match named {
        Some(p) => (p.to_path_buf(), Source::Flag),
        None => match unnamed_path() {
            Some(unnamed) => unnamed,
            // No home directory: no file to read (and no relative path
            // to read one at); a store it would have named is given on
            // the line or in the environment, else refused (`resolve`).
            None => {
                let missing = Lookup {
                    path: PathBuf::from("~/.config/strata/config.yaml"),
                    source: Source::Default,
                    found: false,
                };
                return Ok((missing, File::default()));
            }
        },
    };
    let required = source == Source::Flag;
    let lookup = Lookup {
        path,
        source,
        found: true,
    };
    let path = &lookup.path;
    let text = match read_at_most(path, MAX_FILE_BYTES) {
        Ok(Some(bytes)) => String::from_utf8(bytes).map_err(|_| {
            Error::invalid(format!(
                "bad config file {}: it is not UTF-8 text",
                path.display()
            ))
        })?,
        Ok(None) => {
            return Err(Error::invalid(format!(
                "bad config file {}: it is larger than {} MiB, the most strata reads",
                path.display(),
                MAX_FILE_BYTES >> 20
            ))
            .with_hint("a config file is a few lines of YAML: is it the right file?"));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            let missing = Lookup {
                found: false,
                ..lookup
            };
            return Ok((missing, File::default()));
        }
        // A missing input file is `not_found`, as `apply`'s FILE is.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "the config file {} does not exist",
                path.display()
            )));
        }
        // A file that cannot be read (permissions, a directory) is an I/O
        // failure (audit); text that is not UTF-8 is a bad file (above).
        Err(e) => {
            let what = format!("cannot read the config file {}", path.display());
            return Err(Error::io(what, e));
        }
    };
    if text.trim().is_empty() {
        return Ok((lookup, File::default()));
    }
    // The YAML parser takes time quadratic in how deep `[` and `{` nest
    // (100,000 deep, 200 KB: over 30 s). Their number outside comments
    // bounds the depth, counted before it parses; one in a quoted string
    // counts too, which only overstates it (review: comments counted).
    let depth = flow_depth(&text);
    if depth > MAX_FLOW_DEPTH {
        return Err(Error::invalid(format!(
            "bad config file {}: it opens {depth} lists and maps (`[`, `{{`), more than the \
             {MAX_FLOW_DEPTH} strata parses (a config file has a few)",
            path.display()
        )));
    }
    let mut file: File = serde_yaml::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" line {}, column {}:", l.line(), l.column()))
            .unwrap_or_else(|| ":".into());
        // The library's message names the key; strip its own position suffix.
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        Error::invalid(format!("bad config file {}{at} {msg}", path.display()))
    })?;
    for option in &file.overlay.mount_options {
        if let Some(why) = refused_mount_option(option) {
            return Err(Error::invalid(format!(
                "bad config file {}: overlay.mount_options: `{}` {why}",
                path.display(),
                crate::store::key::shorten(option)
            )));
        }
    }
    // An empty `--root` is a usage error and an empty STRATA_ROOT counts as
    // unset; in the file, where nothing else would catch it, it is a bad value.
    if file.root.as_ref().is_some_and(|r| r.as_os_str().is_empty()) {
        return Err(Error::invalid(format!(
            "bad config file {}: `root` is empty (leave it out for the default store)",
            path.display()
        )));
    }
    if let Some(root) = &file.root {
        file.root = Some(root_in_file(root, path)?);
    }
    Ok((lookup, file))
}

/// Why an element of `overlay.mount_options` is refused, if it is. Each is
/// one option as the kernel takes it, added to every overlay mount and
/// printed line: refused when loaded, not left to fail every mount or, worse,
/// to mount (audit: `"xino=off,metacopy=on"` passed the check for
/// `metacopy=on` and the printed line mounted with it; `lowerdir=/etc`
/// added /etc as a layer of every mount; `""` made `,,`).
fn refused_mount_option(option: &str) -> Option<&'static str> {
    let key = option.split('=').next().unwrap_or(option);
    if option.is_empty() {
        Some("is empty")
    } else if option.contains(',') {
        Some("holds a comma: give each option as an element of its own")
    } else if option.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("holds a space or a control character")
    } else if matches!(
        key,
        "lowerdir" | "upperdir" | "workdir" | "datadir" | "lowerdir+" | "datadir+"
    ) {
        Some("names a directory of the mount, which strata sets itself")
    } else if option == "ro" {
        // Views are mounted read-only whatever is given; an active must
        // be writable (review: it was then refused as "mounted read-only").
        Some("would mount active snapshots read-only; views are read-only already")
    } else if option == "metacopy=on"
        || option == "redirect_dir=on"
        // The kernel turns metacopy on for these (review).
        || option == "verity=on"
        || option == "verity=require"
    {
        Some(
            "would leave a changed file's data or a renamed directory's content in the lower \
             layer, where a snapshot's own changes (diff, export, push) would miss it",
        )
    } else {
        None
    }
}

/// The file's `root` as the store's path: a leading `~` or `~/` is $HOME
/// (the SPEC writes `~/.config` for the same), which must then be set and
/// absolute, and what is left must be absolute: a relative `root` would name another store from every
/// directory strata runs in (`root: ~/store` made `./~/store`).
/// `--root` and `$STRATA_ROOT` are the shell's to expand and may be
/// relative.
fn root_in_file(root: &Path, file: &Path) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = root.as_os_str().as_bytes();
    let expanded = match bytes.strip_prefix(b"~") {
        Some(rest) if rest.is_empty() || rest.starts_with(b"/") => {
            let Some(home) = env_path("HOME") else {
                return Err(Error::invalid(format!(
                    "bad config file {}: `root` starts with `~` but $HOME is not set",
                    file.display()
                )));
            };
            // `HOME=rel` would make `~/store` a relative root, refused below
            // as if the file had written one: say what went wrong instead.
            if !home.is_absolute() {
                return Err(Error::invalid(format!(
                    "bad config file {}: `root` starts with `~`, which cannot be expanded: \
                     $HOME (`{}`) is not an absolute path",
                    file.display(),
                    home.display()
                ))
                .with_hint("set $HOME to an absolute path, or give `root` as one"));
            }
            let rest = std::ffi::OsStr::from_bytes(rest.strip_prefix(b"/").unwrap_or(rest));
            if rest.is_empty() {
                home
            } else {
                home.join(rest)
            }
        }
        _ => root.to_path_buf(),
    };
    if !expanded.is_absolute() {
        return Err(Error::invalid(format!(
            "bad config file {}: `root` is a relative path (`{}`): the store would \
             depend on the current directory",
            file.display(),
            root.display()
        ))
        .with_hint("give an absolute path, or one under your home as `~/…`"));
    }
    Ok(expanded)
}

/// One resolved setting and its source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

fn path_read<S: serde::Serializer>(lookup: &Lookup, s: S) -> std::result::Result<S::Ok, S::Error> {
    if lookup.found {
        s.collect_str(&lookup.path.display())
    } else {
        s.serialize_none()
    }
}

/// The effective configuration (`strata config`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    /// The config file looked for; shown (`config_file`) as the path read,
    /// or null when there was none.
    #[serde(rename = "config_file", serialize_with = "path_read")]
    pub config_lookup: Lookup,
    pub root: Setting<PathBuf>,
    pub driver: Setting<Option<DriverName>>,
    pub output: Setting<Format>,
    /// Shown both as first released (`overlay_mount_options`: fields are
    /// only ever added) and as the config file spells it, `overlay:
    /// {mount_options: …}` (audit: JSON said only the first, where the file
    /// and the table say `overlay.mount_options`).
    #[serde(flatten, serialize_with = "both_spellings")]
    pub overlay_mount_options: Setting<Vec<String>>,
}

fn both_spellings<S: serde::Serializer>(
    setting: &Setting<Vec<String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("overlay_mount_options", setting)?;
    let nested: std::collections::BTreeMap<&str, _> = [("mount_options", setting)].into();
    map.serialize_entry("overlay", &nested)?;
    map.end()
}

impl Settings {
    /// (name, value, source) rows for the table.
    pub fn rows(&self) -> Vec<(&'static str, String, Source)> {
        vec![
            (
                "root",
                self.root.value.display().to_string(),
                self.root.source,
            ),
            (
                "driver",
                match self.driver.value {
                    Some(DriverName::Overlay) => "overlay".into(),
                    Some(DriverName::Native) => "native".into(),
                    None => "detect (overlay if it can mount, else native)".into(),
                },
                self.driver.source,
            ),
            (
                "output",
                self.output.value.as_str().into(),
                self.output.source,
            ),
            (
                "overlay.mount_options",
                self.overlay_mount_options.value.join(","),
                self.overlay_mount_options.source,
            ),
        ]
    }
}

/// What the command line said, with where `--root` came from.
pub struct Given<'a> {
    pub root: Option<(&'a Path, Source)>,
    pub config: Option<&'a Path>,
    pub output: Option<Format>,
}

/// Resolves every setting: flag, then environment, then file, then default.
pub fn resolve(given: Given<'_>) -> Result<Settings> {
    let (lookup, file) = load(given.config)?;
    let root = match given.root {
        Some((p, source)) if !p.as_os_str().is_empty() => Setting {
            value: p.to_path_buf(),
            source,
        },
        _ => match file.root.clone() {
            Some(p) => Setting {
                value: p,
                source: Source::File,
            },
            None => Setting {
                value: default_root()?,
                source: Source::Default,
            },
        },
    };
    let from_file = |present: bool| {
        if present {
            Source::File
        } else {
            Source::Default
        }
    };
    let output = match given.output {
        Some(f) => Setting {
            value: f,
            source: Source::Flag,
        },
        None => Setting {
            value: file.output.unwrap_or_default(),
            source: from_file(file.output.is_some()),
        },
    };
    Ok(Settings {
        config_lookup: lookup,
        root,
        driver: Setting {
            value: file.driver,
            source: from_file(file.driver.is_some()),
        },
        output,
        overlay_mount_options: Setting {
            source: from_file(!file.overlay.mount_options.is_empty()),
            value: file.overlay.mount_options,
        },
    })
}
