//! The test fixture: a throw-away store, a way to run `strata` on it like a user at a
//! shell would, mount guards, and a port of containerd's `fstest` appliers/checkers.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_strata");
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment variable naming the config file strata reads without
/// `--config`, in place of the default one.
pub const CONFIG_VAR: &str = "STRATA_CONFIG";

/// `$STRATA_CONFIG` for a strata on the store `root`: `no-config.yaml`
/// beside the store, in the test's temporary directory, which no test
/// makes, so no config file is read. Every strata the tests start gets it
/// (see `command`, `Store::strata_with`, `tty_command` and the tests'
/// own runners): without it each would read the host's config file, the
/// suite running as root `/etc/strata/config.yaml`, and one with `output:
/// json` or `root:` in it would change what every test sees (git's suite
/// sets GIT_CONFIG_NOSYSTEM for the same, jj's JJ_CONFIG). A test of a
/// config file names its own: `--config`, or `STRATA_CONFIG` in
/// `With::env`, which comes after this one (empty, it counts as unset and
/// strata looks in the default place).
pub fn no_config(root: &Path) -> PathBuf {
    root.parent().unwrap_or(root).join("no-config.yaml")
}

/// Exit code of each error kind of the SPEC.
pub fn exit_code(kind: &str) -> i32 {
    match kind {
        "internal" => 1,
        "usage" => 2,
        "not_found" => 3,
        "already_exists" => 4,
        "failed_precondition" => 5,
        "invalid" => 6,
        "unsupported" => 7,
        other => panic!("unknown error kind {other:?}"),
    }
}

/// Quote a word the way a shell session would show it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The result of one command: what a user would have seen.
#[derive(Debug, Clone)]
pub struct Run {
    pub cmdline: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The whole session, for panic messages.
    pub fn session(&self) -> String {
        format!(
            "$ {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- exit code: {} ---",
            self.cmdline, self.stdout, self.stderr, self.code
        )
    }

    #[track_caller]
    pub fn success(self) -> Self {
        if self.code != 0 {
            panic!("command failed:\n{}", self.session());
        }
        self
    }

    /// Asserts the exit code and that stderr contains `needle`.
    #[track_caller]
    pub fn fails_with(self, code: i32, needle: &str) -> Self {
        if self.code != code || !self.stderr.contains(needle) {
            panic!(
                "expected exit code {code} and {needle:?} on stderr, got:\n{}",
                self.session()
            );
        }
        self
    }

    /// Asserts the exit code and that stdout (a report, as `check`'s)
    /// contains `needle`.
    #[track_caller]
    pub fn fails_reporting(self, code: i32, needle: &str) -> Self {
        if self.code != code || !self.stdout.contains(needle) {
            panic!(
                "expected exit code {code} and {needle:?} on stdout, got:\n{}",
                self.session()
            );
        }
        self
    }

    /// Asserts a failure of the given SPEC kind, printed as JSON (`-o json`) on stderr.
    #[track_caller]
    pub fn fails_json(self, kind: &str) -> Self {
        let code = exit_code(kind);
        let err: Value = serde_json::from_str(self.stderr.trim()).unwrap_or_else(|e| {
            panic!(
                "stderr is not one JSON object ({e}), expected a `{kind}` error:\n{}",
                self.session()
            )
        });
        let got_kind = err["error"]["kind"].as_str();
        let message = err["error"]["message"].as_str();
        if self.code != code || got_kind != Some(kind) || message.is_none_or(str::is_empty) {
            panic!(
                "expected exit code {code} and error kind {kind:?} with a message, got:\n{}",
                self.session()
            );
        }
        self
    }

    /// The `error` object of a failure printed as JSON on stderr.
    #[track_caller]
    pub fn json_error(&self) -> Value {
        let err: Value = serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not JSON ({e}):\n{}", self.session()));
        err["error"].clone()
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.session()))
    }

    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Whether the current machine can run the mount tests; see `require_root_and_overlay`.
fn probe() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = dir.path().join(d);
        fs::create_dir(&p).unwrap();
        p
    });
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "overlayfs is not available: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let _ = Command::new("umount").arg(&merged).status();
    Ok(())
}

/// True when the tests that mount can run (root, overlayfs). Otherwise prints why the test
/// is skipped and returns false; with `CI=true` it panics instead, so CI never skips.
pub fn require_root_and_overlay() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(probe) {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but the mount tests cannot run: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: {reason}");
            false
        }
    }
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// True when `tools` are installed; otherwise prints why the test is skipped (panics
/// with `CI=true`, so CI never skips; `.ci/run` installs them).
pub fn require(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {} (apt-get install docker-registry skopeo umoci apache2-utils openssl python3 strace)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {why}");
    }
    eprintln!("skipped: {why}");
    false
}

/// A store for one test: `--root` is a fresh directory inside a temporary directory that
/// also holds the test's mount targets and scratch files.
pub struct Store {
    pub driver: String,
    tmp: TempDir,
    pub root: PathBuf,
    counter: AtomicUsize,
}

/// Creates a store with the given driver, or returns from the test when the machine cannot
/// run mount tests (see `require_root_and_overlay`).
#[macro_export]
macro_rules! setup {
    ($driver:expr) => {
        match $crate::support::Store::setup($driver) {
            Some(store) => store,
            None => return,
        }
    };
}

/// Generates `mod overlay { #[test] fn x() }` and `mod native { #[test] fn x() }` for each
/// scenario `fn x(driver: &str)` of the enclosing module.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),+ $(,)?) => {
        mod overlay {
            $( #[test] fn $name() { super::$name("overlay") } )+
        }
        mod native {
            $( #[test] fn $name() { super::$name("native") } )+
        }
    };
}

/// Extra input for a command: stdin and environment variables.
#[derive(Default)]
pub struct With<'a> {
    pub stdin: Option<&'a [u8]>,
    /// Set after PATH, NO_COLOR and `STRATA_CONFIG` ([`no_config`]), so
    /// a test may set its own `STRATA_CONFIG`.
    pub env: &'a [(&'a str, &'a str)],
    /// Do not pass `--root` (to test `$STRATA_ROOT`, for example).
    pub no_root: bool,
}

impl Store {
    /// A store created with `strata init --driver DRIVER`, when mounts can be tested.
    pub fn setup(driver: &str) -> Option<Store> {
        if !require_root_and_overlay() {
            return None;
        }
        let store = Store::uninitialized(driver);
        store.strata(&["init", "--driver", driver]).success();
        Some(store)
    }

    /// [`Store::setup`] with the store in a directory named `name`.
    pub fn setup_named(driver: &str, name: &str) -> Option<Store> {
        if !require_root_and_overlay() {
            return None;
        }
        let mut store = Store::uninitialized(driver);
        store.root = store.tmp().join(name);
        store.strata(&["init", "--driver", driver]).success();
        Some(store)
    }

    /// A store directory that does not exist yet (for tests that need no mounts).
    pub fn uninitialized(driver: &str) -> Store {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("strata-cli-{driver}-"))
            .tempdir()
            .unwrap();
        let root = tmp.path().join("store");
        Store {
            driver: driver.to_string(),
            tmp,
            root,
            counter: AtomicUsize::new(0),
        }
    }

    /// The temporary directory holding the store, mount targets and scratch files.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// A new path (not created) in the scratch area, named after `hint`.
    pub fn scratch(&self, hint: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.path().join(format!("{hint}-{n}"))
    }

    /// A new config file in the scratch area holding `yaml`.
    pub fn config_file(&self, yaml: &str) -> PathBuf {
        let path = self.scratch("config.yaml");
        fs::write(&path, yaml).unwrap();
        path
    }

    /// A new, existing, empty directory in the scratch area.
    pub fn scratch_dir(&self, hint: &str) -> PathBuf {
        let p = self.scratch(hint);
        fs::create_dir(&p).unwrap();
        p
    }

    /// `strata --root ROOT ARGS…` with a cleared environment (PATH, NO_COLOR=1 and
    /// STRATA_CONFIG naming no file: [`no_config`]) and stdin from /dev/null.
    pub fn strata(&self, args: &[&str]) -> Run {
        self.strata_with(args, With::default())
    }

    /// `strata ARGS…` with a soft limit of `files` open files, as under
    /// `ulimit -Sn FILES` (the hard limit kept).
    pub fn with_open_files(&self, files: u64, args: &[&str]) -> Run {
        let mut cmd = command(&self.root, args);
        limit_open_files(&mut cmd, files, None);
        self.limited_run(cmd, &format!("ulimit -Sn {files}"), args)
    }

    /// `strata ARGS…` with soft and hard limits of `files` open files, as
    /// under `ulimit -n FILES`: one it cannot raise.
    pub fn with_file_limit(&self, files: u64, args: &[&str]) -> Run {
        let mut cmd = command(&self.root, args);
        limit_open_files(&mut cmd, files, Some(files));
        self.limited_run(cmd, &format!("ulimit -n {files}"), args)
    }

    fn limited_run(&self, mut cmd: Command, ulimit: &str, args: &[&str]) -> Run {
        let out = cmd.output().unwrap();
        let mut words = vec![format!("{ulimit}; strata")];
        words.extend(args.iter().map(|a| shell_quote(a)));
        Run {
            cmdline: words.join(" "),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `strata ARGS…` killed by itself (SIGKILL) at crash point `point`
    /// (`STRATA_CRASH_AT`), checking it got there.
    #[track_caller]
    pub fn killed_at(&self, args: &[&str], point: &str) -> Run {
        let env = [("STRATA_CRASH_AT", point)];
        let run = self.strata_with(
            args,
            With {
                env: &env,
                ..With::default()
            },
        );
        assert_eq!(run.code, -1, "not killed at {point}: {}", run.session());
        run
    }

    pub fn strata_with(&self, args: &[&str], with: With) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", PATH)
            .env("NO_COLOR", "1")
            .env(CONFIG_VAR, no_config(&self.root));
        for (k, v) in with.env {
            cmd.env(k, v);
        }
        let mut words = vec!["strata".to_string()];
        if !with.no_root {
            cmd.arg("--root").arg(&self.root);
            words.push("--root".into());
            words.push(shell_quote(&self.root.to_string_lossy()));
        }
        cmd.args(args);
        words.extend(args.iter().map(|a| shell_quote(a)));
        let mut cmdline = words.join(" ");
        if with.stdin.is_some() {
            cmdline.push_str(" < (stdin)");
        }
        cmd.stdin(if with.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot run the strata binary");
        if let Some(input) = with.stdin {
            let mut stdin = child.stdin.take().unwrap();
            // A command may exit without reading its stdin (refused before it
            // gets there): the pipe is then closed, which is not the test's failure.
            if let Err(e) = stdin.write_all(input)
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                panic!("cannot write the stdin of `{cmdline}`: {e}");
            }
        }
        let out = child.wait_with_output().unwrap();
        Run {
            cmdline,
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// [`Store::strata`] under GNU `time`: also the most memory the process had
    /// resident at once, in KiB; None without `/usr/bin/time`. Measured by `time`, a
    /// small process, not by `wait4` here: a child's `ru_maxrss` also counts the
    /// memory of the process it was forked from (this test binary, which may hold
    /// 100 MB or more while tests run in parallel).
    pub fn strata_peak(&self, args: &[&str]) -> (Run, Option<u64>) {
        const TIME: &str = "/usr/bin/time";
        if !Path::new(TIME).exists() {
            eprintln!("no {TIME}: the peak memory of `strata` is not measured");
            return (self.strata(args), None);
        }
        let report = self.scratch("time");
        let out = Command::new(TIME)
            .env_clear()
            .env("PATH", PATH)
            .env("NO_COLOR", "1")
            .env(CONFIG_VAR, no_config(&self.root))
            .args(["-f", "%M", "-o"])
            .arg(&report)
            .arg(BIN)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run the strata binary under time");
        let mut words = vec![
            "strata".to_string(),
            "--root".into(),
            shell_quote(&self.root.to_string_lossy()),
        ];
        words.extend(args.iter().map(|a| shell_quote(a)));
        // "Command exited with non-zero status N" comes first when it did.
        let peak = fs::read_to_string(&report)
            .ok()
            .and_then(|r| r.lines().last()?.trim().parse().ok());
        let run = Run {
            cmdline: words.join(" "),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            peak.is_some(),
            "no peak memory from time: {}",
            run.session()
        );
        (run, peak)
    }

    /// Runs `strata -o json ARGS…` and asserts it fails with the error `kind`.
    #[track_caller]
    pub fn fails(&self, args: &[&str], kind: &str) -> Run {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        self.strata(&all).fails_json(kind)
    }

    /// `info --json KEY`.
    #[track_caller]
    pub fn info(&self, key: &str) -> Value {
        self.strata(&["info", "--json", "--", key]).success().json()
    }

    /// The keys `ls --json EXTRA…` prints, in its order.
    #[track_caller]
    pub fn names(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["ls", "--json"];
        args.extend_from_slice(extra);
        let ls = self.strata(&args).success().json();
        ls.as_array()
            .unwrap_or_else(|| panic!("ls --json is not a list: {ls}"))
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The entries of ROOT/snapshots, sorted.
    pub fn snapshot_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// `strata mount KEY TARGET` on a new target; the guard unmounts it in all cases.
    #[track_caller]
    pub fn mount(&self, key: &str) -> MountGuard {
        let target = self.scratch("mnt");
        let guard = MountGuard::new(&target);
        self.strata(&["mount", "--", key, target.to_str().unwrap()])
            .success();
        assert!(
            is_mount_point(&target),
            "`strata mount {key}` ({} driver) succeeded but {} is not a mount point",
            self.driver,
            target.display()
        );
        guard
    }

    /// `strata unmount TARGET`, checking the target is no longer a mount point.
    #[track_caller]
    pub fn unmount(&self, guard: &MountGuard) {
        let args = ["unmount", guard.path.to_str().unwrap()];
        let mut run = self.strata(&args);
        // While another test thread forks, its child holds a copy of this process's file
        // descriptors until it execs, which can make the mount briefly busy. Users do not
        // have that problem; retry a little rather than fail.
        for _ in 0..40 {
            if run.code != 5 || !run.stderr.contains("busy") {
                break;
            }
            eprintln!("note: mount busy, retrying: {}", run.cmdline);
            std::thread::sleep(std::time::Duration::from_millis(50));
            run = self.strata(&args);
        }
        run.success();
        assert!(
            !is_mount_point(&guard.path),
            "{} is still mounted after `strata unmount`",
            guard.path.display()
        );
    }

    /// Prepares KEY on PARENT, mounts it, applies OPS through the mount, unmounts it and
    /// commits it as NAME.
    #[track_caller]
    pub fn layer(&self, name: &str, parent: Option<&str>, ops: &[Op]) {
        let key = format!("{name}-prepare");
        let mut args = vec!["prepare", "--", &key];
        if let Some(p) = parent {
            args.push(p);
        }
        self.strata(&args).success();
        let m = self.mount(&key);
        apply(&m.path, ops);
        self.unmount(&m);
        self.strata(&["commit", "--", name, &key]).success();
    }

    /// Makes a view of committed NAME, mounts it and returns its tree.
    #[track_caller]
    pub fn view_tree(&self, name: &str) -> Tree {
        let view = format!("{name}-view");
        self.strata(&["view", "--", &view, name]).success();
        let m = self.mount(&view);
        let tree = Tree::read(&m.path);
        self.unmount(&m);
        self.strata(&["rm", "--", &view]).success();
        tree
    }

    /// Port of containerd's `checkSnapshots`: commits one layer per element of `layers`,
    /// each on the previous one, applying the same operations to a flat directory, and
    /// checks a view of every new layer against it. Returns the committed names.
    #[track_caller]
    pub fn check_layers(&self, layers: &[Vec<Op>]) -> Vec<String> {
        let flat = self.scratch_dir("flat");
        let mut parent: Option<String> = None;
        let mut names = vec![];
        for (i, ops) in layers.iter().enumerate() {
            let name = format!("layer-{i}");
            self.layer(&name, parent.as_deref(), ops);
            apply(&flat, ops);
            let got = self.view_tree(&name);
            got.assert_eq(&Tree::read(&flat), &format!("view of {name}"));
            parent = Some(name.clone());
            names.push(name);
        }
        names
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Whatever a test mounted under its temporary directory (with `prepare --mount`,
        // `sh -c`, …) is detached before the directory is deleted.
        let mut points: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|p| p.starts_with(self.tmp.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            lazy_unmount(&p);
        }
    }
}

/// Unmounts its target with `umount -l` when dropped, however the test ends.
pub struct MountGuard {
    pub path: PathBuf,
}

impl MountGuard {
    pub fn new(path: &Path) -> MountGuard {
        MountGuard {
            path: path.to_path_buf(),
        }
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        lazy_unmount(&self.path);
    }
}

/// A tmpfs mounted with `options` in a temporary directory: a disk of its
/// own for a store (to fill, or to make read-only). Unmounted, then its
/// directory removed, when dropped (the fields drop in this order).
pub struct Disk {
    _guard: MountGuard,
    pub path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Disk {
    #[track_caller]
    pub fn tmpfs(options: &str) -> Disk {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let guard = MountGuard::new(&path);
        sh_ok(
            &format!("mount -t tmpfs -o {options} tmpfs {}", path.display()),
            "a tmpfs",
        );
        Disk {
            _guard: guard,
            path,
            _tmp: tmp,
        }
    }
}

/// `umount PATH`, behind strata's back, failing the test if it does not
/// unmount. As with [`Store::unmount`], a fork in another test thread can
/// hold a file of the mount for an instant: a busy mount is retried.
#[track_caller]
pub fn umount_by_hand(path: &Path) {
    for _ in 0..40 {
        // In English, whatever the locale: "busy" is looked for below.
        let out = Command::new("umount")
            .arg(path)
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("busy"),
            "umount {}: {stderr}",
            path.display()
        );
        eprintln!("note: mount busy, retrying: umount {}", path.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} stayed busy for 2 s", path.display());
}

fn lazy_unmount(path: &Path) {
    // Stacked mounts need one umount each.
    for _ in 0..8 {
        if !is_mount_point(path) {
            break;
        }
        let ok = Command::new("umount")
            .arg("-l")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            break;
        }
    }
}

fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let s = std::str::from_utf8(&b[i + 1..i + 4]).unwrap();
            out.push(u8::from_str_radix(s, 8).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points of this process's mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape_mountinfo(f)))
        .collect()
}

pub fn is_mount_point(path: &Path) -> bool {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount_points().contains(&path)
}

/// One filesystem change, as containerd's `fstest` appliers.
#[derive(Debug, Clone)]
pub enum Op {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    RemoveAll(String),
    Chown(String, u32, u32),
    Rename(String, String),
    Link(String, String),
    Symlink(String, String),
    Fifo(String),
    /// A character (`'c'`) or block (`'b'`) device node.
    Device(String, char, u32, u32),
    /// A `user.` extended attribute.
    Xattr(String, String, Vec<u8>),
    /// Sets atime and mtime (seconds since the epoch), not following symlinks.
    Mtime(String, i64),
}

pub fn dir(p: &str, mode: u32) -> Op {
    Op::Dir(p.into(), mode)
}
pub fn file(p: &str, content: &str, mode: u32) -> Op {
    Op::File(p.into(), content.as_bytes().to_vec(), mode)
}
pub fn remove_all(p: &str) -> Op {
    Op::RemoveAll(p.into())
}
pub fn chown(p: &str, uid: u32, gid: u32) -> Op {
    Op::Chown(p.into(), uid, gid)
}
pub fn rename(from: &str, to: &str) -> Op {
    Op::Rename(from.into(), to.into())
}
/// A hard link `new` to the existing `old`.
pub fn link(old: &str, new: &str) -> Op {
    Op::Link(old.into(), new.into())
}
pub fn symlink(target: &str, link: &str) -> Op {
    Op::Symlink(target.into(), link.into())
}

pub fn fifo(p: &str) -> Op {
    Op::Fifo(p.into())
}
pub fn device(p: &str, kind: char, major: u32, minor: u32) -> Op {
    Op::Device(p.into(), kind, major, minor)
}
pub fn xattr(p: &str, name: &str, value: &str) -> Op {
    Op::Xattr(p.into(), name.into(), value.as_bytes().to_vec())
}
pub fn mtime(p: &str, secs: i64) -> Op {
    Op::Mtime(p.into(), secs)
}

fn cpath(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check_libc(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn rel(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Applies OPS under ROOT with plain file-system calls, as a user's program would.
/// Modes are set with chmod, so the umask does not matter.
#[track_caller]
pub fn apply(root: &Path, ops: &[Op]) {
    for op in ops {
        let res = match op {
            Op::Dir(p, mode) => {
                let p = rel(root, p);
                fs::create_dir_all(&p)
                    .and_then(|_| fs::set_permissions(&p, fs::Permissions::from_mode(*mode)))
            }
            Op::File(p, content, mode) => {
                let p = rel(root, p);
                fs::write(&p, content)
                    .and_then(|_| fs::set_permissions(&p, fs::Permissions::from_mode(*mode)))
            }
            Op::RemoveAll(p) => {
                let p = rel(root, p);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                    Ok(_) => fs::remove_file(&p),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Op::Chown(p, uid, gid) => {
                std::os::unix::fs::lchown(rel(root, p), Some(*uid), Some(*gid))
            }
            Op::Rename(from, to) => {
                let (from, to) = (rel(root, from), rel(root, to));
                match fs::rename(&from, &to) {
                    // A lower directory on overlayfs without redirect_dir: do what mv does.
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                        let st = Command::new("mv")
                            .arg("-T")
                            .arg(&from)
                            .arg(&to)
                            .status()
                            .unwrap();
                        assert!(
                            st.success(),
                            "mv {} {} failed",
                            from.display(),
                            to.display()
                        );
                        Ok(())
                    }
                    r => r,
                }
            }
            Op::Link(old, new) => fs::hard_link(rel(root, old), rel(root, new)),
            Op::Symlink(target, link) => std::os::unix::fs::symlink(target, rel(root, link)),
            Op::Fifo(p) => {
                let c = cpath(&rel(root, p));
                // SAFETY: c is a valid NUL-terminated path.
                check_libc(unsafe { libc::mkfifo(c.as_ptr(), 0o644) })
            }
            Op::Device(p, kind, major, minor) => {
                let c = cpath(&rel(root, p));
                let fmt = if *kind == 'b' {
                    libc::S_IFBLK
                } else {
                    libc::S_IFCHR
                };
                let dev = libc::makedev(*major, *minor);
                // SAFETY: c is a valid NUL-terminated path.
                check_libc(unsafe { libc::mknod(c.as_ptr(), fmt | 0o640, dev) })
            }
            Op::Xattr(p, name, value) => {
                let c = cpath(&rel(root, p));
                let n = std::ffi::CString::new(name.as_str()).unwrap();
                // SAFETY: valid C strings and a buffer of the given length.
                check_libc(unsafe {
                    libc::lsetxattr(
                        c.as_ptr(),
                        n.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                })
            }
            Op::Mtime(p, secs) => {
                let c = cpath(&rel(root, p));
                let t = libc::timespec {
                    tv_sec: *secs,
                    tv_nsec: 0,
                };
                let times = [t, t];
                // SAFETY: valid path and two timespecs.
                check_libc(unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })
            }
        };
        if let Err(e) = res {
            panic!("applying {op:?} under {}: {e}", root.display());
        }
    }
}

/// What one entry of a tree looks like to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File content or symlink target.
    pub data: Vec<u8>,
    /// Device number of device nodes.
    pub rdev: u64,
    /// `user.` extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// The test process's umask (its children's), read without changing it.
pub fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap();
    u32::from_str_radix(line.trim(), 8).unwrap()
}

/// A directory tree read through the file system: entries by relative path, plus the
/// groups of paths that are hard links of one another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
    pub hardlinks: Vec<Vec<String>>,
}

impl Tree {
    #[track_caller]
    pub fn read(root: &Path) -> Tree {
        let mut entries = BTreeMap::new();
        let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
                let e = e.unwrap();
                let p = e.path();
                let md = fs::symlink_metadata(&p).unwrap();
                let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let ft = md.file_type();
                let (kind, data) = if ft.is_dir() {
                    stack.push(p.clone());
                    ("dir", vec![])
                } else if ft.is_symlink() {
                    let t = fs::read_link(&p).unwrap();
                    ("symlink", t.to_string_lossy().as_bytes().to_vec())
                } else if ft.is_file() {
                    inodes
                        .entry((md.dev(), md.ino()))
                        .or_default()
                        .push(name.clone());
                    ("file", fs::read(&p).unwrap())
                } else {
                    use std::os::unix::fs::FileTypeExt;
                    let kind = if ft.is_fifo() {
                        "fifo"
                    } else if ft.is_char_device() {
                        "char-device"
                    } else if ft.is_block_device() {
                        "block-device"
                    } else if ft.is_socket() {
                        "socket"
                    } else {
                        "other"
                    };
                    (kind, vec![])
                };
                entries.insert(
                    name,
                    Entry {
                        kind,
                        mode: md.mode() & 0o7777,
                        uid: md.uid(),
                        gid: md.gid(),
                        data,
                        rdev: if kind.ends_with("device") {
                            md.rdev()
                        } else {
                            0
                        },
                        xattrs: user_xattrs(&p),
                    },
                );
            }
        }
        let mut hardlinks: Vec<Vec<String>> = inodes
            .into_values()
            .filter(|v| v.len() > 1)
            .map(|mut v| {
                v.sort();
                v
            })
            .collect();
        hardlinks.sort();
        Tree { entries, hardlinks }
    }

    pub fn content(&self, path: &str) -> Option<String> {
        self.entries
            .get(path)
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
    }

    /// Asserts this tree equals `want`, listing every difference.
    #[track_caller]
    pub fn assert_eq(&self, want: &Tree, what: &str) {
        let mut diffs = vec![];
        for (p, w) in &want.entries {
            match self.entries.get(p) {
                None => diffs.push(format!("missing {p}: want {w:?}")),
                Some(g) if g != w => diffs.push(format!("{p}: got {g:?}, want {w:?}")),
                _ => {}
            }
        }
        for (p, g) in &self.entries {
            if !want.entries.contains_key(p) {
                diffs.push(format!("unexpected {p}: {g:?}"));
            }
        }
        if self.hardlinks != want.hardlinks {
            diffs.push(format!(
                "hard links: got {:?}, want {:?}",
                self.hardlinks, want.hardlinks
            ));
        }
        if !diffs.is_empty() {
            panic!(
                "{what} differs from the expected tree:\n  {}",
                diffs.join("\n  ")
            );
        }
    }
}

/// The `user.` extended attributes of a path (not following symlinks).
pub fn user_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = cpath(p);
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| n.starts_with(b"user."))
    {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: valid path, name and buffer.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), value);
        }
    }
    out
}

/// Asserts that an RFC 3339 UTC time ends in Z and looks right; returns it.
#[track_caller]
pub fn assert_rfc3339_utc(v: &Value) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("time {v} is not a string"));
    let re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$").unwrap();
    assert!(
        re.is_match(s),
        "{s:?} is not an RFC 3339 UTC time ending in Z"
    );
    s.to_string()
}

/// Seconds since the epoch of a `YYYY-MM-DDTHH:MM:SS(.f)Z` time (fractions dropped).
pub fn epoch_seconds(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, mo, d) = (n(0..4), n(5..7), n(8..10));
    let (h, mi, se) = (n(11..13), n(14..16), n(17..19));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + h * 3600 + mi * 60 + se
}

pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The directory a new active snapshot writes to, read from its mounts:
/// the overlay upperdir, or the bind source. Lets a test build a deep chain
/// without mounting every layer.
pub fn writable_dir(store: &Store, key: &str) -> PathBuf {
    let run = store.strata(&["mounts", "--json", "--", key]).success();
    let m = &run.json()[0];
    let options: Vec<&str> = m["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    match options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
        Some(upper) => PathBuf::from(upper),
        None => PathBuf::from(m["source"].as_str().unwrap()),
    }
}

/// base ← mid ← {leaf (active), look (view)}, base ← other (active), solo
/// (active), and with `zroot` a committed root without children.
pub fn forest(s: &Store, zroot: bool) {
    s.layer("base", None, &[file("f", "base\n", 0o644)]);
    s.layer("mid", Some("base"), &[file("g", "mid\n", 0o644)]);
    s.strata(&["prepare", "leaf", "mid"]).success();
    s.strata(&["view", "look", "mid"]).success();
    s.strata(&["prepare", "other", "base"]).success();
    s.strata(&["prepare", "solo"]).success();
    if zroot {
        s.layer("zroot", None, &[]);
    }
}

/// `tar -cf OUT -C DIR .` (GNU tar), plus `extra` options.
pub fn tar_dir(dir: &Path, out: &Path, extra: &[&str]) {
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(out)
        .args(extra)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar -cf {} failed", out.display());
}

/// Runs `script` with `sh -c`, asserting it succeeds (`what` explains the
/// failure); returns its stdout.
#[track_caller]
pub fn sh_ok(script: &str, what: &str) -> String {
    let out = run_ok(
        Command::new("sh").arg("-c").arg(script),
        &format!("sh -c failed:\n{script}\n{what}"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd`, asserting it succeeds (the message is `what` and its stderr).
#[track_caller]
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `strata --root ROOT ARGS…` with a cleared environment (as
/// [`Store::strata`]'s) and no stdin.
pub fn command(root: &std::path::Path, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", PATH)
        .env("NO_COLOR", "1")
        .env(CONFIG_VAR, no_config(root))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Sets `cmd`'s limits on open files: soft `soft`, hard `hard` (None:
/// kept).
pub fn limit_open_files(cmd: &mut Command, soft: u64, hard: Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    use std::os::unix::process::CommandExt;
    let hard = hard.or(getrlimit(Resource::Nofile).maximum);
    // SAFETY: setrlimit(2) is async-signal-safe, and nothing else runs.
    unsafe {
        cmd.pre_exec(move || {
            let limit = Rlimit {
                current: Some(soft),
                maximum: hard,
            };
            setrlimit(Resource::Nofile, limit).map_err(Into::into)
        });
    }
}

/// Sets `cmd`'s address space limit (`ulimit -v`) to `bytes`: a process
/// that reads without bound then fails instead of filling the machine.
pub fn limit_memory(cmd: &mut Command, bytes: u64) {
    use rustix::process::{Resource, Rlimit, setrlimit};
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit(2) is async-signal-safe, and nothing else runs.
    unsafe {
        cmd.pre_exec(move || {
            let limit = Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            };
            setrlimit(Resource::As, limit).map_err(Into::into)
        });
    }
}

/// A strata process stopped at crash point `at` (`STRATA_PAUSE_AT`), so a
/// test can run another command exactly there; [`Paused::resume`] lets it
/// go on and returns its output.
pub struct Paused {
    child: std::process::Child,
    flag: std::path::PathBuf,
}

impl Paused {
    #[track_caller]
    pub fn start(store: &Store, args: &[&str], at: &str) -> Paused {
        Paused::start_cmd(store, command(&store.root, args), args, at)
    }

    /// [`Paused::start`] under `ulimit -n FILES` (soft and hard).
    #[track_caller]
    pub fn start_with_file_limit(store: &Store, files: u64, args: &[&str], at: &str) -> Paused {
        let mut cmd = command(&store.root, args);
        limit_open_files(&mut cmd, files, Some(files));
        Paused::start_cmd(store, cmd, args, at)
    }

    #[track_caller]
    fn start_cmd(store: &Store, mut cmd: Command, args: &[&str], at: &str) -> Paused {
        let flag = store.scratch("pause");
        let child = cmd
            .env("STRATA_PAUSE_AT", at)
            .env("STRATA_PAUSE_FILE", &flag)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..3000 {
            if flag.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(flag.exists(), "`{args:?}` never reached {at}");
        Paused { child, flag }
    }

    /// Sends signal `signal` (e.g. `libc::SIGINT`) to the paused process,
    /// lets it go on (a command that builds something stops at its next
    /// step; the others end at once) and returns its output.
    pub fn signal(self, signal: i32) -> std::process::Output {
        let Paused { child, flag } = self;
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let _ = std::fs::remove_file(&flag);
        child.wait_with_output().unwrap()
    }

    /// The paused process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn resume(self) -> std::process::Output {
        std::fs::remove_file(&self.flag).unwrap();
        self.child.wait_with_output().unwrap()
    }
}

/// The lock strata takes on a snapshot's directory (`flock`), held by a
/// process of its own (`flock -o DIR cat`) until dropped, not by this test
/// process: a descriptor open here is copied into every child another test
/// thread forks, until that child execs, so dropping it would not always
/// free the lock at once (1 run in ~300 of the maintenance tests saw it
/// still held).
pub struct HeldLock(std::process::Child);

impl HeldLock {
    #[track_caller]
    pub fn on(dir: &Path) -> HeldLock {
        let mut child = Command::new("flock")
            .args(["--nonblock", "--close"])
            .arg(dir)
            .args(["sh", "-c", "echo locked; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock (util-linux)");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert_eq!(line, "locked\n", "flock {} failed", dir.display());
        HeldLock(child)
    }
}

impl Drop for HeldLock {
    /// Ends `cat` (its input closes), then waits for `flock`, whose exit
    /// frees the lock.
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// `script(1)` running `strata --root ROOT ARGS` on a pseudo-terminal
/// `cols` wide, in a cleared environment (STRATA_CONFIG naming no file:
/// [`no_config`]) plus `env`.
pub fn tty_command(store: &Store, cols: u16, env: &[(&str, &str)], args: &str) -> Command {
    let line = format!(
        "stty cols {cols} rows 40; {BIN} --root {} {args}",
        shell_quote(store.root.to_str().unwrap())
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("TERM", "xterm")
        .env(CONFIG_VAR, no_config(&store.root))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What the terminal saw of `script`'s run (stdout and stderr), with
/// plain newlines.
pub fn tty_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

/// [`tty_command`], run to its end: what the terminal saw.
pub fn on_tty(store: &Store, cols: u16, env: &[(&str, &str)], args: &str) -> String {
    let out = tty_command(store, cols, env, args)
        .output()
        .expect("script(1) from util-linux");
    tty_text(&out)
}

/// Adds a chain of `n` empty committed snapshots `l0` ← `l1` ← … to an
/// empty store's index with python3's sqlite3 (20,000 layers in about a
/// second, where `commit` makes a few dozen), and their directories
/// `snapshots/ID/fs`, so the store stays consistent.
pub fn chain_by_sql(store: &Store, n: usize) {
    let script = "import os, sqlite3, sys\n\
                  root, n = sys.argv[1], int(sys.argv[2])\n\
                  c = sqlite3.connect(os.path.join(root, 'index.db'))\n\
                  c.executemany(\"INSERT INTO snapshots (id, name, kind, parent_id, created, updated, size, inodes) \
                  VALUES (?, ?, 'committed', ?, 0, 0, 0, 1)\", ((i + 1, 'l%d' % i, i or None) for i in range(n)))\n\
                  c.commit()\n\
                  for i in range(n):\n    os.makedirs(os.path.join(root, 'snapshots', str(i + 1), 'fs'))\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&store.root)
        .arg(n.to_string())
        .status()
        .expect("python3 to build a chain in the index");
    assert!(status.success(), "python3 sqlite3 failed");
}
