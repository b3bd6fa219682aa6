//! Reference files generated from the one CLI definition: man pages and
//! shell completion scripts. They are checked in under `man/` and
//! `completions/`; a test fails when they are stale, and
//! `STRATA_UPDATE_REFERENCES=1 cargo test --test cli references` rewrites them.

use crate::cmd::completions::{Shell, script};
use crate::cmd::{Cli, GLOBAL_OPTIONS};
use crate::store::Kind;
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
    let top = cmd.get_name().to_string();
    let mut page = render(cmd.clone());
    page = with_sections_at_end(
        &page,
        &[
            ("EXIT STATUS", exit_status()),
            ("ENVIRONMENT", environment()),
        ],
    );
    out.push(("man/strata.1".to_string(), page.into_bytes()));
    for sub in cmd.get_subcommands() {
        let name = format!("strata-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("strata {}", sub.get_name()));
        let page = with_sections_at_end(
            &render(page),
            &[("EXIT STATUS", exit_status()), ("SEE ALSO", see_also(&top))],
        );
        out.push((format!("man/{name}.1"), page.into_bytes()));
    }
    out
}

/// The exit codes (SPEC "Errors and exit codes"), in roff: every page has
/// them, as git's and systemd's pages do. clap_mangen writes no such
/// section (audit).
fn exit_status() -> String {
    let kinds = [
        (
            Kind::Internal,
            "an I/O failure, a corrupt store, anything else unexpected",
        ),
        (
            Kind::Usage,
            "a bad command line (an unknown flag or command, a missing argument)",
        ),
        (
            Kind::NotFound,
            "a named snapshot, parent or mount does not exist",
        ),
        (Kind::AlreadyExists, "the key or name is taken"),
        (
            Kind::FailedPrecondition,
            "the operation does not fit the snapshot's state (it has children, is mounted, \
             is not active, is a view...)",
        ),
        (
            Kind::Invalid,
            "a bad value: a key, label or filter, a flag's value (--kind bogus), \
             a malformed or unsafe tarball",
        ),
        (
            Kind::Unsupported,
            "the driver or kernel cannot do it (overlay unavailable, a mount without privilege)",
        ),
    ];
    let mut items = vec![
        roff_escape("An error's kind is also in its JSON form (-o json): error.kind."),
        format!(".TP\n{}\nSuccess.", bold("0")),
    ];
    for (kind, when) in kinds {
        items.push(format!(
            ".TP\n{}\n{}: {}.",
            bold(&kind.exit_code().to_string()),
            bold(kind.as_str()),
            roff_escape(when)
        ));
    }
    items.join("\n")
}

/// The environment variables strata reads, in roff (strata(1) only; the
/// other pages point there). The crash and pause points of the tests are
/// not among them (release builds have none), nor the tests' switches
/// (`STRATA_PROGRESS_DELAY_MS`, `STRATA_MOUNT_FALLBACK`).
fn environment() -> String {
    let vars: [(&[&str], &str); 8] = [
        (
            &["STRATA_ROOT"],
            "The store directory when --root is not given (the config file's root \
             counts only without either). An empty value counts as unset.",
        ),
        (
            &["STRATA_CONFIG"],
            "The config file read when --config is not given, in place of the default \
             one. It may be missing: then no file is read. An empty value counts as unset.",
        ),
        (
            &["XDG_DATA_HOME", "XDG_CONFIG_HOME", "HOME"],
            "Where the default store and config file are for a user other than root: \
             ${XDG_DATA_HOME:-~/.local/share}/strata and \
             ${XDG_CONFIG_HOME:-~/.config}/strata/config.yaml.",
        ),
        (
            &["NO_COLOR"],
            "When set (to any value, even empty), no colours, also on a terminal.",
        ),
        (
            &["SOURCE_DATE_EPOCH"],
            "A whole number of seconds since 1970: the time of the layers and images \
             diff, export and push write (later file times are clamped to it), for \
             reproducible digests. Any other value is an invalid error.",
        ),
        (
            &["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"],
            "Where login writes registry credentials and push, pull and logout find \
             them: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, \
             ${XDG_CONFIG_HOME:-~/.config}/containers/auth.json, then \
             ${DOCKER_CONFIG:-~/.docker}/config.json.",
        ),
        (
            &["SSL_CERT_FILE"],
            "A PEM file of the certificate authorities to trust for registries, in \
             place of the system's.",
        ),
        (
            &["STRATA_REGISTRY_TIMEOUT"],
            "Seconds to wait for a registry: for each read of a pull or push (300 \
             without it) and for all of a login (60). A whole number from 1 to \
             4294967295, else an invalid error.",
        ),
    ];
    let items: Vec<String> = (vars.iter())
        .map(|(names, what)| {
            let names: Vec<String> = names.iter().map(|n| bold(n)).collect();
            format!(".TP\n{}\n{}", names.join(", "), roff_escape(what))
        })
        .collect();
    items.join("\n")
}

/// The SEE ALSO section of a subcommand's page: strata(1), for the global
/// options, the environment and the other commands.
fn see_also(top: &str) -> String {
    format!(
        "{}(1) for the global options, the environment and the other commands.",
        bold(top)
    )
}

/// `page` with `sections` (heading and roff text) added before its VERSION
/// and AUTHORS sections, or at its end: clap_mangen's pages end with them.
fn with_sections_at_end(page: &str, sections: &[(&str, String)]) -> String {
    let at = ["\n.SH VERSION\n", "\n.SH AUTHORS\n"]
        .iter()
        .filter_map(|heading| page.find(heading).map(|at| at + 1))
        .min()
        .unwrap_or(page.len());
    let added: String = sections
        .iter()
        .map(|(heading, text)| format!(".SH \"{heading}\"\n{text}\n"))
        .collect();
    format!("{}{added}{}", &page[..at], &page[at..])
}

fn render(cmd: clap::Command) -> String {
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
    page
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
