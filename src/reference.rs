//! Reference files generated from the one CLI definition: man pages and
//! shell completion scripts. They are checked in under `man/` and
//! `completions/`; a test fails when they are stale, and
//! `STRATA_UPDATE_REFERENCES=1 cargo test --test cli references` rewrites them.

use crate::cmd::completions::{Shell, script};
use crate::cmd::{Cli, GLOBAL_OPTIONS};
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
    let synopsis = synopsis(&cmd);
    let aliases = aliases(&cmd);
    let listed: Vec<(String, String)> = (cmd.get_subcommands())
        .filter(|sub| sub.get_visible_aliases().next().is_some())
        .map(|sub| {
            let page = format!("{}-{}(1)", cmd.get_name(), sub.get_name());
            let aliases: Vec<&str> = sub.get_visible_aliases().collect();
            (roff_escape(&page), aliases.join(", "))
        })
        .collect();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .expect("rendering to memory cannot fail");
    let page = String::from_utf8(buf).expect("a man page is UTF-8");
    let mut page = with_synopsis(&page, &synopsis);
    if let Some(aliases) = aliases {
        page = with_section_after_synopsis(&page, "ALIASES", &aliases);
    }
    // clap_mangen lists the subcommands without their aliases; `--help`
    // shows each beside the name, as `[alias: …]`.
    for (name, aliases) in listed {
        let line = format!("\n.TP\n{name}\n");
        assert!(page.contains(&line), "clap_mangen lists {name}");
        page = page.replace(&line, &format!("\n.TP\n{name} [alias: {aliases}]\n"));
    }
    page.into_bytes()
}

/// The ALIASES section of a subcommand's page, in roff: the other names it
/// is run by (`strata list` for `strata ls`), or None when there are none.
/// clap_mangen leaves them out.
fn aliases(cmd: &clap::Command) -> Option<String> {
    let bin = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name());
    let parent = bin.rsplit_once(' ').map_or("", |(parent, _)| parent);
    let names: Vec<String> = cmd
        .get_visible_aliases()
        .map(|alias| bold(format!("{parent} {alias}").trim_start()))
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// `page` with a section `heading` of `text` added after its SYNOPSIS.
fn with_section_after_synopsis(page: &str, heading: &str, text: &str) -> String {
    let (_, end) = synopsis_text(page);
    format!("{}.SH {heading}\n{text}\n{}", &page[..end], &page[end..])
}

/// `page` with the text of its SYNOPSIS section replaced by `synopsis`.
fn with_synopsis(page: &str, synopsis: &str) -> String {
    let (start, end) = synopsis_text(page);
    // Left-adjusted (`.ad l`), as synopses are, then the page's adjustment
    // back (`.ad`): justified, the items were spread with wide gaps.
    format!("{}.ad l\n{synopsis}\n.ad\n{}", &page[..start], &page[end..])
}

/// Where the text of `page`'s SYNOPSIS section starts and ends.
fn synopsis_text(page: &str) -> (usize, usize) {
    const HEADING: &str = "\n.SH SYNOPSIS\n";
    let start = page.find(HEADING).expect("clap_mangen writes a SYNOPSIS") + HEADING.len();
    let end = page[start..]
        .find("\n.SH ")
        .map_or(page.len(), |at| start + at + 1);
    (start, end)
}

/// The SYNOPSIS line of `cmd`'s page, in roff: what clap's usage line says,
/// with every option. clap_mangen's left out option values (`[--label]`
/// for `[--label <K=V>]...`) and repeated arguments (`<KEY>` for
/// `<KEY>...`).
fn synopsis(cmd: &clap::Command) -> String {
    use clap::ArgAction;
    let mut out = bold(cmd.get_bin_name().unwrap_or_else(|| cmd.get_name()));
    let repeated = |arg: &clap::Arg| {
        matches!(arg.get_action(), ArgAction::Append | ArgAction::Count)
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
    };
    let value_names = |arg: &clap::Arg| -> Vec<String> {
        match arg.get_value_names() {
            Some(names) => names.iter().map(ToString::to_string).collect(),
            None => vec![arg.get_id().as_str().to_uppercase()],
        }
    };
    let mut options: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_hide_set())
        .collect();
    // clap_mangen's order: display order, then the name; optional ones
    // first, and the command's own before the global ones, as in its
    // OPTIONS and GLOBAL OPTIONS sections and in `--help`.
    options.sort_by_key(|a| {
        let name = match (a.get_short(), a.get_long()) {
            (Some(short), _) => short.to_ascii_lowercase().to_string(),
            (None, Some(long)) => long.to_string(),
            (None, None) => a.get_id().to_string(),
        };
        let global = a.get_help_heading() == Some(GLOBAL_OPTIONS);
        (a.is_required_set(), global, a.get_display_order(), name)
    });
    for arg in options {
        let mut text = match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => format!(
                "{}|{}",
                bold(&format!("-{short}")),
                bold(&format!("--{long}"))
            ),
            (Some(short), None) => bold(&format!("-{short}")),
            (None, Some(long)) => bold(&format!("--{long}")),
            (None, None) => continue,
        };
        let takes = arg.get_num_args().is_some_and(|n| n.takes_values());
        if takes {
            let values: Vec<String> = value_names(arg)
                .iter()
                .map(|v| format!("<{}>", italic(v)))
                .collect();
            let values = values.join(" ");
            if arg.get_num_args().is_some_and(|n| n.min_values() == 0) {
                text = format!("{text} [{values}]");
            } else {
                text = format!("{text} {values}");
            }
        }
        if !arg.is_required_set() {
            text = format!("[{text}]");
        }
        if repeated(arg) {
            text.push_str("...");
        }
        push_item(&mut out, &text);
    }
    for arg in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        let name = italic(&value_names(arg).join(" "));
        let mut text = if arg.is_required_set() {
            format!("<{name}>")
        } else {
            format!("[{name}]")
        };
        if repeated(arg) {
            text.push_str("...");
        }
        push_item(&mut out, &text);
    }
    if cmd.has_subcommands() {
        let name = italic(cmd.get_subcommand_value_name().unwrap_or("COMMAND"));
        let text = if cmd.is_subcommand_required_set() {
            format!("<{name}>")
        } else {
            format!("[{name}]")
        };
        push_item(&mut out, &text);
    }
    out
}

/// Adds one item (`[--label <K=V>]...`) to a synopsis: a line may break
/// between items, never inside one (`\ ` is roff's unbreakable space) nor
/// by hyphenating it (`\%`).
fn push_item(line: &mut String, item: &str) {
    line.push_str(" \\%");
    line.push_str(&item.replace(' ', "\\ "));
}

/// `text` in bold, escaped for roff.
fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", roff_escape(text))
}

/// `text` in italics, escaped for roff.
fn italic(text: &str) -> String {
    format!("\\fI{}\\fR", roff_escape(text))
}

/// `text` escaped as the `roff` crate escapes it in clap_mangen's pages:
/// backslashes and dashes, and apostrophes through the page's `Aq` string.
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('-', "\\-")
        .replace('\'', "\\*(Aq")
}
