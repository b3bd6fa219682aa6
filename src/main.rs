//! The `strata` binary: parse, dispatch, report. All the work lives in the
//! library.
//!
//! `#![no_main]`: the process starts at [`main`] below, not in Rust's
//! runtime start, which costs a short command 3-7% here (see there).
#![no_main]

use clap::error::{ContextKind, ContextValue, ErrorKind as ClapKind};
use clap::{CommandFactory, FromArgMatches};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use strata::cmd::{self, Cli};
use strata::printer::{self, Format, Printer};
use strata::store::{Error, Kind, interrupt};

/// The process's exit status.
type Status = u8;

/// The process's entry, called by the C library with the arguments, which
/// it records for [`strata::argv`] (on musl, `std::env::args` is empty
/// without Rust's start).
///
/// It replaces Rust's runtime start, which reads `/proc/self/maps` to find
/// the main thread's stack and gives it a guard and an alternate signal
/// stack for a "stack overflow" message: 19 system calls, 0.03-0.05 ms of
/// a process that lives ~1 ms (docs/benchmarks.md). strata does not recurse
/// on input, so an overflow stays a crash either way. What of that start
/// strata needs is done here: SIGPIPE ignored (a closed pipe or socket is an
/// error to handle, not death), fds 0-2 open (so no file strata opens
/// lands on fd 1), a panic's status 101, and stdout flushed at the end.
#[unsafe(no_mangle)]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // SAFETY: C's `main` arguments, as C's start passes them.
    unsafe { strata::argv::record(argc, argv) };
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    open_standard_fds();
    keep_owner_permissions();
    let code = std::panic::catch_unwind(run).unwrap_or(101);
    let _ = std::io::stdout().flush();
    code.into()
}

/// Opens `/dev/null` on whichever of fds 0-2 is closed, as Rust's runtime
/// start does: otherwise the first file strata opens (an output file, a
/// layer) could become its stdout.
fn open_standard_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd for the call's length.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        // Cannot tell (EINTR, ENOMEM): ask each fd.
        for pfd in &mut fds {
            // SAFETY: F_GETFD on any integer is harmless.
            if unsafe { libc::fcntl(pfd.fd, libc::F_GETFD) } < 0 {
                pfd.revents = libc::POLLNVAL;
            }
        }
    }
    for pfd in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
        // SAFETY: a plain open; the lowest free fd is the closed one.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if fd != pfd.fd {
            // SAFETY: exiting at once, as the runtime start does.
            unsafe { libc::abort() };
        }
    }
}

/// Clears the owner's bits of the umask, keeping group and others' as the
/// user set them: under a umask of 0777 the store's index, its directories
/// and the snapshots' trees would be made mode 0000, and a store made by a
/// user other than root unusable to that user ever after (audit).
fn keep_owner_permissions() {
    // SAFETY: umask(2) cannot fail; it is read by setting it.
    let old = unsafe { libc::umask(0o077) };
    // SAFETY: as above.
    unsafe { libc::umask(old & 0o077) };
}

fn run() -> Status {
    // color-eyre turns a panic into a readable report, built when it
    // happens: colours only where the printer would use them.
    std::panic::set_hook(Box::new(|info| {
        use color_eyre::config::{HookBuilder, Theme};
        let theme = if printer::stderr_colors() {
            Theme::dark()
        } else {
            Theme::new()
        };
        let (panic, _) = HookBuilder::default().theme(theme).into_hooks();
        eprintln!("{}", panic.panic_report(info));
    }));
    // `COMPLETE=bash strata …` answers the shell's completion requests.
    let here = std::env::current_dir().ok();
    match clap_complete::CompleteEnv::with_factory(cmd::completions::tree)
        .try_complete(strata::argv::args_os(), here.as_deref())
    {
        Ok(true) => return 0,
        Ok(false) => {}
        Err(e) => e.exit(),
    }
    let matches = match cmd::parse_lazily() {
        Ok(m) => m,
        Err(e) if e.kind() == ClapKind::DisplayVersion => return usage_error(e),
        // Help and usage errors come from the complete tree.
        Err(_) => match Cli::command().try_get_matches_from(cmd::command_line()) {
            Ok(m) => m,
            Err(e) => return usage_error(e),
        },
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // `--json` is short for `-o json` (SPEC): the last one given wins.
    // clap's `overrides_with` settles it among one command's options; given
    // on both sides of the subcommand's name (`strata --json ls -o table`),
    // both reach here, where the line decides.
    if cli.global.json && cli.global.output.is_some() {
        if output_and_config_on_line().0.as_deref() == Some(b"json") {
            cli.global.output = None;
        } else {
            cli.global.json = false;
        }
    }
    let mut ctx = match cmd::context(&cli) {
        Ok(ctx) => ctx,
        Err(e) => {
            let g = &cli.global;
            let format = g.output_asked().unwrap_or_default();
            Printer::new(format, g.quiet, g.verbose).error(&e);
            return e.kind().exit_code();
        }
    };
    let result = cmd::run(cli.command, &mut ctx);
    // Stopped by Ctrl-C or SIGTERM: what the command made is deleted by now,
    // and it ends by that signal, without an error of its own (the error is
    // that of the step it stopped, or one that followed). A command that
    // finished all the same ends by it too, after its output, so that a
    // shell loop running it stops as the user asked.
    if let Some(signal) = interrupt::caught() {
        ctx.close();
        interrupt::die_of(signal);
    }
    let code = match result {
        Ok(()) => 0,
        // `strata ls | head -1`: the reader is gone, nothing is wrong.
        Err(e) if cmd::is_broken_pipe(&e) => 0,
        Err(e) => {
            ctx.printer.error(&e);
            e.kind().exit_code()
        }
    };
    ctx.close();
    code
}

/// A bad command line: clap's message on one line with hints (clap's own
/// tips, the usage line, where the help is), in the table form as every
/// error is, or with JSON output asked for, one JSON error object. Help
/// and version exit 0; help asked for by giving no arguments at all (bare
/// `strata`) is printed to stderr, exit 2.
fn usage_error(e: clap::Error) -> Status {
    if matches!(
        e.kind(),
        ClapKind::DisplayHelp
            | ClapKind::DisplayVersion
            | ClapKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Help and version on stdout that cannot be written (`--help >
        // /dev/full`) fail as every command's output does (audit: exit 0);
        // a reader gone (`--help | head -1`) is not a failure.
        if let Err(err) = e.print().and_then(|()| std::io::stdout().flush())
            && err.kind() != std::io::ErrorKind::BrokenPipe
        {
            let error = Error::io("cannot write to standard output", err);
            Printer::new(Format::Table, true, 0).error(&error);
            return error.kind().exit_code();
        }
        return if e.kind() == ClapKind::DisplayHelpOnMissingArgumentOrSubcommand {
            2
        } else {
            0
        };
    }
    let kind = if is_bad_value(&e) {
        Kind::Invalid
    } else {
        Kind::Usage
    };
    let error = Error::new(kind, one_line(&e));
    let error = if kind == Kind::Invalid {
        // One line naming the value and the values taken; a near miss
        // gets a hint.
        match near_value(&e) {
            Some(near) => error.with_hint(format!("did you mean `{near}`?")),
            None => error,
        }
    } else {
        usage_hints(&e).into_iter().fold(error, Error::with_hint)
    };
    let format = if wants_json() {
        Format::Json
    } else {
        Format::Table
    };
    Printer::new(format, true, 0).error(&error);
    kind.exit_code()
}

/// What clap prints below its message, as hints: its tips ("a similar
/// argument exists: '--filter'", "to pass '-x' as a value, use '-- -x'"),
/// the usage line of the command the line names, and which `--help` to
/// read, in place of clap's blank lines, `Usage:` and "For more
/// information, try '--help'." (audit: the SPEC's "one clear line").
fn usage_hints(e: &clap::Error) -> Vec<String> {
    let text = e.render().to_string();
    let mut hints: Vec<String> = (text.lines())
        .filter_map(|line| line.trim().strip_prefix("tip: "))
        .map(String::from)
        .collect();
    let name = cmd::subcommand_on_line();
    hints.push(format!("usage: {}", cmd::plain_usage(name.as_deref())));
    let command = match name {
        Some(name) => format!("strata {name}"),
        None => "strata".to_string(),
    };
    hints.push(format!("see `{command} --help`"));
    hints
}

/// The value taken that a refused one was likely meant as: one differing
/// only in case (`-o JSON`: `json`, `--kind Active`: `active`), else
/// clap's suggestion (`-o xml`: `yaml`). Values are matched by case, as
/// the config file's are, so `JSON` stays refused (`invalid`); clap's
/// suggestion compares by case too and had none for it (audit).
fn near_value(e: &clap::Error) -> Option<String> {
    let Some(ContextValue::String(given)) = e.get(ContextKind::InvalidValue) else {
        return None;
    };
    let taken = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(taken)) => taken.as_slice(),
        _ => &[],
    };
    match taken.iter().find(|v| v.eq_ignore_ascii_case(given)) {
        Some(same) => Some(same.clone()),
        None => match e.get(ContextKind::SuggestedValue) {
            Some(ContextValue::String(near)) => Some(near.clone()),
            _ => None,
        },
    }
}

/// Whether clap refused a value given on the line, rather than the line
/// itself: a bad value is `invalid` (SPEC: "a bad value"), as a bad filter
/// or label is, so `ls --kind bogus`, `-o xml` and `apply --max-size
/// bogus` are, like `ls --filter kind==bogus`. A key or label must be
/// UTF-8 (SPEC), so an argument that is not is one too. An unknown flag, a
/// missing argument or value (clap reports a missing value as an empty
/// one), an unexpected argument stay `usage`.
fn is_bad_value(e: &clap::Error) -> bool {
    match e.kind() {
        ClapKind::InvalidUtf8 => true,
        ClapKind::InvalidValue | ClapKind::ValueValidation => matches!(
            e.get(ContextKind::InvalidValue),
            Some(ContextValue::String(value)) if !value.is_empty()
        ),
        _ => false,
    }
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

/// Whether the raw arguments ask for JSON output, or leave the format to a
/// config file that does.
fn wants_json() -> bool {
    let (output, config) = output_and_config_on_line();
    match output {
        Some(format) => format == b"json",
        None => strata::config::load(config.as_deref().map(|c| Path::new(OsStr::from_bytes(c))))
            .is_ok_and(|(_, file)| file.output == Some(Format::Json)),
    }
}

/// The output format and the config file the raw arguments name, read as
/// clap reads them: `--json`, `--output json`, `--output=json`, `-o json`,
/// `-ojson`, `-o=json`, and `-o` last in a cluster of `-q` and `-v` (`-qo
/// json`, `-vqojson`), passing over the value of a `--label`. The last one
/// given counts: `--json` is short for `-o json` (SPEC), so the last of
/// them on the line wins.
fn output_and_config_on_line() -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let args: Vec<OsString> = (strata::argv::args_os().into_iter())
        .skip(1)
        .take_while(|a| a != "--")
        .collect();
    let (mut output, mut config) = (None, None);
    let mut rest = args.iter().map(|a| a.as_bytes());
    while let Some(arg) = rest.next() {
        let long = |name: &str, rest: &mut dyn Iterator<Item = &[u8]>| {
            let tail = arg.strip_prefix(name.as_bytes())?;
            match tail {
                [] => rest.next().map(<[u8]>::to_vec),
                [b'=', value @ ..] => Some(value.to_vec()),
                _ => None,
            }
        };
        if arg == b"--label" {
            // Its value, which may start with `-` (`--label -o=yaml` is a
            // label, not a format: review).
            rest.next();
        } else if arg == b"--json" {
            output = Some(b"json".to_vec());
        } else if let Some(v) = long("--output", &mut rest) {
            output = Some(v);
        } else if let Some(v) = long("--config", &mut rest) {
            config.get_or_insert(v);
        } else if let Some(cmd::ShortFlags::Output(value)) = cmd::short_flags(arg) {
            let value = value
                .map(<[u8]>::to_vec)
                .or_else(|| rest.next().map(<[u8]>::to_vec));
            output = value.or(output);
        }
    }
    (output, config)
}
