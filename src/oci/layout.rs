//! OCI image layout directories (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), as skopeo, umoci and oras read and write them.
//! Images in `index.json` are told apart by their
//! `org.opencontainers.image.ref.name` annotation (the tag).

use super::{MT_MANIFEST, Source, Target};
use crate::store::newfile::NewFile;
use crate::store::{Error, Result};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI layout directory and the tag of one image in it.
pub struct Layout {
    dir: PathBuf,
    tag: Option<String>,
}

/// Splits `DIR[:TAG]`: a path that exists as given is a directory without
/// a tag; otherwise the tag follows the first `:` that ends an existing
/// directory, since a tag may hold `:` and `/` itself
/// (`layout:example.com/app:v1`, as skopeo and umoci name it). When no
/// prefix exists, the text after the last `:` (without a `/`) is the tag,
/// and the missing directory is reported.
pub fn split_dir_tag(text: &str) -> (PathBuf, Option<String>) {
    if Path::new(text).exists() {
        return (PathBuf::from(text), None);
    }
    let split = |(d, t): (&str, &str)| (PathBuf::from(d), Some(t.to_string()));
    let existing = text
        .match_indices(':')
        .map(|(i, _)| (&text[..i], &text[i + 1..]))
        .find(|(d, t)| !d.is_empty() && !t.is_empty() && Path::new(d).is_dir());
    if let Some(parts) = existing {
        return split(parts);
    }
    match text.rsplit_once(':') {
        Some((d, t)) if !d.is_empty() && !t.is_empty() && !t.contains('/') => split((d, t)),
        _ => (PathBuf::from(text), None),
    }
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let hex = super::sha256_hex(digest, "a blob")?;
    Ok(dir.join("blobs/sha256").join(hex))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = new_file(dir)?;
    tmp.as_file_mut()
        .write_all(bytes)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    persist(tmp, path)
}

/// A file to write in `dir` before [`persist`] puts it in place (unnamed
/// until then, so a killed export leaves no temporary behind).
fn new_file(dir: &Path) -> Result<NewFile> {
    NewFile::create_in(dir, 0o644)
        .map_err(|e| Error::io(format!("cannot write in {}", dir.display()), e))
}

/// Puts a written file in place, its data synced first: the rename must
/// not reach the disk before what it names (an `index.json` replaced by an
/// empty file after a power loss would lose every image of the layout).
fn persist(tmp: NewFile, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // 0644 whatever the umask: a layout is read by other tools and users.
    let _ = tmp
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644));
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    tmp.persist(path).map_err(|e| {
        let what = format!("cannot write {}", path.display());
        match e.kind() {
            // The layout holds a directory where a file goes: the user's
            // layout is wrong, not strata.
            std::io::ErrorKind::IsADirectory | std::io::ErrorKind::DirectoryNotEmpty => {
                Error::invalid(format!("{what}: it is a directory"))
            }
            _ => Error::io(what, e),
        }
    })
}

fn sync_dirs(dirs: &[&Path]) -> Result<()> {
    for dir in dirs {
        crate::store::layout::sync_dir(dir)
            .map_err(|e| Error::io(format!("cannot sync {}", dir.display()), e))?;
    }
    Ok(())
}

/// Checks a tag against the grammar the OCI image spec gives for
/// `org.opencontainers.image.ref.name`: components of letters and digits
/// joined by one of `-._:@+` or `--`, separated by `/`. skopeo and umoci
/// refer to an image as `oci:DIR:TAG`, so a tag outside it (a space, `..`,
/// an empty component) could not be named again.
pub fn validate_tag(tag: &str) -> Result<()> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        let alnum = |b: &u8| b.is_ascii_alphanumeric();
        if bytes.first().is_none_or(|b| !alnum(b)) || bytes.last().is_none_or(|b| !alnum(b)) {
            return false;
        }
        c.split(|ch: char| ch.is_ascii_alphanumeric())
            .all(|sep| matches!(sep, "" | "-" | "." | "_" | ":" | "@" | "+" | "--"))
    };
    if tag.split('/').all(component_ok) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "invalid tag {:?}: a tag is letters and digits joined by one of `-._:@+` or `--`, in components separated by `/`",
        crate::store::key::shorten(tag)
    )))
}

impl Layout {
    /// A layout to write to, created if missing.
    pub fn create(dir: &Path, tag: &str) -> Result<Layout> {
        validate_tag(tag)?;
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            return Err(
                Error::invalid(format!("{} exists and is not a directory", dir.display()))
                    .with_hint("an OCI layout is a directory: name a new or an existing layout"),
            );
        }
        let not_a_layout = |path: &Path, e: std::io::Error| {
            let what = format!("cannot create {}", path.display());
            match e.kind() {
                // A dangling symlink, or a file where a directory goes.
                std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
                    Error::invalid(format!("{what}: {e}"))
                        .with_hint("an OCI layout is a directory: name a new or an existing layout")
                }
                _ => Error::io(what, e),
            }
        };
        std::fs::create_dir_all(dir).map_err(|e| not_a_layout(dir, e))?;
        // Blobs are written through these two: a symlink among them would
        // send them anywhere (into the store, or a committed snapshot). So
        // each is made, or found, and checked before the next is made in it
        // (audit: `blobs/sha256` was made through a symlinked `blobs` before
        // the check refused it).
        for sub in ["blobs", "blobs/sha256"] {
            let path = dir.join(sub);
            match std::fs::create_dir(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(not_a_layout(&path, e));
                }
                _ => {}
            }
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            if !meta.is_dir() {
                return Err(Error::invalid(format!(
                    "{} is not a directory but a symlink or a file: an OCI layout's blobs \
                     are written only into its own directories",
                    path.display()
                )));
            }
        }
        // An existing layout is written to only if strata could read it back.
        let marker = dir.join("oci-layout");
        if std::fs::symlink_metadata(&marker).is_ok() {
            check_version(&marker)?;
        } else {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let layout = Layout {
            dir: dir.to_path_buf(),
            tag: Some(tag.to_string()),
        };
        // Refused before any blob is written: the index is rewritten last.
        layout.index()?;
        Ok(layout)
    }

    /// A layout to read from.
    pub fn open(dir: &Path, tag: Option<String>) -> Result<Layout> {
        if let Some(tag) = &tag {
            validate_tag(tag)?;
        }
        if !dir.join("oci-layout").exists() || !dir.join("index.json").exists() {
            return Err(Error::not_found(format!(
                "{} is not an OCI image layout (no oci-layout or index.json)",
                dir.display()
            )));
        }
        check_version(&dir.join("oci-layout"))?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            tag,
        })
    }

    /// The layout's `index.json`: an object whose `manifests`, if any, is
    /// an array of objects (an empty index when the file is missing).
    fn index(&self) -> Result<Value> {
        let p = self.dir.join("index.json");
        let index: Value = match read_small(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::invalid(format!("{} is not valid JSON", p.display())).with_source(e)
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                json!({"schemaVersion": 2, "mediaType": super::MT_INDEX, "manifests": []})
            }
            Err(e) => return Err(small_file_error(&p, e)),
        };
        let well_formed = index.as_object().is_some_and(|o| match o.get("manifests") {
            None => true,
            Some(m) => m.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
        });
        if !well_formed {
            return Err(Error::invalid(format!(
                "{} is not an OCI image index (an object with a `manifests` array of descriptors)",
                p.display()
            )));
        }
        Ok(index)
    }

    /// A failure to read blob `digest` at `path`: missing is `not_found`;
    /// not a regular file, or too large, `invalid`.
    fn blob_error(&self, digest: &str, path: &Path, e: std::io::Error) -> Error {
        use std::io::ErrorKind;
        let layout = describe(&self.dir, self.tag.as_deref());
        match e.kind() {
            ErrorKind::NotFound => Error::not_found(format!("{layout} lacks blob {digest}")),
            ErrorKind::InvalidInput | ErrorKind::FileTooLarge | ErrorKind::IsADirectory => {
                Error::invalid(format!("blob {digest} of {layout} is {e}"))
            }
            _ => Error::io(format!("cannot read {}", path.display()), e),
        }
    }

    /// Opens blob `digest`, which must be a regular file (a FIFO or a
    /// device would block or never end).
    fn open_blob(&self, digest: &str) -> Result<File> {
        let p = blob_path(&self.dir, digest)?;
        open_regular(&p).map_err(|e| self.blob_error(digest, &p, e))
    }

    /// Reads a manifest (or an index) whole, checking its digest.
    fn read_manifest(&self, digest: &str) -> Result<Vec<u8>> {
        let p = blob_path(&self.dir, digest)?;
        let bytes = read_small(&p).map_err(|e| self.blob_error(digest, &p, e))?;
        let got = super::sha256(&bytes);
        if got != digest {
            return Err(super::manifest_mismatch(
                &describe(&self.dir, self.tag.as_deref()),
                digest,
                &got,
            ));
        }
        Ok(bytes)
    }
}

/// Refuses a layout whose `oci-layout` file is not JSON (`invalid`) or names
/// another version than the image spec's 1.0.0 (`unsupported`), as
/// containerd does.
fn check_version(marker: &Path) -> Result<()> {
    let bytes = read_small(marker).map_err(|e| small_file_error(marker, e))?;
    let version = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_string))
        .ok_or_else(|| {
            Error::invalid(format!(
                "{} is not an OCI layout marker (no imageLayoutVersion)",
                marker.display()
            ))
        })?;
    if version != "1.0.0" {
        return Err(Error::unsupported(format!(
            "{} says image layout version {}; strata reads 1.0.0",
            marker.display(),
            super::clipped(&version)
        )));
    }
    Ok(())
}

/// A failure to read a layout's small file: not a regular file, or too
/// large, is `invalid` (the layout is wrong); anything else is I/O.
fn small_file_error(path: &Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::FileTooLarge | ErrorKind::IsADirectory => {
            Error::invalid(format!("{} is {e}", path.display()))
        }
        _ => Error::io(format!("cannot read {}", path.display()), e),
    }
}

/// Opens `path` for reading if it is a regular file (opened without
/// blocking, so that a FIFO is refused rather than waited on).
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// Reads a layout's small file (index.json, a manifest, a config) whole,
/// refusing one over [`super::MAX_SMALL_BLOB`] bytes.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(super::MAX_SMALL_BLOB + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > super::MAX_SMALL_BLOB {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "over {} MiB, too large for a manifest, an index or a config",
                super::MAX_SMALL_BLOB >> 20
            ),
        ));
    }
    Ok(bytes)
}

fn describe(dir: &Path, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("{}:{t}", dir.display()),
        None => dir.display().to_string(),
    }
}

impl Source for Layout {
    fn describe(&self) -> String {
        describe(&self.dir, self.tag.as_deref())
    }

    fn manifest(&mut self, digest: Option<&str>) -> Result<(Vec<u8>, String)> {
        if let Some(d) = digest {
            return Ok((self.read_manifest(d)?, d.to_string()));
        }
        let index = self.index()?;
        let entries = index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let tag_of = |e: &Value| {
            e.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1")))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let chosen = match &self.tag {
            Some(t) => entries.iter().find(|e| tag_of(e).as_deref() == Some(t)),
            None if entries.len() == 1 => entries.first(),
            None => None,
        };
        let Some(entry) = chosen else {
            let tags: Vec<String> = entries.iter().filter_map(tag_of).collect();
            let err = match &self.tag {
                Some(t) => {
                    Error::not_found(format!("{} has no image tagged `{t}`", self.dir.display()))
                }
                None => Error::invalid(format!(
                    "{} holds {} images: name one with DIR:TAG",
                    self.dir.display(),
                    entries.len()
                )),
            };
            return Err(err.with_hint(format!(
                "its tags: {}",
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                }
            )));
        };
        let d = entry
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("an index.json entry has no digest"))?
            .to_string();
        let bytes = self.read_manifest(&d)?;
        super::check_size(
            entry,
            bytes.len(),
            &describe(&self.dir, self.tag.as_deref()),
        )?;
        Ok((bytes, d))
    }

    fn blob(&mut self, digest: &str, _size: u64, _progress: &ProgressBar) -> Result<File> {
        // The caller reads at most the descriptor's size (and checks it).
        self.open_blob(digest)
    }
}

impl Target for Layout {
    fn describe(&self) -> String {
        describe(&self.dir, self.tag.as_deref())
    }

    /// A blob counts as there only as a regular file (not a symlink to one)
    /// of the right size; anything else at its path is replaced.
    fn has_blob(&mut self, digest: &str, size: u64) -> Result<bool> {
        let path = blob_path(&self.dir, digest)?;
        Ok(std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == size))
    }

    fn put_blob(
        &mut self,
        digest: &str,
        _size: u64,
        file: &mut File,
        progress: &ProgressBar,
    ) -> Result<()> {
        let path = blob_path(&self.dir, digest)?;
        let dir = path.parent().expect("blobs/sha256");
        let mut tmp = new_file(dir)?;
        let mut w = ProgressWriter {
            inner: tmp.as_file_mut(),
            n: 0,
            bar: progress,
        };
        std::io::copy(file, &mut w)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        crate::store::crash::point("export:blob-written");
        persist(tmp, &path)
    }

    fn put_manifest(&mut self, media_type: &str, bytes: &[u8], digest: &str) -> Result<()> {
        let path = blob_path(&self.dir, digest)?;
        write_atomic(&path, bytes)?;
        let tag = self.tag.clone().unwrap_or_else(|| "latest".into());
        // index.json is read, changed and replaced: two exports into one
        // layout take turns (a lock on the layout directory, no extra file),
        // or one would lose the other's tag.
        let dir = File::open(&self.dir)
            .map_err(|e| Error::io(format!("cannot open {}", self.dir.display()), e))?;
        dir.lock()
            .map_err(|e| Error::io(format!("cannot lock {}", self.dir.display()), e))?;
        let mut index = self.index()?;
        let mut entries = index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let pointer = format!("/annotations/{}", REF_NAME.replace('/', "~1"));
        entries.retain(|e| e.pointer(&pointer).and_then(Value::as_str) != Some(tag.as_str()));
        entries.push(json!({
            "mediaType": if media_type.is_empty() { MT_MANIFEST } else { media_type },
            "digest": digest,
            "size": bytes.len(),
            "annotations": { REF_NAME: tag },
        }));
        index["schemaVersion"] = json!(2);
        index["mediaType"] = json!(super::MT_INDEX);
        index["manifests"] = Value::Array(entries);
        let text = serde_json::to_vec(&index).map_err(|e| Error::internal(e.to_string()))?;
        // The blobs' names reach the disk before the index that names
        // them, and the index's before export reports success.
        let blobs = self.dir.join("blobs");
        sync_dirs(&[&blobs.join("sha256"), &blobs])?;
        write_atomic(&self.dir.join("index.json"), &text)?;
        sync_dirs(&[&self.dir])
    }
}

struct ProgressWriter<'a> {
    inner: &'a mut File,
    n: u64,
    bar: &'a ProgressBar,
}

impl Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        self.bar.set_position(self.n);
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::validate_tag;

    #[test]
    fn tags_follow_the_ref_name_grammar() {
        for ok in [
            "latest",
            "v1.2.3",
            "a--b",
            "x_y",
            "registry.example.com:5000/app/web:1.0",
            "a@b+c",
        ] {
            validate_tag(ok).unwrap();
        }
        for bad in [
            "", "bad tag", "..", "a/../b", "a//b", "-x", "x-", "a.-b", "a---b", "é", "a\nb",
        ] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
    }
}
