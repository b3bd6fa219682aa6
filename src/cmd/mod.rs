//! The command tree. Each command has its own module with an `Args` struct
//! (its doc comment is the help) and one `run` function; [`run`] dispatches.

use crate::config as settings;
use crate::printer::{Format, Printer};
use crate::store::{self, Error, Result, Store};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

pub mod apply;
pub mod check;
pub mod commit;
pub mod completions;
pub mod config;
pub mod diff;
pub mod export;
pub mod import;
pub mod info;
pub mod init;
pub mod label;
pub mod login;
pub mod logout;
pub mod ls;
pub mod mount;
pub mod mounts;
pub mod prepare;
pub mod prune;
pub mod pull;
pub mod push;
pub mod rm;
pub mod tree;
pub mod unmount;
pub mod usage;
pub mod view;

/// The heading of the global options in `--help` (and, upper case, the
/// section of the man pages).
pub const GLOBAL_OPTIONS: &str = "Global options";

/// Layered filesystem snapshots, without a daemon.
///
/// One store directory, a SQLite index of the parent chain, and overlay or
/// bind mounts that strata performs itself or prints. Commands follow
/// `ctr snapshots`: prepare, view, mounts, commit, rm, ls, usage, tree.
#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    max_term_width = 100,
    after_help = "Examples:\n  strata prepare build                 # an empty active snapshot\n  strata mount build /mnt/build        # mount it, write files\n  strata commit base build             # freeze it as `base`\n  strata view look base --mount /mnt/look\n  strata ls --json"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes, before or after its name.
///
/// Shown under their own heading ("Global options", a GLOBAL OPTIONS
/// section in the man pages), after the command's own options: clap
/// ordered each command's options by their place in their own struct, so
/// `rm --help` read `-r`, `--root`, `--config`, `-f`, `-o`… (audit).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = GLOBAL_OPTIONS)]
pub struct Global {
    /// The store directory; else $STRATA_ROOT, else the config file's
    /// `root` [default: /var/lib/strata as root, else
    /// ${XDG_DATA_HOME:-~/.local/share}/strata]
    // $STRATA_ROOT is read in `context`, not by clap: clap counts a value
    // from the environment as given, and every usage error then showed
    // `--root <DIR>` as if the line had it (SPEC audit). An empty --root is
    // a missing value (usage); an empty STRATA_ROOT counts as unset.
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// YAML config file [default: $STRATA_CONFIG, else
    /// /etc/strata/config.yaml as root, else
    /// ${XDG_CONFIG_HOME:-~/.config}/strata/config.yaml]
    // $STRATA_CONFIG stands in for the default (it may be missing), read
    // in `config::load`, not by clap, as $STRATA_ROOT is.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Output format for commands that print data
    // `--json` is `-o json` (SPEC): whichever of them comes last wins.
    // Given twice, the last wins too, wherever each is (it was a usage
    // error within one command, and last-wins across them; review).
    #[arg(short = 'o', long, global = true, value_enum, value_name = "FORMAT")]
    #[arg(overrides_with_all = ["json", "output"])]
    pub output: Option<Format>,

    /// Short for `-o json`
    #[arg(long, global = true, overrides_with = "output")]
    pub json: bool,

    /// No progress bars or notes: data and errors only
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// More detail on stderr (repeatable)
    ///
    /// `-v` adds an error's causes, one `caused by:` line each (with `-o
    /// json`, the error object always carries them as `causes`). It may be
    /// given more than once, but there is one level of detail so far:
    /// `-vv` and more show what `-v` shows.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// The output format the command line asks for: `--json` or `-o
    /// FORMAT` (`main` keeps only the last one given); None leaves it to
    /// the config file or the default.
    pub fn output_asked(&self) -> Option<Format> {
        if self.json {
            Some(Format::Json)
        } else {
            self.output
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Init(Lazy<init::Args>),
    Prepare(Lazy<prepare::Args>),
    View(Lazy<view::Args>),
    Mounts(Lazy<mounts::Args>),
    Mount(Lazy<mount::Args>),
    #[command(visible_alias = "umount")]
    Unmount(Lazy<unmount::Args>),
    Commit(Lazy<commit::Args>),
    #[command(visible_alias = "remove")]
    Rm(Lazy<rm::Args>),
    #[command(visible_alias = "list")]
    Ls(Lazy<ls::Args>),
    #[command(visible_alias = "stat")]
    Info(Lazy<info::Args>),
    Label(Lazy<label::Args>),
    Usage(Lazy<usage::Args>),
    Tree(Lazy<tree::Args>),
    Diff(Lazy<diff::Args>),
    Apply(Lazy<apply::Args>),
    Push(Lazy<push::Args>),
    Pull(Lazy<pull::Args>),
    Login(Lazy<login::Args>),
    Logout(Lazy<logout::Args>),
    Export(Lazy<export::Args>),
    Import(Lazy<import::Args>),
    Prune(Lazy<prune::Args>),
    Check(Lazy<check::Args>),
    Completions(Lazy<completions::Args>),
    Config(Lazy<config::Args>),
}

/// A subcommand's arguments, built only when that subcommand is used.
///
/// clap builds every subcommand's arguments before parsing; for a process
/// that lives about a millisecond that is a fifth of its CPU time. Under
/// [`parse_lazily`] each subcommand defers its arguments (clap's
/// `Command::defer`) until the parser descends into it. Help and errors
/// list the subcommands' abouts, which are deferred too, so `main` renders
/// those from the eager tree ([`clap::CommandFactory::command`]).
#[derive(Debug)]
pub struct Lazy<T>(pub T);

thread_local! {
    /// Whether the tree being built on this thread defers its subcommands.
    static LAZY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Builds the command tree with deferred subcommands and parses the process's
/// arguments with it. Any error (including help and version) is to be
/// reported from the eager tree instead, whose messages are complete.
pub fn parse_lazily() -> std::result::Result<clap::ArgMatches, clap::Error> {
    parse_lazily_from(command_line())
}

/// The process's arguments as clap is to parse them. The `--label` options
/// take values starting with `-` (`allow_hyphen_values`), and clap then
/// takes `--` as one too: `prepare k --label -- -x` made `--` a label and
/// `-x` an unexpected argument, with clap's tip to write `-- -x`. As in git
/// or ctr, `--` stays the end of options, so that `--label` has no value:
/// the line is cut after it, and clap reports the missing value (a usage
/// error) as it does for a `--label` that ends the line. Nothing before
/// it changes, so neither does an error clap finds there.
pub fn command_line() -> Vec<std::ffi::OsString> {
    let mut args = crate::argv::args_os();
    if let Some((at, _)) = label_options(&args)
        .into_iter()
        .find(|&(at, apart)| apart && args.get(at + 1).is_some_and(|next| next == "--"))
    {
        args.truncate(at + 1);
    }
    args
}

/// The `--label` options of a command line, in order, up to the end of
/// options (a `--` that is not such an option's value): where each stands
/// and whether its value is the next argument (`--label K=V`, not
/// `--label=K=V`). No other option takes `--label` as its value (clap
/// reports the other option's missing value).
fn label_options(args: &[std::ffi::OsString]) -> Vec<(usize, bool)> {
    let mut found = Vec::new();
    let mut at = 1;
    while let Some(arg) = args.get(at) {
        if arg == "--" {
            break;
        }
        if arg == "--label" {
            found.push((at, true));
            at += 1;
        } else if arg.as_encoded_bytes().starts_with(b"--label=") {
            found.push((at, false));
        }
        at += 1;
    }
    found
}

fn parse_lazily_from<I, T>(args: I) -> std::result::Result<clap::ArgMatches, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::CommandFactory;
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    LAZY.set(true);
    let mut cmd = subcommand_named(&args)
        .and_then(tree_with_only)
        .unwrap_or_else(Cli::command);
    LAZY.set(false);
    let result = cmd.try_get_matches_from_mut(args);
    // Freeing the tree costs more than building the used part of it, and
    // the process is about to end.
    std::mem::forget(cmd);
    result
}

/// The top-level command with subcommand `name` (or an alias) as its only
/// subcommand, or None if there is no such subcommand.
///
/// clap copies every global option into every subcommand before parsing
/// (6 options into 25 subcommands: more instructions and heap pages than
/// the rest of a `strata info` process spends in clap). A command line
/// that names its subcommand only needs that one; anything else gets the
/// whole tree. `Cli::from_arg_matches` reads either tree's matches alike.
fn tree_with_only(name: &str) -> Option<clap::Command> {
    use clap::{Args, Subcommand};
    let all = Command::augment_subcommands(clap::Command::new("strata"));
    let sub = all.find_subcommand(name)?.clone();
    std::mem::forget(all);
    let root = clap::Command::new("strata")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true);
    Some(Global::augment_args(root).subcommand(sub))
}

/// The subcommand a command line names, found as clap finds it: the first
/// argument that is neither an option nor an option's value. None when
/// there is none, or when an option before it is not one of the global
/// options (clap then parses with the whole tree and reports it).
fn subcommand_named(args: &[std::ffi::OsString]) -> Option<&str> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let arg = arg.to_str()?;
        match arg {
            "--root" | "--config" | "--output" | "-o" => {
                rest.next()?;
            }
            "--json" | "--quiet" | "--verbose" => {}
            _ if ["--root=", "--config=", "--output="]
                .iter()
                .any(|p| arg.starts_with(p)) => {}
            _ if arg.starts_with("--") => return None,
            _ if arg.len() > 1 && arg.starts_with('-') => match short_flags(arg.as_bytes())? {
                ShortFlags::Output(None) => {
                    rest.next()?;
                }
                ShortFlags::Flags | ShortFlags::Output(Some(_)) => {}
            },
            _ => return Some(arg),
        }
    }
    None
}

/// The subcommand the process's command line names, by its name (also when
/// the line has an alias: `remove` is `rm`), where `main` points a usage
/// error's reader to its `--help`. None when the line names none, or
/// something that is not one.
pub fn subcommand_on_line() -> Option<String> {
    let args = crate::argv::args_os();
    let name = subcommand_named(&args)?;
    let all = Cli::command();
    all.find_subcommand(name)
        .map(|sub| sub.get_name().to_string())
}

/// The usage line of subcommand `name` (the top level's for None), as its
/// `--help` shows it: `strata commit [OPTIONS] <NAME> <KEY>`, without the
/// `Usage: ` before it.
///
/// A usage error shows this line, not clap's: clap's names the options the
/// line used (`strata commit --quiet <NAME> <KEY>` for `commit -q`,
/// `strata rm --root <DIR> <KEY>...` for `rm --root=/x`) and leaves out
/// `[OPTIONS]` where arguments are missing, so the line read as if those
/// options were required (audit); and for some errors (a missing value:
/// `--root ''`) clap gives none at all.
pub fn plain_usage(name: Option<&str>) -> String {
    let mut all = Cli::command();
    all.build();
    let mut cmd = match name.and_then(|name| all.find_subcommand(name)) {
        Some(sub) => sub.clone(),
        None => all,
    };
    let usage = cmd.render_usage().to_string();
    let lines: Vec<&str> = (usage.trim().trim_start_matches("Usage:").lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" | ")
}

/// A cluster of the global short flags, as clap reads it: `-q` and `-v`
/// in any number, and `-o` last with its value.
pub enum ShortFlags<'a> {
    /// Only `-q` and `-v`.
    Flags,
    /// `-o` with the value attached (`-ojson`, `-o=json`, `-qojson`), or
    /// None when the value is the next argument (`-o json`, `-qo json`).
    Output(Option<&'a [u8]>),
}

/// What `arg` is as a cluster of global short flags; None when it is none
/// (a long option, another short one, or not an option).
pub fn short_flags(arg: &[u8]) -> Option<ShortFlags<'_>> {
    let [b'-', flags @ ..] = arg else {
        return None;
    };
    if flags.first().is_none_or(|&c| c == b'-') {
        return None;
    }
    match flags.iter().position(|&c| c != b'q' && c != b'v') {
        None => Some(ShortFlags::Flags),
        Some(at) if flags[at] == b'o' => Some(ShortFlags::Output(match &flags[at + 1..] {
            [] => None,
            [b'=', value @ ..] | value => Some(value),
        })),
        Some(_) => None,
    }
}

impl<T: clap::Args> clap::Args for Lazy<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        if LAZY.get() {
            cmd.defer(T::augment_args)
        } else {
            T::augment_args(cmd)
        }
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        if LAZY.get() {
            cmd.defer(T::augment_args_for_update)
        } else {
            T::augment_args_for_update(cmd)
        }
    }
}

impl<T: clap::FromArgMatches> clap::FromArgMatches for Lazy<T> {
    fn from_arg_matches(m: &clap::ArgMatches) -> std::result::Result<Self, clap::Error> {
        T::from_arg_matches(m).map(Lazy)
    }

    fn update_from_arg_matches(
        &mut self,
        m: &clap::ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        self.0.update_from_arg_matches(m)
    }
}

/// What every command gets: the printer, the effective settings, and the
/// store, opened on demand.
pub struct Context {
    pub printer: Printer,
    pub settings: settings::Settings,
    options: store::Options,
    pub(crate) store: Option<Store>,
}

impl Context {
    /// Ends the command: the process exits next.
    pub fn close(mut self) {
        if let Some(store) = self.store.take() {
            store.close_at_exit();
        }
    }

    pub fn store(&mut self) -> Result<&mut Store> {
        if self.store.is_none() {
            self.store = Some(Store::open(
                &self.settings.root.value,
                self.options.clone(),
            )?);
        }
        Ok(self.store.as_mut().expect("store opened"))
    }

    /// The store, which must exist: for commands that only look at one or
    /// tidy it (`check`, `prune`), a mistyped root is an error, not a new
    /// empty store reported consistent.
    pub fn existing_store(&mut self) -> Result<&mut Store> {
        let root = &self.settings.root.value;
        let missing = std::fs::symlink_metadata(root)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        // Out of reach (another user's) is said by the open, with its hint.
        if self.store.is_none() && missing {
            return Err(crate::store::Error::not_found(format!(
                "there is no store at {}",
                root.display()
            ))
            .with_hint("name the store with --root or STRATA_ROOT"));
        }
        self.store()
    }
}

/// Resolves settings from flags, environment, config file and defaults.
pub fn context(cli: &Cli) -> Result<Context> {
    let global = &cli.global;
    let env_root = std::env::var_os("STRATA_ROOT").map(PathBuf::from);
    let root = match (&global.root, &env_root) {
        (Some(flag), _) => Some((flag.as_path(), settings::Source::Flag)),
        (None, Some(env)) => Some((env.as_path(), settings::Source::Environment)),
        (None, None) => None,
    };
    let output = global.output_asked();
    let settings = settings::resolve(settings::Given {
        root,
        config: global.config.as_deref(),
        output,
    })?;
    let printer = Printer::new(settings.output.value, global.quiet, global.verbose);
    let options = store::Options {
        driver: settings.driver.value.map(Into::into),
        overlay_mount_options: settings.overlay_mount_options.value.clone(),
    };
    Ok(Context {
        printer,
        settings,
        options,
        store: None,
    })
}

/// Runs one command.
pub fn run(command: Command, ctx: &mut Context) -> Result<()> {
    // The commands that build something delete it when stopped at one of
    // their long steps (see `store::interrupt`); the others end at once.
    if matches!(
        command,
        Command::Apply(_)
            | Command::Import(_)
            | Command::Pull(_)
            | Command::Prepare(_)
            | Command::View(_)
            | Command::Diff(_)
            | Command::Export(_)
    ) {
        store::interrupt::allow();
    }
    match command {
        Command::Init(args) => init::run(args.0, ctx),
        Command::Prepare(args) => prepare::run(args.0, ctx),
        Command::View(args) => view::run(args.0, ctx),
        Command::Mounts(args) => mounts::run(args.0, ctx),
        Command::Mount(args) => mount::run(args.0, ctx),
        Command::Unmount(args) => unmount::run(args.0, ctx),
        Command::Commit(args) => commit::run(args.0, ctx),
        Command::Rm(args) => rm::run(args.0, ctx),
        Command::Ls(args) => ls::run(args.0, ctx),
        Command::Info(args) => info::run(args.0, ctx),
        Command::Label(args) => label::run(args.0, ctx),
        Command::Usage(args) => usage::run(args.0, ctx),
        Command::Tree(args) => tree::run(args.0, ctx),
        Command::Diff(args) => diff::run(args.0, ctx),
        Command::Apply(args) => apply::run(args.0, ctx),
        Command::Push(args) => push::run(args.0, ctx),
        Command::Pull(args) => pull::run(args.0, ctx),
        Command::Login(args) => login::run(args.0, ctx),
        Command::Logout(args) => logout::run(args.0, ctx),
        Command::Export(args) => export::run(args.0, ctx),
        Command::Import(args) => import::run(args.0, ctx),
        Command::Prune(args) => prune::run(args.0, ctx),
        Command::Check(args) => check::run(args.0, ctx),
        Command::Completions(args) => completions::run(args.0, ctx),
        Command::Config(args) => config::run(args.0, ctx),
    }
}

/// `e`, a command's refusal of its first snapshot argument, with a hint
/// that the two arguments are the wrong way round when `swap_fits` says
/// swapping them would work (ctr writes `mounts TARGET KEY`; git and btrfs
/// users write SOURCE before DESTINATION). `command` is the command line
/// with them swapped, `order` the rule. The hint replaces a near-miss one
/// ("did you mean `b`?"), which was about the wrong argument (audit).
pub fn swapped(
    store: &mut Store,
    e: Error,
    refused: store::Kind,
    swap_fits: impl FnOnce(&mut Store) -> bool,
    command: &[&str],
    order: &str,
) -> Error {
    if e.kind() != refused || !swap_fits(store) {
        return e;
    }
    let line: Vec<String> = command
        .iter()
        .map(|a| crate::printer::shell_quote(a))
        .collect();
    e.without_hints()
        .with_hint(format!("did you mean `strata {}`? {order}", line.join(" ")))
}

/// A prepare or view of `key` on `parent` refused because `key` exists:
/// the hint when they are the wrong way round (`key` committed, `parent`
/// no snapshot).
pub fn key_first(store: &mut Store, e: Error, command: &str, key: &str, parent: &str) -> Error {
    swapped(
        store,
        e,
        store::Kind::AlreadyExists,
        |s| {
            is_kind(s, key, &[store::SnapshotKind::Committed])
                && store::key::validate_key(parent).is_ok()
                && matches!(s.kind_of(parent), Ok(None))
        },
        &[command, parent, key],
        "the new key comes first, then its parent",
    )
}

/// Whether `key` is a snapshot of one of `kinds`.
pub fn is_kind(store: &mut Store, key: &str, kinds: &[store::SnapshotKind]) -> bool {
    matches!(store.kind_of(key), Ok(Some(kind)) if kinds.contains(&kind))
}

/// The labels of `--label K=V` options (prepare, view, commit, apply). The
/// option takes a value starting with `-` (`--label -x=1`, as `--label=-x=1`
/// always did), so a `--label` left without its value takes the next
/// option as one (`--label --json`): that label is refused with a hint
/// saying so. A value given with `=` (`--label=--json`) was written as
/// one, and is refused as any invalid label is.
pub fn labels_of_options(texts: &[String]) -> Result<store::Labels> {
    store::key::parse_labels(texts).map_err(|e| {
        // The label refused, as `parse_labels` refuses the first bad one,
        // and whether it was the argument after a `--label`: clap collects
        // the values in the order the options stand (review: matched by
        // text, `--label=-x --label -x` got the hint for the first).
        let refused = texts
            .iter()
            .position(|t| store::key::parse_label(t).is_err());
        let apart = |n: usize| {
            label_options(&crate::argv::args_os())
                .get(n)
                .is_some_and(|&(_, apart)| apart)
        };
        match refused.map(|n| (n, &texts[n])) {
            Some((n, text)) if text.starts_with('-') && !text.contains('=') && apart(n) => e
                .with_hint(format!(
                    "`{text}` was taken as the value of --label, which needs one: --label K=V"
                )),
            _ => e,
        }
    })
}

/// Whether an error is a closed stdout pipe (`strata ls | head -1`), which
/// ends the command quietly and successfully.
pub fn is_broken_pipe(err: &Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// The lazily built tree parses command lines exactly as the complete one.
    #[test]
    fn lazy_and_eager_trees_parse_alike() {
        let lines: &[&[&str]] = &[
            &["strata", "prepare", "k", "base", "--label", "a=b", "--json"],
            &[
                "strata", "--root", "/s", "-q", "view", "v", "base", "--mount", "/mnt",
            ],
            &[
                "strata",
                "ls",
                "--filter",
                "kind==active",
                "-o",
                "yaml",
                "-vv",
            ],
            &["strata", "rm", "-r", "-f", "a", "b"],
            &["strata", "list"],
            &["strata", "stat", "base", "--config", "/c.yaml"],
            &["strata", "usage"],
            &["strata", "mounts", "k", "/mnt/x"],
            &["strata", "commit", "name", "key"],
            &["strata", "diff", "k", "--output-file", "f.tar"],
            &["strata", "push", "k", "reg/x:1", "--plain-http"],
            &["strata", "completions", "bash"],
            &["strata", "logout", "127.0.0.1:5000", "--json"],
            // Global options before the subcommand, one with a subcommand's
            // name as its value; short clusters; an alias.
            &["strata", "--root", "info", "info", "base"],
            &["strata", "-qo", "json", "ls"],
            &["strata", "-ojson", "-v", "usage", "a"],
            &["strata", "--output=yaml", "--config", "/c.yaml", "tree"],
            &["strata", "-q", "remove", "k", "--json"],
        ];
        for line in lines {
            let lazy = parse_lazily_from(line.iter()).unwrap();
            let eager = Cli::command().try_get_matches_from(line.iter()).unwrap();
            let (lazy, eager) = (
                Cli::from_arg_matches(&lazy).unwrap(),
                Cli::from_arg_matches(&eager).unwrap(),
            );
            assert_eq!(format!("{lazy:?}"), format!("{eager:?}"), "{line:?}");
        }
        // Which subcommand a line names, as the one-subcommand tree needs.
        let named = |line: &[&str]| {
            let args: Vec<std::ffi::OsString> = line.iter().map(Into::into).collect();
            subcommand_named(&args).map(str::to_string)
        };
        assert_eq!(
            named(&["strata", "--root", "info", "ls"]).as_deref(),
            Some("ls")
        );
        assert_eq!(
            named(&["strata", "-vqo", "json", "rm", "k"]).as_deref(),
            Some("rm")
        );
        assert_eq!(
            named(&["strata", "-qojson", "stat", "k"]).as_deref(),
            Some("stat")
        );
        assert_eq!(named(&["strata", "--nope", "ls"]), None);
        assert_eq!(named(&["strata", "-x", "ls"]), None);
        assert_eq!(named(&["strata", "--json"]), None);
        assert!(tree_with_only("list").is_some());
        assert!(tree_with_only("help").is_none());
        // Errors and help come from the complete tree in `main`; the lazy
        // one still rejects what the complete one rejects.
        for line in [
            &["strata", "prepare"][..],
            &["strata", "ls", "--nope"],
            &["strata", "nope"],
        ] {
            assert!(parse_lazily_from(line.iter()).is_err(), "{line:?}");
            assert!(Cli::command().try_get_matches_from(line.iter()).is_err());
        }
    }
}
