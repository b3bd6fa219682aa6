//! The one place that decides where output goes and how it looks: data to
//! stdout as a table, JSON or YAML (all from the same serde structs), notes
//! and errors to stderr, progress bars only on a terminal.

use crate::store::{Error, Kind};
use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

mod yaml;

/// Output format for commands that print data.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Yaml => "yaml",
        }
    }
}

/// `text` as a terminal should show it: control characters (a newline, an
/// escape sequence) written as escapes, so a label value or a path cannot
/// break a table or drive the terminal. Keys cannot hold them.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A table is fitted to a terminal at least this wide per column.
const MIN_COLUMN_WIDTH: usize = 8;

/// Whether stderr takes colours: a terminal, and no `NO_COLOR`.
pub fn stderr_colors() -> bool {
    io::stderr().is_terminal() && !no_color()
}

/// `NO_COLOR` set, whatever its value: the SPEC's rule ("never with
/// `NO_COLOR` set"), so `NO_COLOR=` turns colours off too (no-color.org
/// would ignore an empty value).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some()
}

/// What a progress bar counts.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Bytes, shown as KiB, MiB…
    Bytes,
    /// Things (snapshots), shown as a number.
    Items,
    /// Nothing: a spinner and the time.
    Nothing,
}

#[derive(Debug, Clone)]
pub struct Printer {
    format: Format,
    quiet: bool,
    verbose: u8,
    stdout_tty: bool,
    stderr_tty: bool,
    color: bool,
}

impl Printer {
    pub fn new(format: Format, quiet: bool, verbose: u8) -> Printer {
        let stderr_tty = io::stderr().is_terminal();
        Printer {
            format,
            quiet,
            verbose,
            stdout_tty: io::stdout().is_terminal(),
            stderr_tty,
            color: stderr_tty && !no_color(),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }
    pub fn verbose(&self) -> u8 {
        self.verbose
    }

    /// Prints data: `table` renders it for people; JSON and YAML come from
    /// its serde form. JSON is written as it is encoded.
    pub fn data<T: Serialize + ?Sized>(
        &self,
        value: &T,
        table: impl FnOnce(&T) -> String,
    ) -> Result<(), Error> {
        match self.format {
            Format::Json => self.write_out(|out| json_to(out, value)),
            Format::Yaml | Format::Table => {
                let text = self.render(value, table, serde_json::to_string_pretty)?;
                self.stdout(&text)
            }
        }
    }

    /// For a command whose table form is only a sentence for people
    /// (`init`): `value` as data in JSON and YAML, for scripts; in table
    /// form, `note` as a note (stderr, silent with `--quiet`).
    pub fn data_or_note<T: Serialize + ?Sized>(&self, value: &T, note: &str) -> Result<(), Error> {
        match self.format {
            Format::Table => {
                self.note(note);
                Ok(())
            }
            Format::Json | Format::Yaml => self.data(value, |_| String::new()),
        }
    }

    /// Prints a list, as [`Printer::data`] would print the slice, but YAML
    /// an element at a time: serde's tree of a whole list of 100,000
    /// snapshots took 426 MB (audit), one element's takes a few KiB.
    pub fn list<T: Serialize>(
        &self,
        items: &[T],
        table: impl FnOnce(&[T]) -> String,
    ) -> Result<(), Error> {
        if self.format != Format::Yaml || items.is_empty() {
            return self.data(items, table);
        }
        self.write_out(|out| {
            for item in items {
                // A one-element sequence is the `- …` lines of that element.
                let one = serde_yaml::to_value(item)
                    .map(|v| yaml::to_string(&serde_yaml::Value::Sequence(vec![v])))
                    .map_err(|e| Error::internal("cannot encode YAML").with_source(e))?;
                out.write_all(one.as_bytes()).map_err(stdout_error)?;
            }
            Ok(())
        })
    }

    /// Prints a forest of nodes given in pre-order, each with its depth (a
    /// root's is 0, a child's one more than its parent's, see [`Nested`]):
    /// in JSON and YAML a list of the nodes' serde forms, each with its
    /// `children` list after its own fields, as nested structs with a
    /// `children: Vec<Node>` would be written; `table` draws it for people.
    /// Written without recursion, so any depth takes bounded stack (a chain
    /// of 12,000 layers overflowed it in serde's YAML tree, of 30,000 to
    /// 69,000 in serde_json: audit), and in memory a node at a time.
    pub fn forest<T: Nested>(
        &self,
        nodes: &[T],
        table: impl FnOnce(&[T]) -> String,
    ) -> Result<(), Error> {
        match self.format {
            Format::Table => self.stdout(&table(nodes)),
            Format::Json => self.write_out(|out| forest_json(out, nodes)),
            Format::Yaml => self.write_out(|out| {
                let mut writer = yaml::Forest::default();
                let mut text = String::new();
                for (at, node) in nodes.iter().enumerate() {
                    let fields = serde_yaml::to_value(node)
                        .map_err(|e| Error::internal("cannot encode YAML").with_source(e))?;
                    let parent = nodes.get(at + 1).is_some_and(|n| n.depth() > node.depth());
                    writer.node(&mut text, node.depth(), &fields, parent);
                    if text.len() >= 1 << 16 {
                        out.write_all(text.as_bytes()).map_err(stdout_error)?;
                        text.clear();
                    }
                }
                writer.end(&mut text);
                out.write_all(text.as_bytes()).map_err(stdout_error)
            }),
        }
    }

    /// Runs `write` on a buffered stdout, then flushes it.
    fn write_out(
        &self,
        write: impl FnOnce(&mut dyn Write) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
        write(&mut out)?;
        out.flush().map_err(stdout_error)
    }

    /// Prints data on stderr, for a command whose stdout carries something
    /// else (a layer tarball): the same forms as [`Printer::data`], with
    /// JSON on one line as errors are. Data, so shown even with `--quiet`.
    pub fn data_on_stderr<T: Serialize + ?Sized>(
        &self,
        value: &T,
        table: impl FnOnce(&T) -> String,
    ) -> Result<(), Error> {
        let text = self.render(value, table, serde_json::to_string)?;
        let mut err = io::stderr().lock();
        err.write_all(text.as_bytes())
            .and_then(|()| err.flush())
            .map_err(|e| Error::io("cannot write to standard error", e))
    }

    fn render<T: Serialize + ?Sized>(
        &self,
        value: &T,
        table: impl FnOnce(&T) -> String,
        json: fn(&T) -> serde_json::Result<String>,
    ) -> Result<String, Error> {
        Ok(match self.format {
            Format::Table => table(value),
            Format::Json => {
                let mut s = json(value)
                    .map_err(|e| Error::internal("cannot encode JSON").with_source(e))?;
                s.push('\n');
                s
            }
            Format::Yaml => serde_yaml::to_value(value)
                .map(|v| yaml::to_string(&v))
                .map_err(|e| Error::internal("cannot encode YAML").with_source(e))?,
        })
    }

    /// Writes raw text to stdout (a closed pipe surfaces as BrokenPipe,
    /// which the binary turns into a quiet exit).
    pub fn stdout(&self, text: &str) -> Result<(), Error> {
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(stdout_error)
    }

    /// A note for people on stderr; silent with `--quiet`, and with JSON
    /// output, where stderr carries only JSON error objects (a script reads
    /// it line by line: `rm a b c` may report an error after a note).
    pub fn note(&self, text: &str) {
        if !self.quiet && self.format != Format::Json {
            eprintln!("{text}");
        }
    }

    /// Asks `question` on the controlling terminal (`/dev/tty`, so stdin
    /// and stdout may carry other things, as `login`'s stdin carries the
    /// password) and returns the line typed, without its line end. None
    /// when the process has no terminal to ask on. Shown even with
    /// `--quiet`: the answer is needed.
    pub fn ask(&self, question: &str) -> Result<Option<String>, Error> {
        use std::io::BufRead;
        let tty = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
        {
            Ok(tty) => tty,
            // ENXIO: no controlling terminal; ENOENT: no /dev/tty at all.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENXIO))
                    || e.kind() == io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(Error::io("cannot open the terminal /dev/tty", e)),
        };
        let terminal_error = |e| Error::io("cannot ask on the terminal", e);
        (&tty)
            .write_all(question.as_bytes())
            .and_then(|()| (&tty).flush())
            .map_err(terminal_error)?;
        let mut line = String::new();
        io::BufReader::new(&tty)
            .read_line(&mut line)
            .map_err(terminal_error)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        Ok(Some(line.strip_suffix('\r').unwrap_or(line).to_string()))
    }

    /// A warning on stderr (shown even with `--quiet`).
    pub fn warn(&self, text: &str) {
        eprintln!("{} {text}", self.paint("warning:", "33;1"));
    }

    /// Reports an error: `error:` line, `caused by:` lines with `-v`, then
    /// `hint:` lines; with JSON output, one JSON object instead. An internal
    /// error's line ends with its root cause (`cannot create X: Permission
    /// denied`) unless `-v` shows the chain: the SPEC's one clear line, which
    /// a bare "cannot create X" would not be.
    pub fn error(&self, err: &Error) {
        if err.is_reported() {
            return;
        }
        let mut stderr = io::stderr().lock();
        if self.format == Format::Json {
            let obj = serde_json::json!({
                "error": {
                    "kind": err.kind().as_str(),
                    "message": err.message(),
                    "hints": err.hints(),
                    "causes": causes(err),
                }
            });
            let _ = writeln!(stderr, "{obj}");
            return;
        }
        // Escaped: a message may quote what a registry, a layout or a file
        // name said, and a newline or an escape code in it must not make
        // more lines or reach the terminal as a command.
        let causes = causes(err);
        let root = causes
            .last()
            .filter(|_| self.verbose == 0 && err.kind() == Kind::Internal);
        let _ = writeln!(
            stderr,
            "{} {}{}",
            self.paint("error:", "31;1"),
            shown(err.message()),
            root.map(|c| format!(": {}", shown(c))).unwrap_or_default()
        );
        if self.verbose > 0 {
            for cause in causes {
                let _ = writeln!(
                    stderr,
                    "{} {}",
                    self.paint("caused by:", "2"),
                    shown(&cause)
                );
            }
        }
        for hint in err.hints() {
            let _ = writeln!(stderr, "{} {}", self.paint("hint:", "36;1"), shown(hint));
        }
    }

    fn paint(&self, text: &str, sgr: &str) -> String {
        if self.color {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A table with `header`: boxed when stdout is a terminal and fitted to
    /// its width, plain aligned columns when piped.
    pub fn table<S: AsRef<str>>(&self, header: &[&str], rows: Vec<Vec<S>>) -> String {
        if !self.stdout_tty {
            return plain_table(header, &rows);
        }
        let mut table = Table::new();
        table.load_style(presets::NOTHING);
        // Narrower than that (0 for a pty given no size), fitting would
        // squeeze each column to a character or two: the terminal wraps
        // the lines instead.
        let narrowest = MIN_COLUMN_WIDTH * header.len();
        let fits = table.width().is_some_and(|w| usize::from(w) >= narrowest);
        table.set_content_arrangement(if fits {
            ContentArrangement::Dynamic
        } else {
            ContentArrangement::Disabled
        });
        table.set_header(header.to_vec());
        for row in rows {
            table.add_row(row.iter().map(AsRef::as_ref).collect::<Vec<&str>>());
        }
        for (i, column) in table.column_iter_mut().enumerate() {
            column.set_padding((0, if i + 1 == header.len() { 0 } else { 3 }));
        }
        let mut out = String::new();
        for line in table.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// A progress bar on stderr for work that may take a while, counting
    /// `unit`s up to `total` when known; it stays hidden unless stderr is a
    /// terminal, not `--quiet`, and the work lasts over half a second.
    pub fn progress(&self, message: &str, unit: Unit, total: Option<u64>) -> ProgressBar {
        if self.quiet || !self.stderr_tty {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template(match (unit, total) {
            (Unit::Bytes, Some(_)) => "{msg} [{bar:30}] {bytes}/{total_bytes} ({elapsed})",
            (Unit::Bytes, None) => "{spinner} {msg} {bytes} ({elapsed})",
            (Unit::Items, Some(_)) => "{msg} [{bar:30}] {pos}/{len} ({elapsed})",
            (Unit::Items, None) => "{spinner} {msg} {pos} ({elapsed})",
            (Unit::Nothing, _) => "{spinner} {msg} ({elapsed})",
        });
        if let Ok(style) = style {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.to_string());
        let shown = bar.clone();
        // Drawn only once the work has lasted half a second (tests shorten
        // the wait to see a bar without slow work).
        let delay = std::env::var("STRATA_PROGRESS_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            if !shown.is_finished() {
                shown.set_draw_target(ProgressDrawTarget::stderr());
                shown.enable_steady_tick(Duration::from_millis(120));
            }
        });
        bar
    }
}

impl Printer {
    /// Runs `work` under a spinner (shown per the rules of [`progress`]).
    pub fn spin<T>(&self, message: &str, work: impl FnOnce() -> T) -> T {
        let bar = self.progress(message, Unit::Nothing, None);
        let out = work();
        bar.finish_and_clear();
        out
    }
}

/// Aligned columns for pipes and files: no wrapping (a line per row, as
/// scripts expect) and no table machinery, so 10,000 rows stay cheap.
fn plain_table<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| text_width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(text_width(cell.as_ref()));
        }
    }
    let mut out = String::with_capacity((rows.len() + 1) * (widths.iter().sum::<usize>() + 16));
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let start = out.len();
        for (i, cell) in cells.enumerate() {
            out.push_str(cell);
            if i + 1 < widths.len() {
                pad(&mut out, widths[i] - text_width(cell) + 3);
            }
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(AsRef::as_ref));
    }
    out
}

/// The characters in `text` (its bytes when they are all ASCII, which is
/// checked a word at a time).
fn text_width(text: &str) -> usize {
    if text.is_ascii() {
        text.len()
    } else {
        text.chars().count()
    }
}

/// Appends `n` spaces, a slice at a time (a table of 10,000 rows pads
/// 50,000 cells; pushing them a `char` at a time was a tenth of `ls`).
fn pad(out: &mut String, mut n: usize) {
    const SPACES: &str = "                                                                ";
    while n > 0 {
        let k = n.min(SPACES.len());
        out.push_str(&SPACES[..k]);
        n -= k;
    }
}

/// The most characters of one cause that are printed: a cause may carry
/// text from outside (a registry's answer, a file's contents) of any
/// length, and an error is a line, not a dump.
const MAX_CAUSE: usize = 1000;

/// The causes of `err`, outermost first, each cut to [`MAX_CAUSE`]
/// characters.
fn stdout_error(e: io::Error) -> Error {
    Error::io("cannot write to standard output", e)
}

/// Writes `value` as indented JSON and a newline. An I/O failure (a closed
/// pipe) keeps its own error, not "cannot encode".
fn json_to<T: Serialize + ?Sized>(out: &mut dyn Write, value: &T) -> Result<(), Error> {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, Indent::default());
    value
        .serialize(&mut ser)
        .map_err(|e| match e.io_error_kind() {
            Some(kind) => stdout_error(kind.into()),
            None => Error::internal("cannot encode JSON").with_source(e),
        })?;
    out.write_all(b"\n").map_err(stdout_error)
}

/// A node of a forest printed by [`Printer::forest`]: its serde form holds
/// its own fields (a struct: a mapping), not its children.
pub trait Nested: Serialize {
    /// How deep it is: 0 for a root, its parent's depth plus one.
    fn depth(&self) -> usize;
}

/// Writes `nodes` (a forest in pre-order, see [`Printer::forest`]) as the
/// JSON of nested nodes each ending in `"children": [...]`, with the
/// formatter serde_json would use ([`Indent`]), so the text is the same to
/// the byte; the open nodes are a count, not a recursion.
fn forest_json<T: Nested>(out: &mut dyn Write, nodes: &[T]) -> Result<(), Error> {
    use serde_json::ser::Formatter;
    let encode = |e: serde_json::Error| match e.io_error_kind() {
        Some(kind) => stdout_error(kind.into()),
        None => Error::internal("cannot encode JSON").with_source(e),
    };
    let mut f = Indent::default();
    // Closes the innermost open node: its children, itself, its place in
    // the list holding it.
    let close = |f: &mut Indent, out: &mut dyn Write| -> io::Result<()> {
        f.end_array(out)?;
        f.end_object_value(out)?;
        f.end_object(out)?;
        f.end_array_value(out)
    };
    // Open nodes (whose children are being written); whether the list
    // being written has no element yet.
    let mut open = 0;
    let mut first = true;
    f.begin_array(out).map_err(stdout_error)?;
    for node in nodes {
        let depth = node.depth();
        debug_assert!(depth <= open, "a node deeper than under its parent");
        while open > depth {
            close(&mut f, out).map_err(stdout_error)?;
            open -= 1;
            first = false;
        }
        f.begin_array_value(out, first).map_err(stdout_error)?;
        // Its own fields, the object left open for `children`.
        let mut fields = Open {
            indent: &mut f,
            level: 0,
            keys: 0,
        };
        node.serialize(&mut serde_json::Serializer::with_formatter(
            &mut *out,
            &mut fields,
        ))
        .map_err(encode)?;
        let keys = fields.keys;
        f.begin_object_key(out, keys == 0)
            .and_then(|()| out.write_all(b"\"children\""))
            .and_then(|()| f.end_object_key(out))
            .and_then(|()| f.begin_object_value(out))
            .and_then(|()| f.begin_array(out))
            .map_err(stdout_error)?;
        open += 1;
        first = true;
    }
    while open > 0 {
        close(&mut f, out).map_err(stdout_error)?;
        open -= 1;
    }
    f.end_array(out).map_err(stdout_error)?;
    out.write_all(b"\n").map_err(stdout_error)
}

/// [`Indent`] for a node's own fields ([`forest_json`]): the node's
/// object is left open (its closing brace is not written) and its keys
/// counted.
struct Open<'a> {
    indent: &'a mut Indent,
    /// How many objects and arrays are open, the node's own included.
    level: usize,
    /// Keys of the node's own object.
    keys: usize,
}

impl serde_json::ser::Formatter for &mut Open<'_> {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.level += 1;
        self.indent.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.level -= 1;
        self.indent.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.indent.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.indent.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.level += 1;
        self.indent.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.level -= 1;
        if self.level == 0 {
            // The node's own: `children` comes first.
            return Ok(());
        }
        self.indent.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if self.level == 1 {
            self.keys += 1;
        }
        self.indent.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.indent.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.indent.end_object_value(w)
    }
}

/// How many levels of nesting JSON output indents; deeper ones are not
/// indented further. Each level of `tree` is two (a node, its children), and
/// indenting a chain of 500 layers all the way made its JSON grow with the
/// square of the depth (audit: 304 MB for 100 such chains, where this
/// writes a few MB). The JSON is the same to any reader.
const MAX_INDENT: usize = 32;

/// serde_json's pretty form (two spaces a level), indented at most
/// [`MAX_INDENT`] levels.
#[derive(Default)]
struct Indent {
    depth: usize,
    has_value: bool,
}

impl Indent {
    fn newline<W: ?Sized + Write>(&self, w: &mut W) -> io::Result<()> {
        const SPACES: [u8; 2 * MAX_INDENT] = [b' '; 2 * MAX_INDENT];
        w.write_all(b"\n")?;
        w.write_all(&SPACES[..2 * self.depth.min(MAX_INDENT)])
    }

    fn open<W: ?Sized + Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }

    fn item<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        self.newline(w)
    }
}

impl serde_json::ser::Formatter for Indent {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

fn causes(err: &Error) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = std::error::Error::source(err);
    while let Some(c) = cur {
        out.push(clip_cause(c.to_string()));
        cur = c.source();
    }
    out
}

/// `text` cut to [`MAX_CAUSE`] characters (on a character boundary), with
/// "…" where it was cut.
fn clip_cause(mut text: String) -> String {
    if let Some((end, _)) = text.char_indices().nth(MAX_CAUSE) {
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Human-readable size: bytes below 1 KiB, then KiB, MiB, GiB…
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && u128::from(bytes) >= 1u128 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    // Tenths, rounded half to even as `{:.1}` rounds an f64, in integers:
    // float formatting's exact mode is slow, and `ls` prints thousands.
    let den = 1u128 << (10 * unit);
    let num = u128::from(bytes) * 10;
    let (mut tenths, rest) = (num / den, num % den);
    if 2 * rest > den || (2 * rest == den && tenths % 2 == 1) {
        tenths += 1;
    }
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

pub use crate::store::key::shell_quote;

#[cfg(test)]
mod tests {
    use super::*;

    fn indented<T: Serialize>(value: &T) -> String {
        let mut out = Vec::new();
        json_to(&mut out, value).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// A list's YAML written an element at a time is the list's YAML.
    #[test]
    fn yaml_of_a_list_is_its_elements_in_turn() {
        let items = serde_json::json!([
            {"name": "a", "labels": {"k": "v", "no": "on"}, "usage": null, "mounted_at": []},
            {"name": "b", "labels": {}, "usage": {"size": 1, "inodes": 2}, "mounted_at": ["/x"]},
            "plain", [1, [2]], {}
        ]);
        let items = items.as_array().unwrap();
        let whole = yaml::to_string(&serde_yaml::to_value(items).unwrap());
        let each: String = items
            .iter()
            .map(|i| {
                yaml::to_string(&serde_yaml::Value::Sequence(vec![
                    serde_yaml::to_value(i).unwrap(),
                ]))
            })
            .collect();
        assert_eq!(each, whole);
    }

    /// Up to [`MAX_INDENT`] levels, the JSON is serde_json's pretty form to
    /// the byte; deeper, it stops indenting and still reads back the same.
    #[test]
    fn json_indents_as_serde_json_up_to_a_depth() {
        let shallow = serde_json::json!({
            "a": [1, {"b": [], "c": {}}, [[]]], "d": "x", "e": null, "f": [{"g": true}]
        });
        assert_eq!(
            indented(&shallow),
            serde_json::to_string_pretty(&shallow).unwrap() + "\n"
        );
        let mut deep = serde_json::json!({"leaf": 1});
        for i in 0..500 {
            deep = serde_json::json!({"name": i, "children": [deep]});
        }
        let text = indented(&deep);
        // Deeper than serde_json reads back (128 levels): the same text as
        // the compact form, but for whitespace (no string here holds any).
        let bare: String = text.split_whitespace().collect();
        assert_eq!(bare, serde_json::to_string(&deep).unwrap());
        let widest = text.lines().map(|l| l.len() - l.trim_start().len()).max();
        assert_eq!(widest, Some(2 * MAX_INDENT));
        let full = serde_json::to_string_pretty(&deep).unwrap().len();
        assert!(
            text.len() * 10 < full,
            "{} bytes, {full} indented",
            text.len()
        );
    }

    /// A node of a test forest: its fields, and its depth.
    #[derive(Serialize)]
    struct Leaf {
        #[serde(skip)]
        depth: usize,
        name: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        mounted_at: Vec<String>,
    }

    impl Nested for Leaf {
        fn depth(&self) -> usize {
            self.depth
        }
    }

    /// A forest in pre-order, and the nested values it stands for: a chain
    /// `depth` deep with a leaf beside every third node, some mounted.
    fn test_forest(depth: usize) -> (Vec<Leaf>, Vec<Full>) {
        let mut nodes = Vec::new();
        let leaf = |d: usize, name: String, mounted: bool| Leaf {
            depth: d,
            name,
            mounted_at: if mounted {
                vec!["/mnt/a,b".into(), "/x:y".into()]
            } else {
                vec![]
            },
        };
        for d in 0..depth {
            nodes.push(leaf(d, format!("c{d}"), d % 5 == 1));
        }
        for d in (0..depth).rev().filter(|d| d % 3 == 0) {
            // Beside `c{d}`, after its subtree: inserted after its last node.
            let at = nodes.iter().rposition(|n| n.depth >= d).unwrap() + 1;
            nodes.insert(at, leaf(d, format!("s{d}, no"), d % 2 == 0));
        }
        // The nested form, built from the deepest up.
        let mut below: Vec<(usize, Full)> = Vec::new();
        for node in nodes.iter().rev() {
            let mut children = Vec::new();
            while below.last().is_some_and(|(d, _)| *d == node.depth + 1) {
                children.push(below.pop().unwrap().1);
            }
            let full = Full {
                name: node.name.clone(),
                mounted_at: node.mounted_at.clone(),
                children,
            };
            below.push((node.depth, full));
        }
        let roots = below.into_iter().rev().map(|(_, v)| v).collect();
        (nodes, roots)
    }

    /// A nested node, as a struct with its children would be.
    #[derive(Serialize)]
    struct Full {
        name: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        mounted_at: Vec<String>,
        children: Vec<Full>,
    }

    /// The forest's JSON and YAML are those of the nested values: the same
    /// bytes in JSON (and in YAML above [`yaml::FLOW_DEPTH`]); deeper, YAML
    /// readers read the same values.
    #[test]
    fn forests_print_as_nested_values() {
        for depth in [0, 1, 2, 7, 20, yaml::FLOW_DEPTH + 10] {
            let (nodes, nested) = test_forest(depth);
            let mut json = Vec::new();
            forest_json(&mut json, &nodes).unwrap();
            assert_eq!(
                String::from_utf8(json).unwrap(),
                indented(&nested),
                "{depth}"
            );
            let mut text = String::new();
            let mut writer = yaml::Forest::default();
            for (at, node) in nodes.iter().enumerate() {
                let parent = nodes.get(at + 1).is_some_and(|n| n.depth > node.depth);
                writer.node(
                    &mut text,
                    node.depth,
                    &serde_yaml::to_value(node).unwrap(),
                    parent,
                );
            }
            writer.end(&mut text);
            if depth < yaml::FLOW_DEPTH {
                let whole = yaml::to_string(&serde_yaml::to_value(&nested).unwrap());
                assert_eq!(text, whole, "{depth}");
            } else {
                let widest = text.lines().map(|l| l.len() - l.trim_start().len()).max();
                assert_eq!(widest, Some(2 * yaml::FLOW_DEPTH + 2), "{text}");
                let read: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
                assert_eq!(read, serde_yaml::to_value(&nested).unwrap(), "{text}");
            }
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_size(1280), "1.2 KiB", "a tie rounds to even");
        assert_eq!(human_size(1024 * 1024 - 1), "1024.0 KiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }

    /// The integer rounding gives what `{:.1}` of the f64 quotient gives.
    #[test]
    fn sizes_match_float_formatting() {
        let float = |bytes: u64| {
            let mut value = bytes as f64;
            let mut unit = 0;
            while value >= 1024.0 && unit < 5 {
                value /= 1024.0;
                unit += 1;
            }
            let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
            if unit == 0 {
                format!("{bytes} B")
            } else {
                format!("{value:.1} {}", units[unit])
            }
        };
        let mut x: u64 = 1;
        for i in 0..200_000u64 {
            // Small values densely, then a pseudo-random spread up to 2^53
            // (where the f64 quotient is still exact).
            let bytes = if i < 100_000 { i * 7 } else { x % (1 << 53) };
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            assert_eq!(human_size(bytes), float(bytes), "{bytes}");
        }
    }

    #[test]
    fn plain_tables_align() {
        let t = plain_table(
            &["KEY", "KIND"],
            &[vec!["a", "active"], vec!["long-key", ""]],
        );
        assert_eq!(t, "KEY        KIND\na          active\nlong-key\n");
        // Widths count characters, not bytes; pads longer than one slice.
        let wide = "x".repeat(100);
        let t = plain_table(&["K", "V"], &[vec!["é", "1"], vec![wide.as_str(), "2"]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], format!("é{}1", " ".repeat(102)));
        assert_eq!(lines[2], format!("{wide}   2"));
    }

    #[test]
    fn causes_are_clipped() {
        assert_eq!(clip_cause("short".into()), "short");
        let exact = "x".repeat(MAX_CAUSE);
        assert_eq!(clip_cause(exact.clone()), exact);
        // Cut on a character boundary: 'é' is two bytes.
        let long = "é".repeat(MAX_CAUSE + 5);
        let cut = clip_cause(long);
        assert_eq!(cut.chars().count(), MAX_CAUSE + 1);
        assert!(cut.ends_with("é…"), "{cut}");
        let err =
            Error::internal("cannot x").with_source(std::io::Error::other("y".repeat(1 << 20)));
        let got = causes(&err);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].chars().count(), MAX_CAUSE + 1);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a/b"), "a/b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
