use super::Context;
use crate::store::{Error, Result, SnapshotKind};
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::Shells;
use std::ffi::OsString;

/// Print a shell completion script.
///
/// The script asks strata itself for completions, so snapshot keys complete
/// from the store (`strata rm <TAB>` lists the keys of the store the line
/// names with --root, else of `$STRATA_ROOT`, the config file's or the
/// default store). It runs `strata` from PATH. The same scripts are checked
/// in under `completions/`.
///
/// Examples:
///   strata completions bash > ~/.local/share/bash-completion/completions/strata
///   strata completions zsh > ~/.zfunc/_strata
///   strata completions fish > ~/.config/fish/completions/strata.fish
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The shell
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

impl Shell {
    pub const ALL: [Shell; 5] = [
        Shell::Bash,
        Shell::Zsh,
        Shell::Fish,
        Shell::Elvish,
        Shell::Powershell,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
            Shell::Elvish => "elvish",
            Shell::Powershell => "powershell",
        }
    }
}

/// The registration script for `shell`: it calls `COMPLETE=SHELL strata`
/// back for every completion.
///
/// Bash's is strata's own (`completions.bash`), not clap_complete's: that
/// one passed the words as bash split them at `:` and `=` (`strata info
/// sha256:e<TAB>` asked for `e`, `--root=DIR` was `--root = DIR`) and
/// inserted candidates unquoted (a key `my key` became two words). It keeps
/// clap_complete's protocol (`_CLAP_COMPLETE_INDEX`, `_CLAP_IFS`, …).
pub fn script(shell: Shell) -> Result<String> {
    if shell == Shell::Bash {
        return Ok(BASH.to_owned());
    }
    let shells = Shells::builtins();
    let completer = shells
        .completer(shell.name())
        .ok_or_else(|| Error::unsupported(format!("no completions for {}", shell.name())))?;
    let mut buf = Vec::new();
    completer
        .write_registration("COMPLETE", "strata", "strata", "strata", &mut buf)
        .map_err(|e| Error::io("cannot write the completion script", e))?;
    String::from_utf8(buf)
        .map_err(|e| Error::internal("completion script is not UTF-8").with_source(e))
}

/// The bash registration script (see [`script`]).
const BASH: &str = include_str!("completions.bash");

/// The command tree the shell's completion requests (`COMPLETE=SHELL
/// strata -- WORDS…`) are answered from: the CLI's, with the subcommands'
/// aliases hidden.
///
/// clap_complete 4.6 offers a subcommand's name and its visible aliases as
/// one candidate, and keeps the first of them in alphabetical order
/// (clap-rs/clap#6317): `strata <TAB>` listed `umount remove list`, never
/// `unmount rm ls`, and `strata r<TAB>` gave `remove`. Hidden, an alias is
/// offered only where no name matches the word (`strata st<TAB>` still
/// gives `stat`), and a line that uses one completes as with the name.
/// `--help` and the man pages still show the aliases.
pub fn tree() -> clap::Command {
    use clap::CommandFactory;
    super::Cli::command().mut_subcommands(|sub| {
        let aliases: Vec<String> = sub.get_all_aliases().map(String::from).collect();
        aliases
            .into_iter()
            .fold(sub.alias(None), |sub, alias| sub.alias(alias))
    })
}

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    ctx.printer.stdout(&script(args.shell)?)
}

/// Completion candidates for snapshot keys of any kind (`rm`, `info`,
/// `label`, `usage`, `tree`), read from the store the line being completed
/// would use: its `--root`, else `$STRATA_ROOT`, else the `root` of its
/// `--config` file or of the default one, else the default store. Nothing
/// when there is no store (completion never creates one).
pub fn keys() -> Vec<CompletionCandidate> {
    of_kinds(&[
        SnapshotKind::Active,
        SnapshotKind::View,
        SnapshotKind::Committed,
    ])
}

/// Committed snapshots: the only valid parents (`prepare`, `view`,
/// `apply`, `diff --parent`), and what `push` and `export` take.
pub fn committed() -> Vec<CompletionCandidate> {
    of_kinds(&[SnapshotKind::Committed])
}

/// Active snapshots: what `commit` takes.
pub fn actives() -> Vec<CompletionCandidate> {
    of_kinds(&[SnapshotKind::Active])
}

/// Actives and views: what `mount` and `mounts` take.
pub fn mountable() -> Vec<CompletionCandidate> {
    of_kinds(&[SnapshotKind::Active, SnapshotKind::View])
}

/// Actives and committed snapshots: what `diff` takes (a view has no
/// changes of its own).
pub fn with_changes() -> Vec<CompletionCandidate> {
    of_kinds(&[SnapshotKind::Active, SnapshotKind::Committed])
}

/// What `unmount` takes: the snapshots strata has mounted, and where.
pub fn mounted() -> Vec<CompletionCandidate> {
    let mut out = Vec::new();
    for info in snapshots().into_iter().filter(|i| !i.mounted_at.is_empty()) {
        for target in &info.mounted_at {
            out.push(
                CompletionCandidate::new(target)
                    .help(Some(format!("where {} is mounted", info.name).into())),
            );
        }
        out.push(CompletionCandidate::new(info.name).help(Some(info.kind.as_str().into())));
    }
    out
}

/// The snapshots of `kinds`, each with its kind as help.
fn of_kinds(kinds: &[SnapshotKind]) -> Vec<CompletionCandidate> {
    snapshots()
        .into_iter()
        .filter(|i| kinds.contains(&i.kind))
        .map(|i| CompletionCandidate::new(i.name).help(Some(i.kind.as_str().into())))
        .collect()
}

/// Every snapshot of the store the line being completed would use (see
/// [`keys`]); none when there is no store.
fn snapshots() -> Vec<crate::store::Info> {
    use crate::config::{self, Given, Source};
    use std::path::PathBuf;
    // The shell runs `COMPLETE=SHELL strata -- WORDS…`, the last word the
    // one being completed; the store is the one that line would use.
    let words: Vec<OsString> = (crate::argv::args_os().into_iter())
        .skip_while(|a| a != "--")
        .collect();
    let flag = typed_option(&words, "--root").map(PathBuf::from);
    let env = std::env::var_os("STRATA_ROOT").map(PathBuf::from);
    let config = typed_option(&words, "--config").map(PathBuf::from);
    let given = Given {
        root: (flag.as_deref().map(|p| (p, Source::Flag)))
            .or(env.as_deref().map(|p| (p, Source::Environment))),
        config: config.as_deref(),
        output: None,
    };
    let root = match config::resolve(given) {
        Ok(settings) => settings.root.value,
        // A config file that does not load: the flag, the environment or
        // the default.
        Err(_) => match (flag.or(env)).filter(|p| !p.as_os_str().is_empty()) {
            Some(root) => root,
            None => match config::default_root() {
                Ok(root) => root,
                Err(_) => return Vec::new(),
            },
        },
    };
    if !root.join("index.db").exists() {
        return Vec::new();
    }
    let Ok(mut store) = crate::store::Store::open(&root, Default::default()) else {
        return Vec::new();
    };
    store.list().unwrap_or_default()
}

/// The value given to option `name` (`--name V` or `--name=V`) among
/// `words`, the last word (the one being completed) left out; the last
/// one when given twice, as clap takes it.
fn typed_option(words: &[OsString], name: &str) -> Option<OsString> {
    use std::os::unix::ffi::OsStrExt;
    let before = &words[..words.len().saturating_sub(1)];
    let mut found = None;
    for (i, word) in before.iter().enumerate() {
        let bytes = word.as_bytes();
        if bytes == name.as_bytes() {
            found = before.get(i + 1).cloned();
        } else if let Some(value) = bytes
            .strip_prefix(name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
        {
            found = Some(std::ffi::OsStr::from_bytes(value).to_owned());
        }
    }
    found.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::typed_option;
    use std::ffi::OsString;

    fn words(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_typed_on_the_line() {
        let line = words(&["--", "strata", "--root", "/a", "--root=/b", "rm", ""]);
        assert_eq!(typed_option(&line, "--root"), Some("/b".into()));
        assert_eq!(typed_option(&line, "--config"), None);
        // The word being completed is not a value yet.
        let line = words(&["--", "strata", "--root"]);
        assert_eq!(typed_option(&line, "--root"), None);
        let line = words(&[
            "--", "strata", "--root", "/a", "--config", "c.yaml", "rm", "x",
        ]);
        assert_eq!(typed_option(&line, "--root"), Some("/a".into()));
        assert_eq!(typed_option(&line, "--config"), Some("c.yaml".into()));
        // `--rooted` is not `--root`.
        let line = words(&["--", "strata", "--rooted=/x", "rm", ""]);
        assert_eq!(typed_option(&line, "--root"), None);
    }
}
