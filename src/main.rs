//! The `strata` binary: parse, dispatch, report. All the work lives in the
//! library.

use clap::error::ErrorKind as ClapKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;
use strata::cmd::{self, Cli};
use strata::config::Source;
use strata::printer::{Format, Printer};
use strata::store::{Error, Kind};

fn main() -> ExitCode {
    // color-eyre's hooks turn a panic into a readable report.
    let _ = color_eyre::install();
    // `COMPLETE=bash strata …` answers the shell's completion requests.
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let matches = match cmd::parse_lazily() {
        Ok(m) => m,
        Err(e) if e.kind() == ClapKind::DisplayVersion => return usage_error(e),
        // Help and usage errors come from the complete tree.
        Err(_) => match Cli::command().try_get_matches() {
            Ok(m) => m,
            Err(e) => return usage_error(e),
        },
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let root_source = match matches.value_source("root") {
        Some(ValueSource::EnvVariable) => Source::Environment,
        _ => Source::Flag,
    };
    let mut ctx = match cmd::context(&cli, root_source) {
        Ok(ctx) => ctx,
        Err(e) => {
            let g = &cli.global;
            let format = if g.json {
                Format::Json
            } else {
                g.output.unwrap_or_default()
            };
            Printer::new(format, g.quiet, g.verbose).error(&e);
            return ExitCode::from(e.kind().exit_code());
        }
    };
    let code = match cmd::run(cli.command, &mut ctx) {
        Ok(()) => ExitCode::SUCCESS,
        // `strata ls | head -1`: the reader is gone, nothing is wrong.
        Err(e) if cmd::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            ctx.printer.error(&e);
            ExitCode::from(e.kind().exit_code())
        }
    };
    ctx.close();
    code
}

/// A bad command line: clap's own message (exit 2), or with JSON output
/// asked for, one JSON error object. Help and version exit 0.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ClapKind::DisplayHelp
            | ClapKind::DisplayVersion
            | ClapKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(
            if e.kind() == ClapKind::DisplayHelpOnMissingArgumentOrSubcommand {
                2
            } else {
                0
            },
        );
    }
    if wants_json() {
        Printer::new(Format::Json, true, 0).error(&Error::new(Kind::Usage, one_line(&e)));
    } else {
        let _ = e.print();
    }
    ExitCode::from(Kind::Usage.exit_code())
}

/// clap's message on one line, without its `error: ` prefix and its usage
/// and help lines: "the following required arguments were not provided:
/// <KEY>" keeps the names clap lists on the lines below the first.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    message.join(" ").trim_start_matches("error: ").to_string()
}

/// Whether the raw arguments ask for JSON output.
fn wants_json() -> bool {
    let args: Vec<String> = std::env::args().skip(1).take_while(|a| a != "--").collect();
    args.iter().enumerate().any(|(i, a)| {
        a == "--json"
            || a == "--output=json"
            || a == "-ojson"
            || ((a == "-o" || a == "--output") && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}
