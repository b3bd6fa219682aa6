//! The checked-in man pages and completion scripts match the CLI definition.
//! Regenerate them with `STRATA_UPDATE_REFERENCES=1 cargo test --test cli references`.

use crate::support::{CONFIG_VAR, no_config};
use std::fs;
use std::path::Path;

#[test]
fn references_are_up_to_date() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("STRATA_UPDATE_REFERENCES").is_some();
    let mut stale = Vec::new();
    let files = strata::reference::files();
    for (path, want) in &files {
        let full = repo.join(path);
        if fs::read(&full).ok().as_deref() != Some(want.as_slice()) {
            if update {
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(&full, want).unwrap();
            }
            stale.push(path.clone());
        }
    }
    // No leftover pages of removed commands.
    for dir in ["man", "completions"] {
        for entry in fs::read_dir(repo.join(dir)).into_iter().flatten() {
            let entry = entry.unwrap();
            let rel = format!("{dir}/{}", entry.file_name().to_string_lossy());
            if !files.iter().any(|(p, _)| *p == rel) {
                if update {
                    fs::remove_file(entry.path()).unwrap();
                }
                stale.push(rel);
            }
        }
    }
    assert!(
        update || stale.is_empty(),
        "stale generated files: {stale:?}\nregenerate with: STRATA_UPDATE_REFERENCES=1 cargo test --test cli references"
    );
    assert!(files.len() >= 5 + 1 + 13);
}

#[test]
fn man_page_renders_with_man() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = fs::read_to_string(repo.join("man/strata-prepare.1")).unwrap();
    assert!(page.contains("prepare"), "{page}");
    assert!(page.contains("Examples"), "the examples are in the page");
}

/// Each page's SYNOPSIS shows what `--help`'s usage line shows: option
/// values (`[--label <K=V>]...`, not `[--label]`) and repeated arguments
/// (`<KEY>...`, not `<KEY>`), for every option and argument of the command.
#[test]
fn man_synopses_show_values_and_repetition() {
    use clap::CommandFactory;
    let synopsis = |name: &str| -> String {
        let page = man_page(name);
        let (_, rest) = page.split_once(".SH SYNOPSIS\n").unwrap();
        rest.split("\n.SH ").next().unwrap().to_string()
    };
    let escape = |text: &str| text.replace('-', "\\-");
    for (page, want) in [
        ("strata-rm", "<\\fIKEY\\fR>..."),
        ("strata-usage", "[\\fIKEY\\fR]..."),
        ("strata-label", "<\\fIK=V\\fR>..."),
        ("strata-prepare", "[\\fB\\-\\-label\\fR\\ <\\fIK=V\\fR>]..."),
        ("strata-prepare", "[\\fB\\-\\-mount\\fR\\ <\\fITARGET\\fR>]"),
        ("strata-ls", "[\\fB\\-\\-filter\\fR\\ <\\fIEXPR\\fR>]..."),
        (
            "strata",
            "[\\fB\\-o\\fR|\\fB\\-\\-output\\fR\\ <\\fIFORMAT\\fR>]",
        ),
    ] {
        let text = synopsis(page);
        assert!(text.contains(want), "{page}: no {want} in\n{text}");
    }
    let mut cmd = strata::cmd::Cli::command();
    cmd.build();
    for sub in cmd.get_subcommands() {
        let page = format!("strata-{}", sub.get_name());
        let text = synopsis(&page);
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let takes = arg.get_num_args().is_some_and(|n| n.takes_values());
            let names: Vec<String> = arg
                .get_value_names()
                .map(|v| {
                    v.iter()
                        .map(|n| format!("<\\fI{}\\fR>", escape(n)))
                        .collect()
                })
                .unwrap_or_default();
            match arg.get_long() {
                Some(long) if takes => {
                    let want = format!("\\-\\-{}\\fR\\ {}", escape(long), names.join("\\ "));
                    assert!(text.contains(&want), "{page}: no {want} in\n{text}");
                }
                Some(long) => {
                    let want = format!("\\-\\-{}\\fR]", escape(long));
                    assert!(text.contains(&want), "{page}: no {want} in\n{text}");
                }
                None if arg.is_positional() => {
                    let name = names.join(" ").replace("\\fI", "").replace("\\fR", "");
                    let name = name.trim_start_matches('<').trim_end_matches('>');
                    let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1);
                    let want = match (arg.is_required_set(), many) {
                        (true, false) => format!("<\\fI{name}\\fR>"),
                        (true, true) => format!("<\\fI{name}\\fR>..."),
                        (false, false) => format!("[\\fI{name}\\fR]"),
                        (false, true) => format!("[\\fI{name}\\fR]..."),
                    };
                    assert!(text.contains(&want), "{page}: no {want} in\n{text}");
                }
                None => {}
            }
        }
    }
}

/// The man pages show the SPEC's aliases, as `--help` does: an ALIASES
/// section in each aliased command's page, and the alias beside the
/// command in strata(1)'s list.
#[test]
fn man_pages_show_the_aliases() {
    let page = man_page;
    let top = page("strata");
    for (name, alias) in [
        ("unmount", "umount"),
        ("rm", "remove"),
        ("ls", "list"),
        ("info", "stat"),
    ] {
        let text = page(&format!("strata-{name}"));
        let want = format!(".SH ALIASES\n\\fBstrata {alias}\\fR\n");
        assert!(
            text.contains(&want),
            "strata-{name}: no {want:?} in\n{text}"
        );
        let want = format!("\n.TP\nstrata\\-{name}(1) [alias: {alias}]\n");
        assert!(top.contains(&want), "strata: no {want:?} in\n{top}");
    }
    // Only aliased commands have the section.
    assert!(!page("strata-prepare").contains(".SH ALIASES"));
    assert!(!top.contains(".SH ALIASES"));
}

/// Every command's `--help` explains itself and shows at least one example;
/// the top-level help shows the SPEC's aliases.
#[test]
fn every_command_has_help_with_an_example() {
    use clap::CommandFactory;
    let tmp = tempfile::tempdir().unwrap();
    let config = no_config(&tmp.path().join("store"));
    let top = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--help")
        .env(CONFIG_VAR, &config)
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    for alias in ["umount", "remove", "list", "stat"] {
        assert!(top.contains(&format!("[alias: {alias}]")), "{top}");
    }
    let cmd = strata::cmd::Cli::command();
    for sub in cmd.get_subcommands() {
        let name = sub.get_name();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args([name, "--help"])
            .env(CONFIG_VAR, &config)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "strata {name} --help");
        assert!(
            help.contains("Examples:"),
            "strata {name} --help has no example:\n{help}"
        );
        assert!(help.contains(&format!("strata {name}")), "{help}");
        assert!(
            help.lines().next().unwrap().len() > 10,
            "a description: {help}"
        );
    }
}

/// The bash script completes subcommands and, dynamically, the keys of
/// the store in `$STRATA_ROOT`, or of the one `--root` names on the line.
#[test]
fn bash_completion_lists_snapshot_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let config = no_config(&root);
    let bin = env!("CARGO_BIN_EXE_strata");
    let strata = |args: &[&str]| {
        let ok = std::process::Command::new(bin)
            .arg("--root")
            .arg(&root)
            .args(args)
            .env(CONFIG_VAR, &config)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "{args:?}");
    };
    strata(&["init", "--driver", "native"]);
    strata(&["prepare", "alpha"]);
    strata(&["prepare", "beta"]);
    let bindir = std::path::Path::new(bin).parent().unwrap();
    let script = r#"source <(strata completions bash)
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; _clap_complete_strata strata "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"; printf '%s\n' "${COMPREPLY[@]}"; }
echo "--- rm"; complete_words strata rm ""
echo "--- root"; complete_words strata --root "$ON_LINE" rm ""
echo "--- pre"; complete_words strata pre"#;
    let empty = tmp.path().join("empty");
    let made = std::process::Command::new(bin)
        .arg("--root")
        .arg(&empty)
        .args(["init", "--driver", "native"])
        .env(CONFIG_VAR, &config)
        .status()
        .unwrap();
    assert!(made.success());
    let complete = |strata_root: &std::path::Path, on_line: &std::path::Path| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("PATH", format!("{}:/usr/bin:/bin", bindir.display()))
            .env("HOME", tmp.path())
            .env(CONFIG_VAR, &config)
            .env("STRATA_ROOT", strata_root)
            .env("ON_LINE", on_line)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let keys = |part: &str| {
        let mut keys: Vec<String> = part
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('-'))
            .map(String::from)
            .collect();
        keys.sort();
        keys
    };
    let text = complete(&root, &empty);
    let (rm, rest) = text.split_once("--- root").unwrap();
    let (on_line, pre) = rest.split_once("--- pre").unwrap();
    assert_eq!(keys(rm), ["alpha", "beta"], "{text}");
    assert!(pre.lines().any(|l| l == "prepare"), "{text}");
    // --root on the line wins over $STRATA_ROOT, both ways.
    assert!(keys(on_line).is_empty(), "{text}");
    let text = complete(&empty, &root);
    let (rm, rest) = text.split_once("--- root").unwrap();
    let (on_line, _) = rest.split_once("--- pre").unwrap();
    assert!(keys(rm).is_empty(), "{text}");
    assert_eq!(keys(on_line), ["alpha", "beta"], "{text}");
}

/// A store under a new temporary directory with the keys bash splits or
/// would split: `sha256:abcd`, `sha256:ef12` (at the `:`), `my key` and
/// `it's $x` (at the space, and shell characters).
fn store_with_awkward_keys() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--root")
            .arg(&root)
            .args(args)
            .env(CONFIG_VAR, no_config(&root))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    run(&["init", "--driver", "native"]);
    for key in ["sha256:abcd", "sha256:ef12", "my key", "it's $x"] {
        run(&["prepare", key]);
    }
    (tmp, root)
}

/// Runs the bash script's completion function once per case, as bash
/// calls it on TAB with the cursor at the end of `line`: `words` split as
/// bash splits them (at `:` and `=` too), `cur` the text bash will replace.
/// Gives each COMPREPLY, its items in brackets: `[sha256:ef12]`.
fn bash_complete(tmp: &Path, strata_root: &Path, cases: &[(&str, &str, &[&str])]) -> Vec<String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut script = String::from(
        r#"source <(strata completions bash)
complete_line() {
    COMP_LINE=$1 COMP_POINT=${#1}
    local cur=$2
    shift 2
    COMP_WORDS=("$@") COMP_CWORD=$(($# - 1)) COMPREPLY=()
    _clap_complete_strata strata "$cur" "${COMP_WORDS[COMP_CWORD-1]}"
    local c
    for c in "${COMPREPLY[@]}"; do printf '[%s]' "$c"; done
    echo
}
"#,
    );
    for (line, cur, words) in cases {
        let words: Vec<String> = words.iter().map(|w| quote(w)).collect();
        script += &format!(
            "complete_line {} {} {}\n",
            quote(line),
            quote(cur),
            words.join(" ")
        );
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_strata"));
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", bin.parent().unwrap().display()),
        )
        .env("HOME", tmp)
        .env(CONFIG_VAR, tmp.join("no-config.yaml"))
        .env("STRATA_ROOT", strata_root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), cases.len(), "{text}");
    text.lines().map(String::from).collect()
}

/// Keys with a `:` (every pulled layer's `sha256:…`) complete although bash
/// splits the word at it: strata is asked for the whole word, and the
/// candidates are trimmed of the part up to the `:` that bash keeps.
#[test]
fn bash_completion_completes_keys_with_colons() {
    let (tmp, root) = store_with_awkward_keys();
    let got = bash_complete(
        tmp.path(),
        &root,
        &[
            ("strata info sha", "sha", &["strata", "info", "sha"]),
            (
                "strata info sha256:e",
                "e",
                &["strata", "info", "sha256", ":", "e"],
            ),
            // The cursor right after the colon: bash's word is `:`, the
            // text it replaces empty.
            (
                "strata info sha256:",
                "",
                &["strata", "info", "sha256", ":"],
            ),
            (
                "strata rm sha256:ef12 sha256:a",
                "a",
                &["strata", "rm", "sha256", ":", "ef12", "sha256", ":", "a"],
            ),
        ],
    );
    assert_eq!(
        got,
        [
            "[sha256:abcd][sha256:ef12]",
            "[ef12]",
            "[abcd][ef12]",
            "[abcd]"
        ]
    );
}

/// `--root=DIR` names the store keys complete from, as `--root DIR` does,
/// though bash splits it at the `=`; the directory itself still completes
/// after `--root=`.
#[test]
fn bash_completion_reads_root_given_with_equals() {
    let (tmp, root) = store_with_awkward_keys();
    let empty = tmp.path().join("empty");
    let dir = root.to_str().unwrap();
    let line = format!("strata rm --root={dir} sha");
    let partial = &dir[..dir.len() - 2];
    let partial_line = format!("strata --root={partial}");
    let got = bash_complete(
        tmp.path(),
        &empty,
        &[
            (&line, "sha", &["strata", "rm", "--root", "=", dir, "sha"]),
            (&partial_line, partial, &["strata", "--root", "=", partial]),
        ],
    );
    assert_eq!(got, ["[sha256:abcd][sha256:ef12]", &format!("[{dir}/]")]);
}

/// Keys with spaces and shell characters are inserted quoted, as one word:
/// with backslashes, or in the quotes the word was opened with.
#[test]
fn bash_completion_quotes_keys_with_spaces() {
    let (tmp, root) = store_with_awkward_keys();
    let got = bash_complete(
        tmp.path(),
        &root,
        &[
            ("strata info my", "my", &["strata", "info", "my"]),
            (
                r"strata info my\ k",
                r"my\ k",
                &["strata", "info", r"my\ k"],
            ),
            ("strata info 'my k", "my k", &["strata", "info", "'my k"]),
            ("strata info \"my k", "my k", &["strata", "info", "\"my k"]),
            ("strata info it", "it", &["strata", "info", "it"]),
            ("strata info 'it", "it", &["strata", "info", "'it"]),
            ("strata info \"it", "it", &["strata", "info", "\"it"]),
        ],
    );
    assert_eq!(
        got,
        [
            r"[my\ key]",
            r"[my\ key]",
            "[my key]",
            "[my key]",
            r"[it\'s\ \$x]",
            r"[it'\''s $x]",
            r#"[it's \$x]"#,
        ]
    );
}

/// Dynamic completions offer only the snapshots an argument takes: committed
/// ones as a PARENT (`prepare`, `view`, `apply`, `diff --parent`) and for
/// `push`/`export`, actives for `commit`, actives and views for
/// `mount`/`mounts`, actives and committed for `diff`, what strata mounted
/// (key and target) for `unmount`, any for `rm`, `info`, `label`, `usage`.
#[test]
fn completions_offer_the_kinds_each_argument_takes() {
    use crate::support::*;
    let s = setup!("native");
    s.strata(&["prepare", "w"]).success();
    s.strata(&["commit", "base", "w"]).success();
    s.strata(&["view", "look", "base"]).success();
    s.strata(&["prepare", "work", "base"]).success();
    let target = s.scratch_dir("mnt");
    let target = target.to_str().unwrap();
    s.strata(&["mount", "work", target]).success();
    let complete = |words: &[&str]| -> Vec<String> {
        // The index of the word completed, "strata" being word 0.
        let index = words.len().to_string();
        let run = s.strata_with(
            &[&["--", "strata"][..], words].concat(),
            With {
                env: &[
                    ("COMPLETE", "bash"),
                    ("_CLAP_COMPLETE_INDEX", &index),
                    ("STRATA_ROOT", s.root.to_str().unwrap()),
                ],
                no_root: true,
                ..Default::default()
            },
        );
        let mut got: Vec<String> = run
            .stdout
            .split(['\n', '\u{b}'])
            .filter(|w| !w.is_empty() && !w.starts_with('-'))
            .map(String::from)
            .collect();
        got.sort();
        got
    };
    let all = ["base", "look", "work"];
    for (words, want) in [
        (&["prepare", "k", ""][..], &["base"][..]),
        (&["view", "k", ""], &["base"]),
        (&["apply", "n", ""], &["base"]),
        (&["diff", "k", "--parent", ""], &["base"]),
        (&["push", ""], &["base"]),
        (&["export", ""], &["base"]),
        (&["commit", "n", ""], &["work"]),
        (&["mount", ""], &["look", "work"]),
        (&["mounts", ""], &["look", "work"]),
        (&["diff", ""], &["base", "work"]),
        (&["unmount", ""], &[target, "work"]),
        (&["rm", ""], &all),
        (&["info", ""], &all),
        (&["label", ""], &all),
        (&["usage", ""], &all),
        (&["tree", ""], &all),
    ] {
        let mut want: Vec<&str> = want.to_vec();
        want.sort();
        assert_eq!(complete(words), want, "strata {}", words.join(" "));
    }
    s.strata(&["unmount", target]).success();
}

/// Dynamic completion offers the subcommands' names, not their aliases in
/// their place (clap_complete kept whichever of a name and its visible
/// aliases sorts first: `umount remove list`, and `remove` for `r`). An
/// alias still completes where no name matches.
#[test]
fn completions_offer_command_names_not_aliases() {
    let tmp = tempfile::tempdir().unwrap();
    let config = no_config(&tmp.path().join("store"));
    let complete = |word: &str| -> Vec<String> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["--", "strata", word])
            .env("COMPLETE", "bash")
            .env("_CLAP_COMPLETE_INDEX", "1")
            .env(CONFIG_VAR, &config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split(['\n', '\u{b}'])
            .filter(|w| !w.is_empty() && !w.starts_with('-'))
            .map(String::from)
            .collect()
    };
    let all = complete("");
    for name in ["rm", "ls", "unmount", "info", "prepare", "commit"] {
        assert!(all.iter().any(|w| w == name), "no {name} in {all:?}");
    }
    assert_eq!(complete("r"), ["rm"]);
    assert!(
        complete("l").iter().any(|w| w == "ls"),
        "{:?}",
        complete("l")
    );
    assert!(complete("u").iter().any(|w| w == "unmount"));
    assert_eq!(complete("st"), ["stat"]);
    assert_eq!(complete("rem"), ["remove"]);
}

/// The page `man/NAME.1` as generated from the CLI definition.
fn man_page(name: &str) -> String {
    let files = strata::reference::files();
    let (_, page) = files
        .iter()
        .find(|(path, _)| *path == format!("man/{name}.1"))
        .unwrap_or_else(|| panic!("no page for {name}"));
    String::from_utf8_lossy(page).into_owned()
}

/// The text of section `heading` of a man page, None when it has none.
fn man_section(page: &str, heading: &str) -> Option<String> {
    let start = [
        format!("\n.SH {heading}\n"),
        format!("\n.SH \"{heading}\"\n"),
    ]
    .iter()
    .find_map(|h| page.find(h.as_str()).map(|at| at + h.len()))?;
    let text = &page[start..];
    Some(text.split("\n.SH ").next().unwrap().to_string())
}

/// strata(1) has the SPEC's exit codes (EXIT STATUS) and the environment
/// variables strata reads (ENVIRONMENT); every command's page has the exit
/// codes and points at strata(1). The NAME line says what strata is once
/// (it read `strata - strata: layered filesystem snapshots, …`). clap_mangen
/// writes none of these sections (audit).
#[test]
fn man_pages_have_exit_status_and_environment() {
    use clap::CommandFactory;
    let top = man_page("strata");
    let name = man_section(&top, "NAME").unwrap();
    assert_eq!(
        name.trim(),
        "strata \\- Layered filesystem snapshots, without a daemon"
    );
    let codes = [
        (1, "internal"),
        (2, "usage"),
        (3, "not_found"),
        (4, "already_exists"),
        (5, "failed_precondition"),
        (6, "invalid"),
        (7, "unsupported"),
    ];
    let mut cmd = strata::cmd::Cli::command();
    cmd.build();
    let pages = std::iter::once("strata".to_string()).chain(
        cmd.get_subcommands()
            .map(|s| format!("strata-{}", s.get_name())),
    );
    for name in pages {
        let page = man_page(&name);
        let exit = man_section(&page, "EXIT STATUS")
            .unwrap_or_else(|| panic!("{name}: no EXIT STATUS in\n{page}"));
        assert!(exit.contains(".TP\n\\fB0\\fR\nSuccess."), "{name}: {exit}");
        for (code, kind) in codes {
            let want = format!(".TP\n\\fB{code}\\fR\n\\fB{kind}\\fR: ");
            assert!(exit.contains(&want), "{name}: no {want:?} in\n{exit}");
        }
        if name != "strata" {
            let see = man_section(&page, "SEE ALSO")
                .unwrap_or_else(|| panic!("{name}: no SEE ALSO in\n{page}"));
            assert!(see.contains("\\fBstrata\\fR(1)"), "{name}: {see}");
        }
    }
    let env = man_section(&top, "ENVIRONMENT").unwrap_or_else(|| panic!("no ENVIRONMENT:\n{top}"));
    for var in [
        "STRATA_ROOT",
        "STRATA_CONFIG",
        "NO_COLOR",
        "SOURCE_DATE_EPOCH",
        "STRATA_REGISTRY_TIMEOUT",
        "REGISTRY_AUTH_FILE",
        "XDG_DATA_HOME",
    ] {
        let var = format!("\\fB{var}\\fR");
        assert!(env.contains(&var), "no {var} in\n{env}");
    }
    // Not the tests' crash points, compiled out of release builds.
    assert!(!env.contains("STRATA_CRASH") && !env.contains("STRATA_PAUSE"));
    // The rendered page has the sections, before VERSION.
    let rendered = std::process::Command::new("man")
        .args(["-l", "-"])
        .env("MANWIDTH", "80")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    if let Ok(mut man) = rendered {
        use std::io::Write;
        man.stdin.take().unwrap().write_all(top.as_bytes()).unwrap();
        let out = man.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && !text.is_empty() {
            let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
            assert!(at("EXIT STATUS") < at("ENVIRONMENT"), "{text}");
            assert!(at("ENVIRONMENT") < at("VERSION"), "{text}");
        }
    }
}

/// Each command's `--help` and man page list its own options first, under
/// "Options:" (OPTIONS), then the global ones under "Global options:"
/// (GLOBAL OPTIONS); the synopsis has them in that order too. They were
/// interleaved: `rm --help` read `-r`, `--root`, `--config`, `-f`, `-o`…
/// (audit).
#[test]
fn own_options_come_before_the_global_ones() {
    use clap::CommandFactory;
    let tmp = tempfile::tempdir().unwrap();
    let config = no_config(&tmp.path().join("store"));
    let global = [
        "--root",
        "--config",
        "--output",
        "--json",
        "--quiet",
        "--verbose",
    ];
    let mut cmd = strata::cmd::Cli::command();
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = sub.get_name();
        let own: Vec<String> = sub
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|long| !global.contains(&format!("--{long}").as_str()))
            .map(|long| format!("--{long}"))
            .collect();
        assert!(own.iter().any(|o| o == "--help"), "{name}: {own:?}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args([name, "--help"])
            .env(CONFIG_VAR, &config)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let (before, after) = help
            .split_once("\nGlobal options:\n")
            .unwrap_or_else(|| panic!("strata {name} --help: no Global options:\n{help}"));
        let (_, options) = before
            .split_once("\nOptions:\n")
            .unwrap_or_else(|| panic!("strata {name} --help: no Options:\n{help}"));
        let has = |text: &str, option: &str| {
            text.lines()
                .any(|l| l.trim_start().split([',', ' ', '.']).any(|w| w == option))
        };
        for option in &own {
            assert!(
                has(options, option),
                "strata {name} --help: {option} not under Options:\n{help}"
            );
            assert!(
                !has(after, option),
                "strata {name} --help: {option} under Global options:\n{help}"
            );
        }
        for option in global {
            assert!(
                has(after, option),
                "strata {name} --help: {option} not under Global options:\n{help}"
            );
            assert!(
                !has(options, option),
                "strata {name} --help: {option} under Options:\n{help}"
            );
        }
        // The man page: OPTIONS, then GLOBAL OPTIONS, and the synopsis in
        // that order.
        let page = man_page(&format!("strata-{name}"));
        let options = man_section(&page, "OPTIONS").unwrap();
        let globals = man_section(&page, "GLOBAL OPTIONS")
            .unwrap_or_else(|| panic!("strata-{name}: no GLOBAL OPTIONS in\n{page}"));
        assert!(page.find(".SH OPTIONS").unwrap() < page.find(".SH \"GLOBAL OPTIONS\"").unwrap());
        let synopsis = man_section(&page, "SYNOPSIS").unwrap();
        let escape = |o: &str| format!("\\fB{}\\fR", o.replace('-', "\\-"));
        let first_global = synopsis.find(&escape("--root")).unwrap();
        for option in &own {
            let option = escape(option);
            assert!(
                options.contains(&option),
                "strata-{name}: {option} not in OPTIONS"
            );
            assert!(
                !globals.contains(&option),
                "strata-{name}: {option} in GLOBAL OPTIONS"
            );
            let at = synopsis
                .find(&option)
                .unwrap_or_else(|| panic!("{option}: {synopsis}"));
            assert!(
                at < first_global,
                "strata-{name}: {option} after --root in\n{synopsis}"
            );
        }
        for option in global {
            let option = escape(option);
            assert!(
                globals.contains(&option),
                "strata-{name}: {option} not in GLOBAL OPTIONS"
            );
            assert!(
                !options.contains(&option),
                "strata-{name}: {option} in OPTIONS"
            );
        }
    }
}

/// An example that pipes printed mount commands into a shell makes their
/// target first: the printed `mount` line does not, and fails on a
/// missing one ("mount point does not exist", exit 32). `mounts --help`
/// showed `strata mounts build /mnt/build | sudo sh` (audit). The help of
/// the commands that print such lines says the target must exist.
#[test]
fn examples_piping_mounts_to_a_shell_make_the_target() {
    use clap::CommandFactory;
    let tmp = tempfile::tempdir().unwrap();
    let config = no_config(&tmp.path().join("store"));
    let cmd = strata::cmd::Cli::command();
    let names = std::iter::once(None).chain(cmd.get_subcommands().map(|s| Some(s.get_name())));
    let helps: Vec<(Option<&str>, String)> = names
        .map(|name| {
            let mut args: Vec<&str> = name.into_iter().collect();
            args.push("--help");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
                .args(&args)
                .env(CONFIG_VAR, &config)
                .output()
                .unwrap();
            (name, String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .collect();
    let mut piped = 0;
    for (name, help) in &helps {
        for line in help
            .lines()
            .filter(|l| l.contains("| sh") || l.contains("| sudo sh"))
        {
            piped += 1;
            let (before, _) = line.split_once("strata").unwrap();
            assert!(
                before.contains("mkdir -p "),
                "strata {name:?} --help: {line:?} does not make the target first"
            );
        }
    }
    for (name, help) in &helps {
        if let Some(name @ ("mounts" | "prepare" | "view")) = name {
            let description = help.split("\nUsage:").next().unwrap().replace('\n', " ");
            assert!(
                description.contains("must exist"),
                "strata {name} --help does not say the target must exist:\n{help}"
            );
        }
    }
    assert!(piped > 0, "no example pipes mounts into a shell");
}
