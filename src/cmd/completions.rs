use super::Context;
use crate::store::{Error, Result};
use clap_complete::env::Shells;

/// Print a shell completion script.
///
/// The script asks strata itself for completions, so snapshot keys complete
/// from the store (`strata rm <TAB>` lists keys of `$STRATA_ROOT` or the
/// default store). The same scripts are checked in under `completions/`.
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
pub fn script(shell: Shell) -> Result<String> {
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

pub fn run(args: Args, ctx: &mut Context) -> Result<()> {
    ctx.printer.stdout(&script(args.shell)?)
}

/// Completion candidates for snapshot keys, read from the store named by
/// `$STRATA_ROOT`, the config file or the default; nothing when there is no
/// store (completion never creates one).
pub fn keys() -> Vec<clap_complete::engine::CompletionCandidate> {
    use clap_complete::engine::CompletionCandidate;
    let root = std::env::var_os("STRATA_ROOT")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| crate::config::load(None).ok().and_then(|(_, f)| f.root))
        .unwrap_or_else(crate::config::default_root);
    if !root.join("index.db").exists() {
        return Vec::new();
    }
    let Ok(mut store) = crate::store::Store::open(&root, Default::default()) else {
        return Vec::new();
    };
    store
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|i| CompletionCandidate::new(i.name).help(Some(i.kind.as_str().into())))
        .collect()
}
