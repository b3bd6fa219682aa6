//! `ls --filter`: containerd's filter grammar.
//!
//! A filter is a comma-separated list of selectors that must all hold; several
//! filters in a [`FilterSet`] are alternatives (any may hold).
//!
//! ```text
//! filter    := selector ("," selector)*
//! selector  := fieldpath [operator value]
//! fieldpath := field ("." field)*
//! field     := [A-Za-z0-9_-]+ | "double-quoted"
//! operator  := "==" | "!=" | "~="
//! value     := "double-quoted" | bare
//!            | /slash-quoted/ | |pipe-quoted|        (only after "~=")
//! bare      := a run of characters other than ",", whitespace and control
//!              characters, not starting with a quote ("), "/", "|" or an
//!              operator character ("=", "!", "~")
//! ```
//!
//! Quoted strings use Go escapes: `\a \b \f \n \r \t \v \\`, the closing quote
//! character (`\"`, `\/`, `\|`), octal `\NNN`, `\xHH`, `\uHHHH` and
//! `\UHHHHHHHH`. Whitespace may surround any token.
//!
//! Known fields are `name`, `kind`, `parent` and `labels.K`. Operators: `==`
//! (present and equal), `!=` (absent or different), `~=` (present and matching
//! the regex, unanchored) and none (present).

use regex::Regex;

/// Field values of one item being filtered.
pub trait Fields {
    /// `path` is the field path: ["name"], ["kind"], ["parent"], ["labels", "K"].
    /// None when the field is absent (e.g. parent of a root snapshot, a missing label).
    fn field(&self, path: &[String]) -> Option<String>;
}

/// A filter that does not parse, names an unknown field or has a bad regex.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    pub message: String,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, item: &dyn Fields) -> bool {
        let value = item.field(&self.path);
        match (&self.op, value) {
            (Op::Present, value) => value.is_some(),
            (Op::Equal(want), Some(value)) => value == *want,
            (Op::Equal(_), None) => false,
            (Op::NotEqual(want), Some(value)) => value != *want,
            (Op::NotEqual(_), None) => true,
            (Op::Matches(re), Some(value)) => re.is_match(&value),
            (Op::Matches(_), None) => false,
        }
    }
}

/// One `--filter`: all of its selectors must hold.
#[derive(Debug, Clone)]
pub struct Filter {
    selectors: Vec<Selector>,
}

impl Filter {
    /// Parses one filter; empty text is an error.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        Parser::new(text, true).filter()
    }

    /// True when every selector holds for `item`.
    pub fn matches(&self, item: &dyn Fields) -> bool {
        self.selectors.iter().all(|s| s.matches(item))
    }
}

/// Several `--filter` options: any of them may hold. Empty matches everything.
#[derive(Debug, Clone, Default)]
pub struct FilterSet {
    filters: Vec<Filter>,
}

impl FilterSet {
    /// Parses each text as a [`Filter`]; the first failure is returned.
    pub fn parse(texts: &[String]) -> Result<FilterSet, FilterError> {
        let filters = texts
            .iter()
            .map(|t| Filter::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FilterSet { filters })
    }

    /// True when the set is empty or any filter holds for `item`.
    pub fn matches(&self, item: &dyn Fields) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| f.matches(item))
    }

    /// True when no filter was given.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_operator_char(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

/// Shows a character the way the error messages quote it.
fn show_char(c: char) -> String {
    match c {
        '\'' => "\"'\"".to_string(),
        c if c.is_control() || c.is_whitespace() => format!("{:?}", c),
        c => format!("'{c}'"),
    }
}

/// Renders a field path for messages, quoting parts that need it.
fn show_path(path: &[String]) -> String {
    path.iter()
        .map(|p| {
            if !p.is_empty() && p.chars().all(is_field_char) {
                p.clone()
            } else {
                format!("{p:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// First line of a regex error that says what is wrong.
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().map(str::trim).collect::<Vec<_>>().join(" "))
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    /// Whether to reject unknown fields (always, except in tests of the
    /// bare grammar).
    check_fields: bool,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, check_fields: bool) -> Self {
        Parser {
            text,
            pos: 0,
            check_fields,
        }
    }

    fn error_at(&self, byte_pos: usize, what: impl std::fmt::Display) -> FilterError {
        self.error_with(byte_pos, what, "")
    }

    /// `bad filter "TEXT": WHAT at position N` followed by `suffix`.
    fn error_with(
        &self,
        byte_pos: usize,
        what: impl std::fmt::Display,
        suffix: &str,
    ) -> FilterError {
        let pos = self.text[..byte_pos].chars().count();
        FilterError {
            message: format!(
                "bad filter {:?}: {what} at position {pos}{suffix}",
                self.text
            ),
        }
    }

    /// `expected ... at position N[, found 'c']` at the current position.
    fn expected(&self, what: &str) -> FilterError {
        let found = match self.peek() {
            None => String::new(),
            Some(c) => format!(", found {}", show_char(c)),
        };
        self.error_with(self.pos, format_args!("expected {what}"), &found)
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if !f(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        &self.text[start..self.pos]
    }

    fn filter(mut self) -> Result<Filter, FilterError> {
        if self.text.trim().is_empty() {
            return Err(FilterError {
                message: format!("bad filter {:?}: empty filter", self.text),
            });
        }
        let mut selectors = vec![self.selector()?];
        loop {
            self.skip_ws();
            match self.peek() {
                None => break,
                Some(',') => {
                    self.bump();
                    selectors.push(self.selector()?);
                }
                Some(_) => return Err(self.expected("',' or end of filter")),
            }
        }
        Ok(Filter { selectors })
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        self.skip_ws();
        let start = self.pos;
        let path = self.fieldpath()?;
        if self.check_fields {
            self.check_field(start, &path)?;
        }
        self.skip_ws();
        let op = match self.peek() {
            None | Some(',') => Op::Present,
            _ => self.operation()?,
        };
        Ok(Selector { path, op })
    }

    fn check_field(&self, start: usize, path: &[String]) -> Result<(), FilterError> {
        let known = match path {
            [one] => matches!(one.as_str(), "name" | "kind" | "parent"),
            [first, _] => first == "labels",
            _ => false,
        };
        if known {
            return Ok(());
        }
        let hint = if path.first().is_some_and(|p| p == "labels") {
            " (use labels.KEY; quote a key with other characters than letters, \
             digits, '_' and '-', e.g. labels.\"containerd.io/gc.root\")"
        } else {
            " (known fields: name, kind, parent, labels.KEY)"
        };
        Err(self.error_with(
            start,
            format_args!("unknown field {:?}", show_path(path)),
            hint,
        ))
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_ws();
            if self.peek() != Some('.') {
                return Ok(path);
            }
            self.bump();
            self.skip_ws();
            path.push(self.field()?);
        }
    }

    fn field(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some(c) if is_field_char(c) => Ok(self.take_while(is_field_char).to_string()),
            _ => Err(self.expected("a field")),
        }
    }

    fn operation(&mut self) -> Result<Op, FilterError> {
        let start = self.pos;
        let op = self.take_while(is_operator_char);
        let matches = match op {
            "==" | "!=" => false,
            "~=" => true,
            "" => return Err(self.expected("an operator (==, !=, ~=)")),
            other => {
                return Err(self.error_with(
                    start,
                    format_args!("unsupported operator {other:?}"),
                    " (use ==, != or ~=)",
                ));
            }
        };
        let op = op.to_string();
        self.skip_ws();
        let value_pos = self.pos;
        let value = match self.peek() {
            Some('"') => self.quoted('"')?,
            Some(q @ ('/' | '|')) if matches => self.quoted(q)?,
            Some(q @ ('/' | '|')) => {
                return Err(self.error_with(
                    value_pos,
                    format_args!("invalid quote {}", show_char(q)),
                    " (only ~= takes /.../ or |...| values; quote other values with \"...\")",
                ));
            }
            Some(c) if is_value_char(c) && !is_operator_char(c) => {
                self.take_while(is_value_char).to_string()
            }
            _ => return Err(self.expected("a value")),
        };
        Ok(match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => match Regex::new(&value) {
                Ok(re) => Op::Matches(re),
                Err(err) => {
                    return Err(self.error_with(
                        value_pos,
                        format_args!("invalid regex {value:?}"),
                        &format!(": {}", regex_reason(&err)),
                    ));
                }
            },
        })
    }

    /// Reads a literal quoted with `quote`, decoding Go escapes.
    fn quoted(&mut self, quote: char) -> Result<String, FilterError> {
        let start = self.pos;
        self.bump();
        let mut out: Vec<u8> = Vec::new();
        loop {
            let at = self.pos;
            let c = match self.bump() {
                None | Some('\n') => {
                    return Err(self.error_at(start, "quoted string not terminated"));
                }
                Some(c) => c,
            };
            if c == quote {
                break;
            }
            if c != '\\' {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            let simple = match self.bump() {
                Some('a') => Some(0x07),
                Some('b') => Some(0x08),
                Some('f') => Some(0x0c),
                Some('n') => Some(b'\n'),
                Some('r') => Some(b'\r'),
                Some('t') => Some(b'\t'),
                Some('v') => Some(0x0b),
                Some('\\') => Some(b'\\'),
                Some(e) if e == quote => Some(e as u8),
                Some(e @ '0'..='7') => {
                    let mut v = e.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match self.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                self.bump();
                                v = v * 8 + d;
                            }
                            None => {
                                return Err(self.error_at(at, "illegal numeric escape sequence"));
                            }
                        }
                    }
                    match u8::try_from(v) {
                        Ok(b) => Some(b),
                        Err(_) => {
                            return Err(self.error_at(at, "octal escape value above 255"));
                        }
                    }
                }
                Some(e @ ('x' | 'u' | 'U')) => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let mut v: u32 = 0;
                    for _ in 0..n {
                        match self.peek().and_then(|d| d.to_digit(16)) {
                            Some(d) => {
                                self.bump();
                                v = (v << 4) | d;
                            }
                            None => {
                                return Err(self.error_at(at, "illegal numeric escape sequence"));
                            }
                        }
                    }
                    if e == 'x' {
                        Some(v as u8)
                    } else {
                        let Some(ch) = char::from_u32(v) else {
                            return Err(
                                self.error_at(at, "escape is not a valid Unicode character")
                            );
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        None
                    }
                }
                _ => return Err(self.error_at(at, "illegal escape sequence")),
            };
            if let Some(b) = simple {
                out.push(b);
            }
        }
        String::from_utf8(out).map_err(|_| self.error_at(start, "quoted string is not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Default, Clone, PartialEq)]
    struct Item {
        name: String,
        kind: String,
        parent: Option<String>,
        labels: BTreeMap<String, String>,
    }

    fn item(name: &str, kind: &str, parent: Option<&str>, labels: &[(&str, &str)]) -> Item {
        Item {
            name: name.into(),
            kind: kind.into(),
            parent: parent.map(Into::into),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    impl Fields for Item {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [f] if f == "name" => Some(self.name.clone()),
                [f] if f == "kind" => Some(self.kind.clone()),
                [f] if f == "parent" => self.parent.clone(),
                [f, k] if f == "labels" => self.labels.get(k).cloned(),
                _ => None,
            }
        }
    }

    fn corpus() -> Vec<Item> {
        vec![
            item("base", "committed", None, &[("containerd.io/gc.root", "x")]),
            item("layer-1", "committed", Some("base"), &[("tier", "1")]),
            item(
                "sha256:abc",
                "active",
                Some("layer-1"),
                &[("tier", "2"), ("note", "a, b \"c\"")],
            ),
            item("dir/snap.1.0", "view", Some("sha256:abc"), &[]),
        ]
    }

    fn names(text: &str) -> Vec<String> {
        let f = Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        corpus()
            .into_iter()
            .filter(|i| f.matches(i))
            .map(|i| i.name)
            .collect()
    }

    fn err(text: &str) -> String {
        match Filter::parse(text) {
            Ok(f) => panic!("{text:?} parsed: {f:?}"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn presence() {
        assert_eq!(names("name").len(), 4);
        assert_eq!(names("parent"), ["layer-1", "sha256:abc", "dir/snap.1.0"]);
        assert_eq!(names("labels.tier"), ["layer-1", "sha256:abc"]);
        assert!(names("labels.missing").is_empty());
    }

    #[test]
    fn equal() {
        assert_eq!(names("name==base"), ["base"]);
        assert_eq!(names("kind==committed"), ["base", "layer-1"]);
        assert_eq!(names("labels.tier==2"), ["sha256:abc"]);
        // absent fields never equal, not even the empty string
        assert!(names("labels.missing==\"\"").is_empty());
        assert!(names("parent==\"\"").is_empty());
    }

    #[test]
    fn not_equal() {
        assert_eq!(
            names("name!=base"),
            ["layer-1", "sha256:abc", "dir/snap.1.0"]
        );
        // absent parent / label counts as different
        assert_eq!(
            names("parent!=base"),
            ["base", "sha256:abc", "dir/snap.1.0"]
        );
        assert_eq!(
            names("labels.tier!=1"),
            ["base", "sha256:abc", "dir/snap.1.0"]
        );
        assert_eq!(names("labels.missing!=\"\"").len(), 4);
    }

    #[test]
    fn regex() {
        assert_eq!(names("name~=^layer"), ["layer-1"]);
        // unanchored, like Go's MatchString
        assert_eq!(names("name~=abc"), ["sha256:abc"]);
        assert_eq!(
            names("name~=[0-9]"),
            ["layer-1", "sha256:abc", "dir/snap.1.0"]
        );
        // absent fields never match, even a regex matching ""
        assert_eq!(
            names("parent~=.*"),
            ["layer-1", "sha256:abc", "dir/snap.1.0"]
        );
        assert!(names("labels.missing~=^$").is_empty());
        assert_eq!(names("name~=/^dir\\/snap/"), ["dir/snap.1.0"]);
        assert_eq!(names("name~=|^dir/snap|"), ["dir/snap.1.0"]);
        assert_eq!(names("name~=\"^(base|layer-1)$\""), ["base", "layer-1"]);
        // a comma inside a regex quote is not a separator
        assert_eq!(
            names("labels.tier~=/^[0-9]{1,2}$/,kind==active"),
            ["sha256:abc"]
        );
        // backslashes in bare values are literal
        assert_eq!(
            names("name~=\\d"),
            ["layer-1", "sha256:abc", "dir/snap.1.0"]
        );
    }

    #[test]
    fn regex_compile_error() {
        let m = err("name~=(");
        assert!(
            m.starts_with("bad filter \"name~=(\": invalid regex \"(\""),
            "{m}"
        );
        assert!(m.contains("at position 6"), "{m}");
        assert!(!m.contains('\n'), "{m}");
        assert!(err("name~=/[a/").contains("invalid regex"));
        assert!(err("kind==active,labels.x~=a{2,1}").contains("invalid regex"));
    }

    #[test]
    fn and_within_filter() {
        assert_eq!(names("kind==committed,parent"), ["layer-1"]);
        assert_eq!(names("labels.tier,name!=layer-1"), ["sha256:abc"]);
        assert!(names("name==base,name==layer-1").is_empty());
    }

    #[test]
    fn quoted_label_keys() {
        assert_eq!(names("labels.\"containerd.io/gc.root\"==x"), ["base"]);
        assert_eq!(names("labels.\"containerd.io/gc.root\""), ["base"]);
        assert_eq!(names("labels.\"tier\"==\"1\""), ["layer-1"]);
        assert_eq!(names("\"name\"==base"), ["base"]);
        // unquoted, the key is split at the dots and stops at the slash
        let m = err("labels.containerd.io/gc.root==x");
        assert!(m.contains("unknown field \"labels.containerd.io\""), "{m}");
        assert!(m.contains("labels.\"containerd.io/gc.root\""), "{m}");
    }

    #[test]
    fn quoted_values() {
        assert_eq!(names(r#"labels.note=="a, b \"c\"""#), ["sha256:abc"]);
        assert_eq!(names(r#"labels.note~="b \"c\"$""#), ["sha256:abc"]);
        assert_eq!(names(r#"name=="dir/snap.1.0""#), ["dir/snap.1.0"]);
        assert_eq!(names(r#"name=="\x62ase""#), ["base"]);
        assert_eq!(names(r#"name=="\u0062ase""#), ["base"]);
        assert_eq!(names(r#"name=="\U00000062ase""#), ["base"]);
        assert_eq!(names(r#"name=="\142ase""#), ["base"]);
    }

    fn value(text: &str) -> String {
        let f = Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        match &f.selectors[0].op {
            Op::Equal(v) | Op::NotEqual(v) => v.clone(),
            Op::Matches(re) => re.as_str().to_string(),
            Op::Present => panic!("no value"),
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(value(r#"name=="a\"b""#), "a\"b");
        assert_eq!(value(r#"name=="a\\b""#), "a\\b");
        assert_eq!(value(r#"name=="\a\b\f\n\r\t\v""#), "\x07\x08\x0c\n\r\t\x0b");
        assert_eq!(value(r#"name=="\xc3\xa9""#), "é");
        assert_eq!(value(r#"name=="\u00e9\U0001F600""#), "é😀");
        assert_eq!(value(r#"name=="\303\251""#), "é");
        assert_eq!(value("name==\"tab\there\""), "tab\there");
        assert_eq!(value(r"name~=/a\/b/"), "a/b");
        assert_eq!(value(r"name~=|a\|b|"), "a|b");
        assert_eq!(value(r"name~=/\\d+/"), "\\d+");
        assert_eq!(value(r#"name=="""#), "");
        // errors
        assert!(err(r#"name=="\g""#).contains("illegal escape sequence at position 7"));
        assert!(err(r#"name=="\'""#).contains("illegal escape sequence"));
        assert!(err(r"name~=/\d+/").contains("illegal escape sequence"));
        assert!(err(r#"name~=/\"/"#).contains("illegal escape sequence"));
        assert!(err(r#"name=="\/""#).contains("illegal escape sequence"));
        assert!(err(r#"name=="\xag""#).contains("illegal numeric escape sequence"));
        assert!(err(r#"name=="\x4""#).contains("illegal numeric escape sequence"));
        assert!(err(r#"name=="\u12""#).contains("illegal numeric escape sequence"));
        assert!(err(r#"name=="\18""#).contains("illegal numeric escape sequence"));
        assert!(err(r#"name=="\400""#).contains("above 255"));
        assert!(err(r#"name=="\ud800""#).contains("not a valid Unicode"));
        assert!(err(r#"name=="\U00110000""#).contains("not a valid Unicode"));
        assert!(err(r#"name=="\xff""#).contains("not valid UTF-8"));
        assert!(err(r#"name=="abc"#).contains("quoted string not terminated at position 6"));
        assert!(err("name==\"a\nb\"").contains("not terminated"));
        assert!(err(r#"name=="abc\""#).contains("not terminated"));
    }

    #[test]
    fn bare_values() {
        assert_eq!(value("name==sha256:abc"), "sha256:abc");
        assert_eq!(value("name==a/b"), "a/b");
        assert_eq!(value("name==1.0"), "1.0");
        assert_eq!(value("name==-x-"), "-x-");
        assert_eq!(value("name==.hidden"), ".hidden");
        assert_eq!(value("name==a=b!c~d"), "a=b!c~d");
        assert_eq!(value("name==a\"b"), "a\"b");
        assert_eq!(value("name==a|b/c"), "a|b/c");
        assert_eq!(value("name==牛"), "牛");
        assert_eq!(
            value("name==punctuated_value.foo-bar"),
            "punctuated_value.foo-bar"
        );
        assert_eq!(names("name==sha256:abc"), ["sha256:abc"]);
        assert_eq!(names("name==dir/snap.1.0"), ["dir/snap.1.0"]);
        assert_eq!(names("parent==sha256:abc"), ["dir/snap.1.0"]);
        // a slash or pipe starts a quote, which only ~= accepts
        assert!(err("name==/a/").contains("invalid quote '/' at position 6"));
        assert!(err("name!=|a|").contains("invalid quote '|'"));
    }

    #[test]
    fn whitespace() {
        assert_eq!(names("  name == base  "), ["base"]);
        assert_eq!(names("kind==committed , parent"), ["layer-1"]);
        assert_eq!(names("labels . tier ==\t2"), ["sha256:abc"]);
        assert_eq!(names("labels.\"containerd.io/gc.root\" == x"), ["base"]);
        let m = err("name==foo bar");
        assert!(
            m.contains("expected ',' or end of filter at position 10, found 'b'"),
            "{m}"
        );
    }

    #[test]
    fn operators() {
        let m = err("name=base");
        assert!(
            m.contains("unsupported operator \"=\" at position 4"),
            "{m}"
        );
        assert!(err("name===base").contains("unsupported operator \"===\""));
        assert!(err("name!==base").contains("unsupported operator \"!==\""));
        assert!(err("name<base").contains("expected an operator"));
        assert!(err("name== !x").contains("expected a value"));
    }

    #[test]
    fn missing_values() {
        assert_eq!(
            err("labels.a=="),
            "bad filter \"labels.a==\": expected a value at position 10"
        );
        assert!(err("labels.a==,name").contains("expected a value at position 10, found ','"));
        assert!(err("name~=").contains("expected a value"));
        assert!(err("name!=   ").contains("expected a value at position 9"));
    }

    #[test]
    fn empty_and_separators() {
        assert_eq!(err(""), "bad filter \"\": empty filter");
        assert!(err("   ").contains("empty filter"));
        let m = err("name==base,");
        assert!(m.contains("expected a field at position 11"), "{m}");
        assert!(err(",name").contains("expected a field at position 0, found ','"));
        assert!(err("name,,kind").contains("expected a field at position 5"));
        assert!(err("labels.").contains("expected a field at position 7"));
        assert!(err("labels..a").contains("expected a field"));
        assert!(err(".name").contains("expected a field"));
        assert!(err("==x").contains("expected a field"));
        assert!(err("labels.?a").contains("expected a field at position 7, found '?'"));
        assert!(err("labels.|a|==x").contains("expected a field"));
    }

    #[test]
    fn unknown_fields() {
        for text in [
            "size==1",
            "labels",
            "labels==x",
            "name.x",
            "labels.a.b==c",
            "Name==base",
            "kind.x==y",
            "parent.labels.a",
            "\"labels.a\"==x",
            "x",
        ] {
            let m = err(text);
            assert!(m.contains("unknown field"), "{text}: {m}");
            assert!(m.starts_with(&format!("bad filter {text:?}")), "{m}");
        }
        assert!(err("size==1").contains("unknown field \"size\" at position 0"));
        assert!(err("name==a, size").contains("unknown field \"size\" at position 9"));
        assert!(err("labels.a.\"b c\"").contains("unknown field \"labels.a.\\\"b c\\\"\""));
        // a later syntax error is not reached once the field is unknown
        assert!(err("size=1").contains("unknown field"));
    }

    #[test]
    fn garbage() {
        assert!(err("name\0bar").contains("found '\\0'"));
        assert_eq!(value("name==base)"), "base)");
        assert!(err("name==\"base\"x").contains("expected ',' or end of filter"));
        assert!(err("labels.\"a\"b").contains("expected an operator"));
        assert!(err("name==a\u{1}b").contains("expected ',' or end of filter"));
    }

    #[test]
    fn positions_count_characters() {
        let m = err("labels.\"牛\"==");
        assert!(m.ends_with("expected a value at position 12"), "{m}");
        assert!(err("labels.牛==x").contains("expected a field at position 7, found '牛'"));
    }

    #[test]
    fn filter_set() {
        let set = FilterSet::parse(&[]).unwrap();
        assert!(set.is_empty());
        assert!(corpus().iter().all(|i| set.matches(i)));
        assert!(FilterSet::default().is_empty());

        let set = FilterSet::parse(&["name==base".into(), "kind==view".into()]).unwrap();
        assert!(!set.is_empty());
        let got: Vec<_> = corpus()
            .into_iter()
            .filter(|i| set.matches(i))
            .map(|i| i.name)
            .collect();
        assert_eq!(got, ["base", "dir/snap.1.0"]);

        let set = FilterSet::parse(&[
            "labels.tier==1,kind==committed".into(),
            "labels.none".into(),
        ])
        .unwrap();
        let got: Vec<_> = corpus()
            .into_iter()
            .filter(|i| set.matches(i))
            .map(|i| i.name)
            .collect();
        assert_eq!(got, ["layer-1"]);

        let e = FilterSet::parse(&["name==base".into(), "size==1".into()]).unwrap_err();
        assert!(e.to_string().contains("bad filter \"size==1\""));
        assert!(FilterSet::parse(&["".into()]).is_err());
    }

    // containerd's pkg/filters tests, run against the bare grammar (any field).

    #[derive(Debug, Clone, PartialEq)]
    struct CEntry {
        name: &'static str,
        other: &'static str,
        labels: &'static [(&'static str, &'static str)],
    }

    impl Fields for CEntry {
        fn field(&self, path: &[String]) -> Option<String> {
            let present = |s: &str| (!s.is_empty()).then(|| s.to_string());
            match path.first().map(String::as_str) {
                Some("name") => present(self.name),
                Some("other") => present(self.other),
                Some("labels") => {
                    let key = path[1..].join(".");
                    self.labels
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.to_string())
                }
                _ => None,
            }
        }
    }

    fn ccorpus() -> Vec<CEntry> {
        let e = |name, other, labels| CEntry {
            name,
            other,
            labels,
        };
        vec![
            e("foo", "", &[("foo", "true")]),
            e("bar", "", &[]),
            e(
                "foo",
                "",
                &[("foo", "present"), ("more complex label", "present")],
            ),
            e("bar", "", &[("bar", "true")]),
            e(
                "fooer",
                "",
                &[("more complex label with \\ and \"", "present")],
            ),
            e(
                "fooer",
                "",
                &[("more complex label with \\ and \".post", "present")],
            ),
            e("baz", "too complex, yo", &[]),
            e("bazo", "abc", &[]),
            e("compound", "", &[("foo", "omg_asdf.asdf-qwer")]),
        ]
    }

    fn bare(text: &str) -> Result<Filter, FilterError> {
        Parser::new(text, false).filter()
    }

    #[test]
    fn containerd_filter_cases() {
        let ok: &[(&str, &[usize])] = &[
            ("name", &[0, 1, 2, 3, 4, 5, 6, 7, 8]),
            ("labels.foo", &[0, 2, 8]),
            ("labels.foo,name", &[0, 2, 8]),
            ("labels.foo==true", &[0]),
            ("labels.foo==omg_asdf.asdf-qwer", &[8]),
            ("name==bar", &[1, 3]),
            ("name!=bar", &[0, 2, 4, 5, 6, 7, 8]),
            ("name==bar,labels.bar", &[3]),
            ("other==\"too complex, yo\"", &[6]),
            ("other~=[abc]+,name!=foo", &[6, 7]),
            ("other~=/[abc]+/,name!=foo", &[6, 7]),
            ("other~=/[abc]{1,2}/,name!=foo", &[6, 7]),
            ("other~=/[abc]{0,1}\"\\//,name!=foo", &[]),
            ("name==bar,labels.bar==true", &[3]),
            ("name==bar,labels.bar==wrong", &[]),
            ("name==foo,labels.\"more complex label\"", &[2]),
            (
                r#"labels."more complex label with \\ and \""==present"#,
                &[4],
            ),
            (
                r#"labels."more complex label with \\ and \"".post==present"#,
                &[5],
            ),
        ];
        let corpus = ccorpus();
        for (text, want) in ok {
            let f = bare(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let got: Vec<usize> = (0..corpus.len())
                .filter(|&i| f.matches(&corpus[i]))
                .collect();
            assert_eq!(&got, want, "{text}");
        }
        for text in [
            "labels.|foo|==omg_asdf.asdf-qwer",
            r#"labels.?"more complex label with \\ and \"".post==present"#,
            "name==foo,",
            "labels.",
            "image~=,id?=?fbaq",
            "labels.ns/key==value",
            "labels.key==/value",
        ] {
            assert!(bare(text).is_err(), "{text}");
        }
    }

    #[test]
    fn containerd_scanner_cases() {
        let ok = [
            "name",
            "name==value,foo!=bar",
            "name~=[abc]+",
            r"name~=[abc]\+",
            "name~=/[abc]{0,2}/,foo==test",
            "name~=牛,labels.moo==true",
            "name~=|牛|,labels.moo==true",
            r#"name~="asdf\n\tfooo""#,
            "compound.labels==punctuated_value.foo-bar",
            r#""leading quote".postquote==value"#,
            r"input~=/foo\/bar/,id!=ff",
            "input~=|foo/bar|,id!=ff",
        ];
        for text in ok {
            bare(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        for text in [
            "name==value,labels.foo=value,other.bar~=match",
            "foo\0bar",
            "foo = bar",
            "interrupted=",
            "doublevalue==value value",
            "input==,id!=ff",
            "labels.containerd.io/key==value",
            "labels.\"containerd.io\nkey\"==value",
            r#"labels."\g""#,
            r#"labels."\xaz""#,
        ] {
            assert!(bare(text).is_err(), "{text:?}");
        }
    }
}
