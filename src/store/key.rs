//! Validation of snapshot keys and labels. Keys live only in the index and
//! are never used as paths, so any printable UTF-8 is allowed.

use super::error::{Error, Result};
use std::collections::BTreeMap;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest label (key and value together), in bytes.
pub const MAX_LABEL_LEN: usize = 4096;

/// Labels of a snapshot, ordered by key for stable output.
pub type Labels = BTreeMap<String, String>;

/// Checks a snapshot key: 1..=1024 bytes, no control characters.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("invalid key: a key cannot be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "invalid key `{}`: {} bytes is longer than the limit of {MAX_KEY_LEN}",
            shorten(key),
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "invalid key {:?}: it contains the control character {:?}",
            shorten(key),
            c
        )));
    }
    Ok(())
}

/// Parses `K=V` label arguments. An empty value is kept (the caller decides
/// whether it means "remove").
pub fn parse_label(text: &str) -> Result<(String, String)> {
    let Some((k, v)) = text.split_once('=') else {
        return Err(Error::invalid(format!(
            "invalid label {:?}: expected KEY=VALUE",
            shorten(text)
        )));
    };
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Checks a label: non-empty key, key and value at most 4096 bytes together
/// (the SPEC's rules, and containerd's). Any other text is a valid key or
/// value, control characters too: tables show them escaped.
pub fn validate_label(k: &str, v: &str) -> Result<()> {
    if k.is_empty() {
        return Err(Error::invalid(
            "invalid label: the label key cannot be empty",
        ));
    }
    if k.len() + v.len() > MAX_LABEL_LEN {
        return Err(Error::invalid(format!(
            "invalid label {:?}: key and value are {} bytes, longer than the limit of {MAX_LABEL_LEN}",
            shorten(k),
            k.len() + v.len()
        )));
    }
    Ok(())
}

/// Labels given on a create (`--label K=V`, repeatable): later ones win,
/// and `K=` sets nothing (it drops an earlier `K`): containerd stores no
/// label with an empty value, and `label KEY K=` removes one.
pub fn parse_labels(texts: &[String]) -> Result<Labels> {
    let mut labels = Labels::new();
    for text in texts {
        let (k, v) = parse_label(text)?;
        if v.is_empty() {
            labels.remove(&k);
        } else {
            labels.insert(k, v);
        }
    }
    Ok(labels)
}

/// At most 64 characters of a long text, for error messages.
pub fn shorten(text: &str) -> String {
    if text.chars().count() <= 64 {
        text.to_string()
    } else {
        text.chars().take(61).collect::<String>() + "…"
    }
}

/// Quotes `arg` for a POSIX shell when it needs it: the keys and paths in
/// printed mount lines and in hints' command lines.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=,:+@%".contains(&b));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in [
            "a",
            "../../etc",
            "a/b",
            "-x",
            "sha256:abc",
            "with space",
            "..",
        ] {
            validate_key(ok).unwrap();
        }
        validate_key(&"k".repeat(1024)).unwrap();
        for bad in ["", "a\nb", "a\tb", "a\0b", "\u{7f}"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        let long = validate_key(&"k".repeat(1025)).unwrap_err().to_string();
        // Shortened once: one ellipsis, then the length.
        assert_eq!(long.matches('…').count(), 1, "{long}");
        assert!(long.contains("1025 bytes"), "{long}");
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_label("a=").unwrap(), ("a".into(), "".into()));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
        // Key and value together: 1 + 4095 bytes is the limit.
        assert!(parse_label(&format!("a={}", "v".repeat(4096))).is_err());
        parse_label(&format!("a={}", "v".repeat(4095))).unwrap();
        let given = |texts: &[&str]| {
            parse_labels(&texts.iter().map(|t| t.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let set = given(&["a=1", "b=", "c=3", "c=", "a=2"]);
        assert_eq!(set, Labels::from([("a".into(), "2".into())]));
    }
}
