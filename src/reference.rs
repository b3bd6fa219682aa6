//! Reference files generated from the one CLI definition: man pages and
//! shell completion scripts. They are checked in under `man/` and
//! `completions/`; a test fails when they are stale, and
//! `STRATA_UPDATE_REFERENCES=1 cargo test --test cli references` rewrites them.

use crate::cmd::Cli;
use crate::cmd::completions::{Shell, script};
use clap::CommandFactory;

/// Every generated file: its path relative to the repository and contents.
pub fn files() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for shell in Shell::ALL {
        let name = match shell {
            Shell::Bash => "strata.bash",
            Shell::Zsh => "_strata",
            Shell::Fish => "strata.fish",
            Shell::Elvish => "strata.elv",
            Shell::Powershell => "_strata.ps1",
        };
        let text = script(shell).expect("every shell has a completion script");
        out.push((format!("completions/{name}"), text.into_bytes()));
    }
    let mut cmd = Cli::command();
    cmd.build();
    out.push(("man/strata.1".to_string(), render(cmd.clone())));
    for sub in cmd.get_subcommands() {
        let name = format!("strata-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("strata {}", sub.get_name()));
        out.push((format!("man/{name}.1"), render(page)));
    }
    out
}

fn render(cmd: clap::Command) -> Vec<u8> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .expect("rendering to memory cannot fail");
    buf
}
