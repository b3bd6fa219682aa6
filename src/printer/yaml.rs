//! YAML output, written from serde's tree of a value (the same structs as
//! the JSON, fields in their order), so that every YAML reader reads it back
//! as the JSON. A string is written plain only when YAML 1.1 and 1.2 both read
//! it as that string; any other is double-quoted with JSON-style escapes,
//! which YAML's double-quoted style shares. So `no`, `on`, `2026-01-01` and
//! the timestamps stay strings for a YAML 1.1 reader (PyYAML) too.

use serde_yaml::Value;
use std::fmt::Write;

/// The YAML document of `value`, block style, ending in a newline.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    if is_block(value) {
        block(&mut out, value, 0, true);
    } else {
        scalar(&mut out, value);
        out.push('\n');
    }
    out
}

/// Whether `value` is written as lines of its own: a non-empty mapping or
/// sequence (empty ones are `{}` and `[]`).
fn is_block(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => !map.is_empty(),
        Value::Sequence(items) => !items.is_empty(),
        _ => false,
    }
}

/// A non-empty mapping or sequence at `indent`. With `pad` false the first
/// line continues one already started (after a sequence's `- `).
fn block(out: &mut String, value: &Value, indent: usize, mut pad: bool) {
    let mut line = |out: &mut String| {
        if pad {
            out.extend(std::iter::repeat_n(' ', indent));
        }
        pad = true;
    };
    match value {
        Value::Mapping(map) => {
            for (key, v) in map {
                line(out);
                scalar(out, key);
                out.push(':');
                entry(out, v, indent);
            }
        }
        Value::Sequence(items) => {
            for v in items {
                line(out);
                out.push_str("- ");
                if is_block(v) {
                    block(out, v, indent + 2, false);
                } else {
                    scalar(out, v);
                    out.push('\n');
                }
            }
        }
        _ => unreachable!("a block of a scalar"),
    }
}

/// What follows `key:`. A sequence's items start at the key's column, as
/// libyaml writes them.
fn entry(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Mapping(map) if !map.is_empty() => {
            out.push('\n');
            block(out, v, indent + 2, true);
        }
        Value::Sequence(items) if !items.is_empty() => {
            out.push('\n');
            block(out, v, indent, true);
        }
        _ => {
            out.push(' ');
            scalar(out, v);
            out.push('\n');
        }
    }
}

/// Nodes at this depth and below are written in flow style (see
/// [`Forest`]).
pub const FLOW_DEPTH: usize = 32;

/// Writes a forest given in pre-order (see `Printer::forest`) as the
/// sequence of nested mappings whose last key is `children`, a node at a
/// time. Block style indents each level two more columns, so a chain of
/// 69,000 layers would have taken 4.7 GB of spaces: nodes [`FLOW_DEPTH`]
/// deep and more are written in flow style instead, a node a line at one
/// indentation (`{name: a, kind: committed, children: [` … `]}`), strings
/// quoted unless plain in flow too. A reader reads the same values.
#[derive(Default)]
pub struct Forest {
    /// Whether a node was written (else the document is `[]`).
    any: bool,
    /// The depth of the last node written, if any.
    last: Option<usize>,
    /// How many `children` lists are open in flow style: that of a block
    /// node at `FLOW_DEPTH - 1` first, then those of flow nodes.
    flow: usize,
}

/// Where flow nodes are written: deeper than the keys of their block
/// ancestor (column `2 * (FLOW_DEPTH - 1) + 2`), as YAML wants.
const FLOW_INDENT: usize = 2 * FLOW_DEPTH + 2;

impl Forest {
    /// Writes the node at `depth` whose own fields are `fields` (a
    /// mapping); `parent` says the next node is its child.
    pub fn node(&mut self, out: &mut String, depth: usize, fields: &Value, parent: bool) {
        self.any = true;
        let after = self.last.replace(depth);
        if depth < FLOW_DEPTH {
            self.close_flow(out, 0);
            out.extend(std::iter::repeat_n(' ', 2 * depth));
            out.push_str("- ");
            let indent = 2 * depth + 2;
            match fields {
                Value::Mapping(map) if !map.is_empty() => {
                    block(out, fields, indent, false);
                    out.extend(std::iter::repeat_n(' ', indent));
                }
                _ => {}
            }
            out.push_str("children:");
            if !parent {
                out.push_str(" []\n");
            } else if depth + 1 < FLOW_DEPTH {
                out.push('\n');
            } else {
                out.push_str(" [");
                self.flow = 1;
            }
            return;
        }
        // The lists open are those of its ancestors from `FLOW_DEPTH - 1`.
        self.close_flow(out, depth + 1 - FLOW_DEPTH);
        if after.is_some_and(|d| d >= depth) {
            out.push(',');
        }
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', FLOW_INDENT));
        out.push('{');
        if let Value::Mapping(map) = fields {
            for (key, v) in map {
                flow(out, key);
                out.push_str(": ");
                flow(out, v);
                out.push_str(", ");
            }
        }
        out.push_str("children: [");
        if parent {
            self.flow += 1;
        } else {
            out.push_str("]}");
        }
    }

    /// Closes the flow lists open until `keep` are left.
    fn close_flow(&mut self, out: &mut String, keep: usize) {
        while self.flow > keep {
            self.flow -= 1;
            // The outermost list is a block node's value: its line ends.
            out.push_str(if self.flow == 0 { "]\n" } else { "]}" });
        }
    }

    /// Ends the document.
    pub fn end(&mut self, out: &mut String) {
        self.close_flow(out, 0);
        if !self.any {
            out.push_str("[]\n");
        }
    }
}

/// `v` in flow style: a node's own fields are shallow (a list of mount
/// targets), so recursion is bounded here.
fn flow(out: &mut String, v: &Value) {
    match v {
        Value::Mapping(map) => {
            out.push('{');
            for (i, (key, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(out, key);
                out.push_str(": ");
                flow(out, v);
            }
            out.push('}');
        }
        Value::Sequence(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(out, v);
            }
            out.push(']');
        }
        // `,` ends a plain scalar in flow style, and `:` may (YAML 1.1).
        Value::String(s) if s.contains([',', ':']) => quoted(out, s),
        Value::Tagged(t) => flow(out, &t.value),
        _ => scalar(out, v),
    }
}

fn scalar(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => string(out, s),
        Value::Sequence(_) => out.push_str("[]"),
        Value::Mapping(_) => out.push_str("{}"),
        // strata's structs have no tagged values (enums are plain strings).
        Value::Tagged(t) => scalar(out, &t.value),
    }
}

/// Words that YAML 1.1 reads as booleans or null, and 1.2 as null or booleans.
const WORDS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL",
];

/// Plain when it starts with a letter, `_` or `/` (so never a number, date,
/// time, `.inf`, `~`, `-`, `<<` or `=`), holds only characters that mean
/// nothing in a block scalar, does not end in `:`, and is not one of
/// [`WORDS`]: paths, names, digests and mount options stay plain.
fn is_plain(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-=:,+@".contains(c))
        && !s.ends_with(':')
        && !WORDS.contains(&s)
}

fn string(out: &mut String, s: &str) {
    if is_plain(s) {
        out.push_str(s);
        return;
    }
    quoted(out, s);
}

/// `s` double-quoted, with JSON-style escapes.
fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            // Controls (C1 too: YAML 1.1 reads U+0085 as a line break), the
            // line and paragraph separators, and the byte order mark.
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The YAML of a JSON literal, keys in the order written.
    fn yaml(text: &str) -> String {
        to_string(&serde_yaml::from_str(text).unwrap())
    }

    #[test]
    fn layout_matches_libyaml() {
        let v = r#"[
            {"name": "base", "kind": "committed", "parent": null,
             "labels": {"stage": "build"}, "usage": {"size": 4096, "inodes": 3},
             "mounted_at": [], "children": [{"name": "leaf", "children": []}]},
            {"labels": {}, "options": ["rbind", "ro"]}
        ]"#;
        let want = "\
- name: base
  kind: committed
  parent: null
  labels:
    stage: build
  usage:
    size: 4096
    inodes: 3
  mounted_at: []
  children:
  - name: leaf
    children: []
- labels: {}
  options:
  - rbind
  - ro
";
        assert_eq!(yaml(v), want);
        assert_eq!(yaml("[]"), "[]\n");
        assert_eq!(yaml(r#"{"a": [[1, 2], []]}"#), "a:\n- - 1\n  - 2\n- []\n");
    }

    #[test]
    fn strings_a_reader_could_take_for_something_else_are_quoted() {
        for plain in [
            "app",
            "sha256:abc",
            "/var/lib/strata/snapshots/1/fs",
            "lowerdir=/a/fs:/b/fs",
            "index=off",
            "containerd.io/gc.root",
            "yesterday",
        ] {
            assert_eq!(to_string(&Value::from(plain)), format!("{plain}\n"));
        }
        for (given, written) in [
            ("yes", r#""yes""#),
            ("Off", r#""Off""#),
            ("null", r#""null""#),
            ("2026-01-01", r#""2026-01-01""#),
            ("2026-11-22T18:00:00Z", r#""2026-11-22T18:00:00Z""#),
            ("1e3", r#""1e3""#),
            (".inf", r#"".inf""#),
            ("~", r#""~""#),
            ("", r#""""#),
            ("-x", r#""-x""#),
            ("a: b", r#""a: b""#),
            ("a #b", r#""a #b""#),
            ("key:", r#""key:""#),
            ("say \"hi\"\n", r#""say \"hi\"\n""#),
            ("nel\u{85}", r#""nel\u0085""#),
        ] {
            let text = to_string(&Value::from(given));
            assert_eq!(text, format!("{written}\n"), "{given:?}");
            // And it reads back as the string given.
            assert_eq!(serde_yaml::from_str::<String>(&text).unwrap(), given);
        }
    }
}
