//! The checked-in man pages and completion scripts match the CLI definition.
//! Regenerate them with `STRATA_UPDATE_REFERENCES=1 cargo test --test cli references`.

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
