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
