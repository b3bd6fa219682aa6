//! OCI images in and out of the store: `push`/`pull` against registries,
//! `export`/`import` with OCI image layout directories.
//!
//! An image is a chain of committed snapshots. Pulled layers are committed
//! snapshots named by their OCI chain ID (`sha256:…`), each the child of the
//! previous one, so every image that has a layer shares its snapshot; the
//! friendly name is an empty committed snapshot on top (an *alias*, labelled
//! [`LABEL_REF`]). Transports implement [`Source`] (where images come from)
//! and [`Target`] (where they go); the chain logic is the same for both.

pub mod auth;
pub mod layout;
pub mod registry;

use crate::printer::{Printer, Unit};
use crate::store::layer::{Compression, Digests};
use crate::store::{
    Error, Kind, Labels, Result, SnapshotKind, Store,
    exchange::{ApplyChecks, Expected},
    parallel,
};
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// Label of an alias snapshot: the reference it was pulled or imported as.
pub const LABEL_REF: &str = "strata.image.ref";
/// Label of an alias snapshot: the digest of the image manifest.
pub const LABEL_DIGEST: &str = "strata.image.digest";
/// Label of a layer snapshot: where its blobs are known to be, as
/// space-separated `HOST[:PORT]/REPOSITORY@DIGEST` entries, newest first
/// (at most [`MAX_LOCATIONS`]). Written by push and pull; push mounts a blob
/// from one of them instead of uploading it to another repository of the
/// same registry.
pub const LABEL_LAYER_REPO: &str = "strata.layer.repo";
/// How many locations [`LABEL_LAYER_REPO`] keeps.
pub const MAX_LOCATIONS: usize = 8;

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Where an image comes from: a registry or an OCI layout.
pub trait Source {
    /// What the image is called, for messages.
    fn describe(&self) -> String;
    /// The raw manifest (or index) the reference names when `digest` is
    /// None, else the manifest with that digest; with its digest.
    fn manifest(&mut self, digest: Option<&str>) -> Result<(Vec<u8>, String)>;
    /// The blob with `digest`, as a readable file positioned at its start.
    /// The caller verifies the digest and the size; a source that copies
    /// the blob stops once it has more than `size` bytes (0: not known).
    fn blob(&mut self, digest: &str, size: u64, progress: &ProgressBar) -> Result<File>;
    /// `HOST[:PORT]/REPOSITORY` for a registry (remembered on pulled layers
    /// for cross-repository mounts); None for a layout.
    fn location(&self) -> Option<String> {
        None
    }
}

/// Where an image goes: a registry or an OCI layout.
pub trait Target {
    fn describe(&self) -> String;
    /// Whether the target already has the blob (of `size` bytes).
    fn has_blob(&mut self, digest: &str, size: u64) -> Result<bool>;
    /// Stores the blob read from `file` (at its start).
    fn put_blob(
        &mut self,
        digest: &str,
        size: u64,
        file: &mut File,
        progress: &ProgressBar,
    ) -> Result<()>;
    /// Stores the manifest (and tags it, for registries and layouts).
    fn put_manifest(&mut self, media_type: &str, bytes: &[u8], digest: &str) -> Result<()>;
    /// `HOST[:PORT]/REPOSITORY` for a registry; None for a layout.
    fn location(&self) -> Option<String> {
        None
    }
    /// Makes the blob `digest`, which the repository at location `from`
    /// has, part of this target without uploading it (a cross-repository
    /// mount). False when the target cannot (another registry, the blob is
    /// gone, the registry refuses): the caller uploads it then.
    fn mount_blob(&mut self, _digest: &str, _from: &str) -> Result<bool> {
        Ok(false)
    }
}

/// One layer of a pushed or exported image.
#[derive(Debug, Serialize)]
pub struct PushedLayer {
    pub name: String,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    /// The blob was sent (false: the target had it, or it was mounted).
    pub uploaded: bool,
    /// The registry took the blob from another of its repositories.
    pub mounted: bool,
}

/// A pushed or exported image.
#[derive(Debug, Serialize)]
pub struct Pushed {
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: String,
    pub layers: Vec<PushedLayer>,
}

/// One layer of a pulled or imported image.
#[derive(Debug, Serialize)]
pub struct PulledLayer {
    pub chain_id: String,
    pub digest: String,
    pub downloaded: bool,
}

/// A pulled or imported image.
#[derive(Debug, Serialize)]
pub struct Pulled {
    #[serde(rename = "ref")]
    pub reference: String,
    /// The digest of what REF names: an index's for a multi-platform
    /// image, as `docker pull` prints and containerd records.
    pub digest: String,
    /// The digest of the image manifest taken (from the index, for the
    /// host's platform; else the same as `digest`).
    pub manifest: String,
    pub name: String,
    pub layers: Vec<PulledLayer>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// OCI chain IDs of layers with these diff IDs: chainID(L0) = diffID(L0),
/// chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let id = match out.last() {
            None => d.clone(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(id);
    }
    out
}

/// `SOURCE_DATE_EPOCH`, if set. strata records times in nanoseconds in an
/// `i64`, so one outside the years 1677 to 2262 is refused rather than
/// written as the nearest end of that range.
pub fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            let seconds: i64 = v.trim().parse().map_err(|_| {
                Error::invalid(format!(
                    "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
                ))
            })?;
            if seconds.checked_mul(1_000_000_000).is_none() {
                return Err(Error::invalid(format!(
                    "SOURCE_DATE_EPOCH={v:?} is outside the years 1677 to 2262, the times strata can record"
                )));
            }
            Ok(Some(seconds))
        }
        _ => Ok(None),
    }
}

/// The OCI name of the host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn rfc3339(seconds: i64) -> String {
    crate::store::Timestamp(seconds.saturating_mul(1_000_000_000)).to_string()
}

fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => MT_LAYER_TAR,
        Compression::Gzip => MT_LAYER_GZIP,
        Compression::Zstd => MT_LAYER_ZSTD,
    }
}

fn compression_of(media_type: &str) -> Result<Compression> {
    match media_type {
        MT_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        MT_LAYER_GZIP | MT_DOCKER_LAYER => Ok(Compression::Gzip),
        MT_LAYER_ZSTD => Ok(Compression::Zstd),
        other => Err(
            Error::unsupported(format!("unsupported layer media type `{other}`"))
                .with_hint("strata applies OCI and Docker tar layers (plain, gzip or zstd)"),
        ),
    }
}

/// Whether a chain layer is an alias made by pull/import (no content of
/// its own; never pushed).
pub fn is_alias(labels: &Labels) -> bool {
    labels.contains_key(LABEL_REF)
}

/// An unlinked temporary file in `$TMPDIR` (else /tmp). A failure names
/// the directory and where it came from (audit: "cannot create a
/// temporary file: No such file or directory" named neither).
fn temp_file() -> Result<File> {
    tempfile::tempfile().map_err(|e| {
        let dir = std::env::temp_dir();
        let from = match std::env::var_os("TMPDIR") {
            Some(_) => " (from $TMPDIR)",
            None => "",
        };
        Error::io(
            format!(
                "cannot create a temporary file in `{}`{from}",
                dir.display()
            ),
            e,
        )
        .with_hint(if from.is_empty() {
            "set TMPDIR to a directory this user can write"
        } else {
            "set TMPDIR to a directory this user can write, or unset it for /tmp"
        })
    })
}

/// Publishes the chain ending at committed `key` to `target` as an image.
pub fn push(
    store: &mut Store,
    key: &str,
    target: &mut dyn Target,
    compression: Compression,
    printer: &Printer,
) -> Result<Pushed> {
    let sde = source_date_epoch()?;
    let chain: Vec<_> = store
        .chain_of(key)?
        .into_iter()
        .filter(|l| !is_alias(&l.labels))
        .collect();
    let mut known = Vec::with_capacity(chain.len());
    for layer in &chain {
        known.push(store.known_digests(&layer.name, compression, sde)?);
    }
    // Written up front, several at once: layers never written with these
    // settings, and (where no cross-repository mount can stand in, as in a
    // layout) those whose blob the target lacks.
    let mounts = target.location().is_some();
    let mut missing: Vec<&str> = Vec::new();
    for (layer, known) in chain.iter().zip(&known) {
        let write = match known {
            None => true,
            Some(d) => !mounts && !target.has_blob(&d.digest, d.size)?,
        };
        if write {
            missing.push(&layer.name);
        }
    }
    let mut written = write_layers(store, &missing, compression, sde, printer)?;
    let mut layers = Vec::with_capacity(chain.len());
    for (layer, known) in chain.iter().zip(known) {
        let (digests, mut file) = match (written.remove(&layer.name), known) {
            (Some((d, f)), _) => (d, Some(f)),
            (None, Some(d)) => (d, None),
            (None, None) => {
                return Err(Error::internal(format!(
                    "no layer written for `{}`",
                    layer.name
                )));
            }
        };
        let mut digests = digests;
        let mut uploaded = false;
        let mut mounted = false;
        if !target.has_blob(&digests.digest, digests.size)? {
            mounted = try_mount(target, &layer.labels, &digests.digest)?;
            if mounted {
                file = None;
            } else if file.is_none() {
                // Known digests but the target lacks the blob: write it
                // again (strata's own writing, which may differ from a
                // pulled blob), then look for that one too.
                let (d, f) = write_layer(store, &layer.name, compression, sde, printer)?;
                digests = d;
                file = Some(f);
                if target.has_blob(&digests.digest, digests.size)? {
                    file = None;
                } else if try_mount(target, &layer.labels, &digests.digest)? {
                    mounted = true;
                    file = None;
                }
            }
            if let Some(f) = file.as_mut() {
                let bar = printer.progress(
                    &format!("uploading `{}` ({})", layer.name, short(&digests.digest)),
                    Unit::Bytes,
                    Some(digests.size),
                );
                let r = target.put_blob(&digests.digest, digests.size, f, &bar);
                bar.finish_and_clear();
                r?;
                uploaded = true;
            }
        }
        if let Some(location) = target.location() {
            remember_location(
                store,
                &layer.name,
                &layer.labels,
                &location,
                &digests.digest,
            )?;
        }
        layers.push(PushedLayer {
            name: layer.name.clone(),
            digest: digests.digest,
            diff_id: digests.diff_id,
            size: digests.size,
            uploaded,
            mounted,
        });
    }
    let created = rfc3339(sde.unwrap_or_else(|| crate::store::Timestamp::now().seconds()));
    let config = json!({
        "created": created,
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": layers.iter().map(|l| json!({
            "created": created,
            "created_by": format!("strata commit {}", l.name),
        })).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).map_err(|e| Error::internal(e.to_string()))?;
    let config_digest = sha256(&config);
    if !target.has_blob(&config_digest, config.len() as u64)? {
        let mut f = temp_file()?;
        f.write_all(&config)
            .and_then(|()| f.seek(SeekFrom::Start(0)).map(|_| ()))
            .map_err(|e| Error::io("cannot write the image config", e))?;
        target.put_blob(
            &config_digest,
            config.len() as u64,
            &mut f,
            &ProgressBar::hidden(),
        )?;
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": layer_media_type(compression),
            "digest": l.digest,
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::internal(e.to_string()))?;
    let digest = sha256(&manifest);
    target.put_manifest(MT_MANIFEST, &manifest, &digest)?;
    Ok(Pushed {
        reference: target.describe(),
        digest,
        layers,
    })
}

/// The `(location, digest)` entries of a layer's [`LABEL_LAYER_REPO`].
pub fn locations(labels: &Labels) -> Vec<(String, String)> {
    labels
        .get(LABEL_LAYER_REPO)
        .map(|v| {
            v.split_whitespace()
                .filter_map(|e| e.rsplit_once('@'))
                .map(|(l, d)| (l.to_string(), d.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `e` with a hint to pull again when it is a layer of the image (found or
/// just applied) that is gone: another process removed it meanwhile.
fn removed_meanwhile(e: Error) -> Error {
    if e.kind() == Kind::NotFound {
        e.with_hint("another process removed a layer of this image meanwhile: pull again")
    } else {
        e
    }
}

/// Records on layer `name` that `location` has its blob `digest` (first in
/// the list; the oldest entries beyond [`MAX_LOCATIONS`] are dropped).
/// Writes only when that changes the label.
fn remember_location(
    store: &mut Store,
    name: &str,
    labels: &Labels,
    location: &str,
    digest: &str,
) -> Result<()> {
    let mut entries = locations(labels);
    if entries
        .first()
        .is_some_and(|(l, d)| l == location && d == digest)
    {
        return Ok(());
    }
    entries.retain(|(l, d)| !(l == location && d == digest));
    entries.insert(0, (location.to_string(), digest.to_string()));
    entries.truncate(MAX_LOCATIONS);
    let value = entries
        .iter()
        .map(|(l, d)| format!("{l}@{d}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut change = Labels::new();
    change.insert(LABEL_LAYER_REPO.to_string(), value);
    store.update_labels(name, &change).map(|_| ())
}

/// Asks `target` to mount `digest` from each repository the layer's label
/// says has it (other repositories of the target's registry only); true
/// when one mount worked.
fn try_mount(target: &mut dyn Target, labels: &Labels, digest: &str) -> Result<bool> {
    let Some(here) = target.location() else {
        return Ok(false);
    };
    let registry = here.split('/').next().unwrap_or_default();
    for (from, d) in locations(labels) {
        if d != digest || from == here || from.split('/').next() != Some(registry) {
            continue;
        }
        if target.mount_blob(digest, &from)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The first 12 hex digits of a digest, for progress messages (a digest
/// not yet checked is shown whole, never cut inside a character).
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// Writes committed `name`'s layer to a temporary file (remembering its
/// digests in the index); returns the file rewound.
fn write_layer(
    store: &mut Store,
    name: &str,
    compression: Compression,
    sde: Option<i64>,
    printer: &Printer,
) -> Result<(Digests, File)> {
    let bar = printer.progress(&format!("writing the layer of `{name}`"), Unit::Bytes, None);
    let written = layer_to_file(store, name, compression, sde, &mut |n| bar.set_position(n));
    bar.finish_and_clear();
    written
}

/// Writes the layers named `names` to temporary files, several at once:
/// diffing and above all compressing are CPU-bound and every layer is
/// independent, so a chain of many new layers is written in about the time
/// of its largest few. Each thread has its own handle on the store.
fn write_layers(
    store: &mut Store,
    names: &[&str],
    compression: Compression,
    sde: Option<i64>,
    printer: &Printer,
) -> Result<HashMap<String, (Digests, File)>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(names.len());
    if threads <= 1 {
        let mut out = HashMap::new();
        for name in names {
            let written = write_layer(store, name, compression, sde, printer)?;
            out.insert(name.to_string(), written);
        }
        return Ok(out);
    }
    let handles = (0..threads)
        .map(|_| store.reopen())
        .collect::<Result<Vec<_>>>()?;
    let message = format!("writing {} layers, {threads} at a time", names.len());
    let results = printer.spin(&message, || {
        parallel::run(
            handles,
            names.len(),
            |handle, i| layer_to_file(handle, names[i], compression, sde, &mut |_| {}),
            // Let the others finish what they hold; take no more.
            |written| written.is_err(),
        )
    });
    let mut out = HashMap::new();
    let mut lost = false;
    for (name, written) in names.iter().zip(results) {
        match written {
            Some(Ok(w)) => {
                out.insert(name.to_string(), w);
            }
            Some(Err(e)) => return Err(e),
            // A thread that panicked (indexes skipped after an error come
            // after it, so that error is returned first).
            None => lost = true,
        }
    }
    if lost {
        return Err(Error::internal("a layer worker failed"));
    }
    Ok(out)
}

/// The layer of `name` in a temporary file, rewound, and its digests.
fn layer_to_file(
    store: &mut Store,
    name: &str,
    compression: Compression,
    sde: Option<i64>,
    progress: &mut dyn FnMut(u64),
) -> Result<(Digests, File)> {
    let file = temp_file()?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let d = store.layer_blob(name, &mut w, compression, sde, progress)?;
    let mut file = w
        .into_inner()
        .map_err(|e| Error::io("cannot write a temporary file", e.into_error()))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("cannot read a temporary file", e))?;
    Ok((d, file))
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("the {what} is not valid JSON")).with_source(e))
}

fn is_index(v: &Value) -> bool {
    matches!(
        v.get("mediaType").and_then(Value::as_str),
        Some(MT_INDEX) | Some(MT_DOCKER_LIST)
    ) || (v.get("manifests").is_some() && v.get("layers").is_none())
}

/// The platform [`pull`] takes from an image index: linux and the host's
/// architecture, preferably with no variant or the architecture's baseline
/// one (`v1` for amd64, `v8` for arm64), as in containerd.
struct Wanted {
    arch: &'static str,
    baseline: &'static str,
}

/// How a platform fits the [`Wanted`] one.
enum Fit {
    /// The architecture, with no variant or its baseline one.
    Best,
    /// The architecture with a newer variant: taken when there is no better.
    Variant,
    No,
}

impl Wanted {
    fn host() -> Wanted {
        let arch = host_arch();
        let baseline = match arch {
            "amd64" => "v1",
            "arm64" => "v8",
            _ => "",
        };
        Wanted { arch, baseline }
    }

    /// How `platform` (an object with `os`, `architecture` and maybe
    /// `variant`, or an image config, which has the same fields) fits. One
    /// that does not name the `os` and the `architecture` does not fit, as
    /// in containerd (review: a signature or SBOM entry, whose config is
    /// `{}`, was taken for the image).
    fn fit(&self, platform: &Value) -> Fit {
        let field = |name: &str| platform.get(name).and_then(Value::as_str);
        let os = field("os").is_some_and(|os| os.eq_ignore_ascii_case("linux"));
        let arch = field("architecture").map(normal_arch);
        if !os || arch != Some(self.arch) {
            return Fit::No;
        }
        match field("variant") {
            None | Some("") => Fit::Best,
            // containerd writes arm64's baseline `8` or `v8` alike.
            Some(v) if v.trim_start_matches('v') == self.baseline.trim_start_matches('v') => {
                Fit::Best
            }
            Some(_) => Fit::Variant,
        }
    }
}

/// The GOARCH name of an architecture as images spell it, as containerd's
/// `platforms.Normalize` reads it: `x86_64` is `amd64`, `aarch64` is
/// `arm64`, in any case (an index written by other tools than Go's says
/// what `uname -m` says).
fn normal_arch(arch: &str) -> &str {
    const ALIASES: [(&str, &str); 6] = [
        ("x86_64", "amd64"),
        ("x86-64", "amd64"),
        ("amd64", "amd64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("i386", "386"),
    ];
    ALIASES
        .iter()
        .find(|(alias, _)| arch.eq_ignore_ascii_case(alias))
        .map_or(arch, |(_, name)| name)
}

/// How an index entry without a platform is shown among what an index has.
const NO_PLATFORM: &str = "an entry without a platform";

/// The most manifests, indexes and configs [`pull`] reads while it looks
/// through an index for the host's platform.
const MAX_LOOKED_AT: usize = 32;

/// The image manifest [`pull`] takes, with its digest, and its config when
/// that was read to judge the manifest's platform.
struct Chosen {
    manifest: Value,
    digest: String,
    config: Option<Vec<u8>>,
}

/// A walk through an image index, and the indexes it names, for the
/// manifest of the [`Wanted`] platform, as containerd's `images.Manifest`
/// walks one: of an index's entries, those whose platform fits are tried
/// first (the best fits first), then those without a platform (`platform`
/// is optional in the image spec; an entry naming another index usually
/// has none). An index is walked in turn; a manifest reached through an
/// entry without a platform is taken if its config names the platform,
/// and passed over otherwise, as are artifacts (signatures, SBOMs).
struct Walk<'a> {
    source: &'a mut dyn Source,
    what: String,
    wanted: Wanted,
    /// Manifests, indexes and configs read so far.
    looked_at: usize,
    /// The first manifest reached through an entry without a platform
    /// whose config names the architecture with a newer variant.
    fallback: Option<Chosen>,
}

impl Walk<'_> {
    /// Counts one more read, refusing more than [`MAX_LOOKED_AT`]: an
    /// index's entries could name indexes of indexes, each to be read.
    fn look(&mut self) -> Result<()> {
        self.looked_at += 1;
        if self.looked_at > MAX_LOOKED_AT {
            return Err(Error::invalid(format!(
                "{}: more than {MAX_LOOKED_AT} manifests, indexes and configs read without \
                 finding the image for linux/{}",
                self.what, self.wanted.arch
            )));
        }
        Ok(())
    }

    /// The manifest for the platform under `index`, at nesting `depth` (1
    /// for the index REF names); else what the index has, for the message.
    fn index(
        &mut self,
        index: &Value,
        depth: usize,
    ) -> Result<std::result::Result<Chosen, Vec<String>>> {
        if depth > MAX_INDEX_DEPTH {
            return Err(Error::invalid(format!(
                "{}: image indexes nested more than {MAX_INDEX_DEPTH} deep",
                self.what
            )));
        }
        // Walked in place: an index may have as many entries as 64 MiB
        // holds (audit: a copy of 150,000 of them, with their text, took
        // most of 855 MB).
        let entries = index
            .get("manifests")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let mut seen = Vec::with_capacity(entries.len());
        // Entry numbers: best fits, other variants, no platform.
        let mut tiers: [Vec<usize>; 3] = Default::default();
        for (i, m) in entries.iter().enumerate() {
            let usable = m.get("digest").is_some_and(Value::is_string);
            match m.get("platform").filter(|p| !p.is_null()) {
                Some(p) => {
                    let field = |name: &str| p.get(name).and_then(Value::as_str).unwrap_or("?");
                    let platform = format!("{}/{}", field("os"), field("architecture"));
                    seen.push(clipped(&platform).into_owned());
                    match self.wanted.fit(p) {
                        Fit::Best if usable => tiers[0].push(i),
                        Fit::Variant if usable => tiers[1].push(i),
                        _ => {}
                    }
                }
                // An artifact (a signature, an SBOM: OCI 1.1's
                // `artifactType`) is not an image to run.
                None if m.get("artifactType").is_some() => {
                    seen.push(format!("{NO_PLATFORM} (an artifact)"));
                }
                None => {
                    seen.push(NO_PLATFORM.to_string());
                    if usable {
                        tiers[2].push(i);
                    }
                }
            }
        }
        for (tier, i) in tiers
            .iter()
            .enumerate()
            .flat_map(|(t, entries)| entries.iter().map(move |&i| (t, i)))
        {
            let entry = &entries[i];
            let d = digest_of(entry, "platform's manifest descriptor")?;
            self.look()?;
            let (bytes, digest) = self.source.manifest(Some(d))?;
            check_size(entry, bytes.len(), &self.what)?;
            let manifest = parse_json(&bytes, &format!("manifest of {}", self.what))?;
            if is_index(&manifest) {
                match self.index(&manifest, depth + 1)? {
                    Ok(chosen) => return Ok(Ok(chosen)),
                    Err(inner) => {
                        let with = format!("{} (an index with: {})", seen[i], listed(&inner));
                        seen[i] = clipped(&with).into_owned();
                        continue;
                    }
                }
            }
            if tier < 2 {
                return Ok(Ok(Chosen {
                    manifest,
                    digest,
                    config: None,
                }));
            }
            // No platform on the entry: the image config says it. An
            // artifact's manifest, or one whose config is not an image's,
            // is passed over.
            let is_image_config = manifest
                .pointer("/config/mediaType")
                .and_then(Value::as_str)
                .is_none_or(|t| [MT_CONFIG, MT_DOCKER_CONFIG].contains(&t));
            if manifest.get("artifactType").is_some() || !is_image_config {
                seen[i] = format!("{NO_PLATFORM} (an artifact)");
                continue;
            }
            let Some(config_desc) = manifest.get("config") else {
                // Refused by pull, which needs one.
                return Ok(Ok(Chosen {
                    manifest,
                    digest,
                    config: None,
                }));
            };
            let config_digest = digest_of(config_desc, "config descriptor")?;
            let config_size = size_of(config_desc, "config descriptor")?;
            self.look()?;
            let config = small_blob(self.source, config_digest, config_size)?;
            let parsed = parse_json(&config, &format!("image config of {}", self.what))?;
            let chosen = Chosen {
                manifest,
                digest,
                config: Some(config),
            };
            match self.wanted.fit(&parsed) {
                Fit::Best => return Ok(Ok(chosen)),
                Fit::Variant => {
                    self.fallback.get_or_insert(chosen);
                }
                Fit::No => {
                    let field =
                        |name: &str| parsed.get(name).and_then(Value::as_str).unwrap_or("?");
                    let platform = format!("{}/{}", field("os"), field("architecture"));
                    seen[i] = format!("{NO_PLATFORM} (a manifest for {})", clipped(&platform));
                }
            }
        }
        Ok(Err(seen))
    }
}

/// The most distinct entries [`listed`] names.
const MAX_LISTED: usize = 16;

/// What an index has, for a message: each distinct entry once, in order
/// (`×N` when N entries are alike), at most [`MAX_LISTED`] of them, then
/// how many more (audit: 150,000 entries made one 33 MB line).
fn listed(seen: &[String]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut counts = std::collections::HashMap::new();
    for s in seen {
        *counts.entry(s.as_str()).or_insert_with(|| {
            order.push(s);
            0
        }) += 1;
    }
    if order.is_empty() {
        return "none".to_string();
    }
    let mut out: Vec<String> = order
        .iter()
        .take(MAX_LISTED)
        .map(|s| match counts[s] {
            1 => s.to_string(),
            n => format!("{s} ×{n}"),
        })
        .collect();
    if order.len() > MAX_LISTED {
        out.push(format!("… and {} more", order.len() - MAX_LISTED));
    }
    out.join(", ")
}

/// The image manifest `top` (digest `digest`) is, or, when it is an image
/// index, the one it has for linux and the host's architecture (see
/// [`Walk`]); `not_found` listing what it has when there is none.
fn choose_manifest(source: &mut dyn Source, top: Value, digest: String) -> Result<Chosen> {
    if !is_index(&top) {
        return Ok(Chosen {
            manifest: top,
            digest,
            config: None,
        });
    }
    let what = source.describe();
    let mut walk = Walk {
        source,
        what,
        wanted: Wanted::host(),
        looked_at: 0,
        fallback: None,
    };
    match walk.index(&top, 1)? {
        Ok(chosen) => Ok(chosen),
        Err(seen) => walk.fallback.ok_or_else(|| {
            Error::not_found(format!(
                "{} has no image for linux/{} (it has: {})",
                walk.what,
                walk.wanted.arch,
                listed(&seen)
            ))
        }),
    }
}

/// How many image indexes [`pull`] follows, one inside the other (as
/// containerd follows them): a content-addressed chain cannot loop, but it
/// is kept short.
const MAX_INDEX_DEPTH: usize = 8;

/// Refuses a manifest or index whose descriptor `entry` gives another size
/// than the `len` bytes fetched (no size: not checked). The digest proves
/// the content; the size must agree with it, as for layers and configs.
pub(crate) fn check_size(entry: &Value, len: usize, what: &str) -> Result<()> {
    let size = size_of(entry, "manifest descriptor")?;
    if size != 0 && size != len as u64 {
        return Err(Error::invalid(format!(
            "{what}: a manifest is {len} bytes, but its descriptor says {size}"
        )));
    }
    Ok(())
}

/// The most bytes a manifest, an index or an image config may have.
pub(crate) const MAX_SMALL_BLOB: u64 = 64 << 20;

/// Reads a small blob (a config) fully and verifies its digest.
fn small_blob(source: &mut dyn Source, digest: &str, size: u64) -> Result<Vec<u8>> {
    let too_large = || Error::invalid(format!("the image config {digest} is too large"));
    if size > MAX_SMALL_BLOB {
        return Err(too_large());
    }
    // Without a size, the most a config may have; one byte more tells.
    let limit = if size == 0 { MAX_SMALL_BLOB } else { size };
    let f = source.blob(digest, limit, &ProgressBar::hidden())?;
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("cannot read blob {digest}"), e))?;
    if bytes.len() as u64 > MAX_SMALL_BLOB {
        return Err(too_large());
    }
    size_matches(&source.describe(), digest, size, bytes.len() as u64)?;
    let got = sha256(&bytes);
    if got != digest {
        return Err(digest_mismatch(&source.describe(), digest, &got));
    }
    Ok(bytes)
}

/// A blob must be exactly the size its descriptor gives (OCI image spec).
/// A descriptor without a size (read as 0) is not checked, as containerd
/// does not check one.
fn size_matches(what: &str, digest: &str, want: u64, got: u64) -> Result<()> {
    if got == want || want == 0 {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "blob {digest} of {what} is {got} bytes, but its descriptor says {want}"
    ))
    .with_hint(NOTHING_COMMITTED))
}

/// The hint of a pull or import refused before any of the image was
/// committed.
pub(crate) const NOTHING_COMMITTED: &str =
    "nothing was committed from it; fix the registry or layout and pull again";

fn digest_mismatch(what: &str, want: &str, got: &str) -> Error {
    corrupt_blob(what, want, &format!("has digest {got}"))
}

/// The manifest (or index) `want` of `what`, fetched by that digest, has
/// digest `got` instead.
pub(crate) fn manifest_mismatch(what: &str, want: &str, got: &str) -> Error {
    Error::invalid(format!(
        "manifest {want} of {what} has digest {got}: it is corrupt or was tampered with"
    ))
    .with_hint(NOTHING_COMMITTED)
}

/// Blob `want` of `what` is not what its digest says (`how`).
pub(crate) fn corrupt_blob(what: &str, want: &str, how: &str) -> Error {
    Error::invalid(format!(
        "blob {want} of {what} {how}: it is corrupt or was tampered with"
    ))
    .with_hint(NOTHING_COMMITTED)
}

/// Verifies a file's size and sha256 against its descriptor's, then
/// rewinds it.
fn verify_file(f: &mut File, want: &str, size: u64, what: &str) -> Result<()> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    f.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("cannot read a downloaded blob", e))?;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read a downloaded blob", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        read += n as u64;
        if size > 0 && read > size {
            // Larger than its descriptor: no need to read the rest.
            break;
        }
    }
    size_matches(what, want, size, read)?;
    let got = format!("sha256:{}", hex::encode(h.finalize()));
    if got != want {
        return Err(digest_mismatch(what, want, &got));
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("cannot read a downloaded blob", e))?;
    Ok(())
}

fn string_of<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid(format!("the {what} has no `{key}`")))
}

/// The hex of `digest` when it is a sha256 digest as the OCI image spec
/// writes one (`sha256:` and 64 lowercase hex digits), else `invalid`.
/// Every digest an image or layout names is checked with it before use: as
/// a path, in a URL, in a message, or as a chain ID (a snapshot key).
pub(crate) fn sha256_hex<'a>(digest: &'a str, what: &str) -> Result<&'a str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| {
            Error::invalid(format!(
                "{what} `{}` is not a sha256 digest",
                clipped(digest)
            ))
        })
}

/// Text an image, a layout or a registry chose, cut to at most 200
/// characters for a message (the printer escapes control characters).
pub(crate) fn clipped(text: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]).into(),
        None => text.into(),
    }
}

/// The size a descriptor gives: 0 when it gives none (not checked then, as
/// in containerd); `invalid` when it is not a whole number of bytes.
fn size_of(v: &Value, what: &str) -> Result<u64> {
    match v.get("size") {
        None => Ok(0),
        Some(size) => size.as_u64().ok_or_else(|| {
            Error::invalid(format!(
                "the {what}'s size {} is not a number of bytes",
                clipped(&size.to_string())
            ))
        }),
    }
}

/// The digest named by `key` in descriptor `v`, checked (see [`sha256_hex`]).
fn digest_of<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    let digest = string_of(v, "digest", what)?;
    sha256_hex(digest, &format!("the {what}'s digest"))?;
    Ok(digest)
}

/// Fetches the image `source` names into the store: layers as chain-ID
/// snapshots (only the missing ones are downloaded), then the alias `name`.
pub fn pull(
    store: &mut Store,
    source: &mut dyn Source,
    name: &str,
    reference: &str,
    printer: &Printer,
) -> Result<Pulled> {
    validate_image_name(name)?;
    let what = source.describe();
    let (bytes, digest) = source.manifest(None)?;
    let named = digest.clone();
    let top = parse_json(&bytes, &format!("manifest of {what}"))?;
    let Chosen {
        manifest,
        digest,
        config,
    } = choose_manifest(source, top, digest)?;
    let config_desc = manifest
        .get("config")
        .ok_or_else(|| Error::invalid(format!("the manifest of {what} has no config")))?;
    let config = match config {
        Some(config) => config,
        None => {
            let config_digest = digest_of(config_desc, "config descriptor")?;
            let config_size = size_of(config_desc, "config descriptor")?;
            small_blob(source, config_digest, config_size)?
        }
    };
    let config = parse_json(&config, &format!("image config of {what}"))?;
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let descs = manifest
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if descs.len() != diff_ids.len() {
        return Err(Error::invalid(format!(
            "{what}: the manifest lists {} layers but the config {} diff_ids",
            descs.len(),
            diff_ids.len()
        )));
    }
    // diff_ids become chain IDs, which are snapshot keys: anything but a
    // digest could name (and then build on, label and pin) a snapshot of
    // the store's own.
    for d in &diff_ids {
        sha256_hex(d, &format!("a diff_id in the image config of {what}"))?;
    }
    let chain = chain_ids(&diff_ids);
    // Conflicts are found before a layer is downloaded; each layer is
    // looked at again below, since other processes change the store.
    for (i, chain_id) in chain.iter().enumerate() {
        let below = i.checked_sub(1).map(|b| chain[b].as_str());
        existing_layer(store, chain_id, below)?;
    }
    alias_plan(store, name, chain.last().map(String::as_str))?;
    let mut layers = Vec::with_capacity(descs.len());
    let mut parent: Option<String> = None;
    for (i, desc) in descs.iter().enumerate() {
        let chain_id = &chain[i];
        let blob_digest = digest_of(desc, "layer descriptor")?.to_string();
        let media_type = desc
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(MT_LAYER_GZIP);
        let compression = compression_of(media_type)?;
        let size = size_of(desc, "layer descriptor")?;
        let found = existing_layer(store, chain_id, parent.as_deref())?;
        let present = found.is_some();
        let mut labels = found.unwrap_or_default();
        if !present {
            let bar = printer.progress(
                &format!(
                    "downloading layer {}/{} ({})",
                    i + 1,
                    descs.len(),
                    short(&blob_digest)
                ),
                Unit::Bytes,
                Some(size),
            );
            let f = source.blob(&blob_digest, size, &bar);
            bar.finish_and_clear();
            let mut f = f?;
            verify_file(&mut f, &blob_digest, size, &what)?;
            let bar = printer.progress(
                &format!("applying layer {}/{}", i + 1, descs.len()),
                Unit::Bytes,
                Some(size),
            );
            let mut input = std::io::BufReader::with_capacity(1 << 20, f);
            // Checked before the commit: a wrong layer must never sit
            // under the chain ID of the right one, not even for a moment
            // (a kill, or another pull finding it there).
            let checks = ApplyChecks {
                expect: Some(Expected {
                    digest: blob_digest.clone(),
                    diff_id: diff_ids[i].clone(),
                }),
                ..ApplyChecks::default()
            };
            let applied = store.apply(
                chain_id,
                parent.as_deref(),
                &Labels::new(),
                &mut input,
                checks,
                &mut |n| bar.set_position(n),
            );
            bar.finish_and_clear();
            match applied {
                Ok(d) => {
                    crate::store::crash::point("pull:applied");
                    store
                        .remember_digests(
                            chain_id,
                            compression,
                            None,
                            &Digests {
                                digest: blob_digest.clone(),
                                diff_id: d.diff_id.clone(),
                                compression: compression.as_str(),
                                size: d.size,
                            },
                        )
                        .map_err(removed_meanwhile)?;
                }
                // Another process made the chain ID meanwhile: a pull
                // of the same layer, or not (an alias, a layer by hand).
                Err(e) if e.kind() == Kind::AlreadyExists => {
                    labels = existing_layer(store, chain_id, parent.as_deref())?.ok_or(e)?;
                }
                // The layer below, there a moment ago, was removed.
                Err(e) if parent.is_some() => return Err(removed_meanwhile(e)),
                Err(e) => return Err(e),
            }
        }
        if let Some(location) = source.location() {
            remember_location(store, chain_id, &labels, &location, &blob_digest)
                .map_err(removed_meanwhile)?;
        }
        layers.push(PulledLayer {
            chain_id: chain_id.clone(),
            digest: blob_digest,
            downloaded: !present,
        });
        parent = Some(chain_id.clone());
    }
    // An image with no layers (the image spec allows it; `umoci new` makes
    // one) is an alias with no parent: an empty root.
    make_alias(store, name, parent.as_deref(), reference, &named)?;
    Ok(Pulled {
        reference: reference.to_string(),
        digest: named,
        manifest: digest,
        name: name.to_string(),
        layers,
    })
}

/// Refuses an image NAME that has the form of a chain ID (`sha256:` and 64
/// hex digits), besides what a key may not be: such a name is a layer's
/// key to any later pull of an image with that layer, which would take the
/// alias for the layer (audit: its files were missing from the image).
pub fn validate_image_name(name: &str) -> Result<()> {
    crate::store::key::validate_key(name)?;
    // Lowercase only, as chain IDs are spelled: `sha256:` and uppercase
    // hex can never be one (review).
    let hex = name.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::invalid(format!(
            "`{name}` has the form of a layer's chain ID, which names that layer's snapshot: it cannot name an image"
        ))
        .with_hint("give the image another NAME, the command's last argument"));
    }
    Ok(())
}

/// The labels of the layer snapshot `chain_id` on `parent`, or `None` when
/// there is none yet; `already_exists` when the key holds something else.
fn existing_layer(
    store: &mut Store,
    chain_id: &str,
    parent: Option<&str>,
) -> Result<Option<Labels>> {
    let info = match store.stat(chain_id) {
        Ok(info) => info,
        Err(e) if e.kind() == Kind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let named = |p: Option<&str>| p.map_or("no parent".to_string(), |p| format!("`{p}`"));
    if info.kind != SnapshotKind::Committed {
        return Err(Error::already_exists(format!(
            "`{chain_id}` exists but is not a committed layer"
        )));
    }
    // An alias has no files of its own: taken for the layer, it would
    // leave the layer's files out of the image.
    if is_alias(&info.labels) {
        return Err(Error::already_exists(format!(
            "`{chain_id}` is an image's name, not a layer"
        ))
        .with_hint(format!(
            "remove that name (strata rm {chain_id}; the layers of its image stay) and pull again"
        )));
    }
    // A chain ID names its parents' too: a layer under it on another
    // parent is not this one (made by hand, say), and building on it would
    // give the image a wrong tree.
    if info.parent.as_deref() != parent {
        return Err(Error::already_exists(format!(
            "`{chain_id}` exists on {} but the image has it on {}",
            named(info.parent.as_deref()),
            named(parent),
        ))
        .with_hint(format!(
            "remove it (strata rm -r {chain_id}) and pull again"
        )));
    }
    Ok(Some(info.labels))
}

/// How many times a pull looks again at a NAME other processes change.
const ALIAS_ROUNDS: usize = 4;

/// What pulling an image under `name` does to it.
enum AliasPlan {
    /// `name` is free: it is made.
    Create,
    /// `name` is already this image's alias: its labels are refreshed.
    Refresh,
    /// `name` is an alias of another image: it is replaced.
    Replace,
}

/// What `name` holds, and so what a pull with top layer `top` would do to
/// it; `already_exists` when it is not an alias of strata's, which a pull
/// never replaces. Asked before any layer is downloaded (audit: a whole
/// image was downloaded and committed, then refused), and again at the end.
fn alias_plan(store: &mut Store, name: &str, top: Option<&str>) -> Result<AliasPlan> {
    match store.stat(name) {
        Err(e) if e.kind() == Kind::NotFound => Ok(AliasPlan::Create),
        Err(e) => Err(e),
        Ok(info) if info.kind != SnapshotKind::Committed || !is_alias(&info.labels) => {
            // Said of `pull` and `import` alike, which both come here.
            Err(Error::already_exists(format!(
                "`{name}` exists and is not an image pulled or imported by strata"
            ))
            .with_hint("give the image another NAME, the command's last argument"))
        }
        Ok(info) if info.parent.as_deref() == top => Ok(AliasPlan::Refresh),
        // Refused here, before any layer is downloaded; the removal that
        // replaces it refuses it too when something is built on it later.
        // Gone meanwhile (another pull replaced it): replacing finds it
        // gone too, and `make_alias` looks again.
        Ok(_) if has_children_if_there(store, name)? => Err(built_on(name)),
        Ok(_) => Ok(AliasPlan::Replace),
    }
}

/// Whether snapshot `name` has children; false when it is gone.
fn has_children_if_there(store: &mut Store, name: &str) -> Result<bool> {
    match store.has_children(name) {
        Err(e) if e.kind() == Kind::NotFound => Ok(false),
        other => other,
    }
}

/// The alias `name` of another image cannot be replaced: snapshots are
/// built on it.
fn built_on(name: &str) -> Error {
    Error::already_exists(format!(
        "`{name}` names another image and has snapshots built on it"
    ))
    .with_hint("give another NAME, or remove what is built on it")
}

/// Makes `name` an empty committed snapshot on `top` (or a root, for an
/// image with no layers) labelled with the image's reference and digest,
/// as [`alias_plan`] says. Another pull may move the same name meanwhile:
/// each round looks again, so the last pull to finish names its image, as
/// one pull after the other would (audit: the loser of such a race failed
/// with a bare "already exists").
fn make_alias(
    store: &mut Store,
    name: &str,
    top: Option<&str>,
    reference: &str,
    digest: &str,
) -> Result<()> {
    let mut labels = Labels::new();
    labels.insert(LABEL_REF.to_string(), reference.to_string());
    labels.insert(LABEL_DIGEST.to_string(), digest.to_string());
    let gone = |e: &Error| e.kind() == Kind::NotFound;
    for _ in 0..ALIAS_ROUNDS {
        match alias_plan(store, name, top)? {
            AliasPlan::Create => {}
            AliasPlan::Refresh => match store.update_labels(name, &labels) {
                Err(e) if gone(&e) => continue,
                done => return done.map(drop),
            },
            AliasPlan::Replace => match store.remove(name, false, false) {
                Err(e) if e.kind() == Kind::FailedPrecondition => return Err(built_on(name)),
                Err(e) if !gone(&e) => return Err(e),
                _ => {}
            },
        }
        crate::store::crash::point("pull:alias-planned");
        // An empty layer: just the end-of-archive blocks.
        let empty = [0u8; 1024];
        match store.apply(
            name,
            top,
            &labels,
            &mut &empty[..],
            ApplyChecks::default(),
            &mut |_| {},
        ) {
            Err(e) if e.kind() == Kind::AlreadyExists => continue,
            done => return done.map(drop),
        }
    }
    Err(Error::already_exists(format!(
        "`{name}` was changed by other processes each time it was to be made"
    ))
    .with_hint("pull again once the other pulls are done"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Platforms as other tools than Go's spell them fit as containerd's
    /// `platforms.Normalize` reads them (review: `x86_64` fitted nothing).
    #[test]
    fn platforms_fit_as_containerd_normalizes_them() {
        let amd64 = Wanted {
            arch: "amd64",
            baseline: "v1",
        };
        let arm64 = Wanted {
            arch: "arm64",
            baseline: "v8",
        };
        let fit = |wanted: &Wanted, os: &str, arch: &str, variant: &str| {
            let mut p = json!({"os": os, "architecture": arch});
            if !variant.is_empty() {
                p["variant"] = variant.into();
            }
            wanted.fit(&p)
        };
        for (os, arch) in [("linux", "amd64"), ("linux", "x86_64"), ("Linux", "X86_64")] {
            assert!(
                matches!(fit(&amd64, os, arch, ""), Fit::Best),
                "{os}/{arch}"
            );
        }
        assert!(matches!(fit(&amd64, "linux", "x86-64", "v1"), Fit::Best));
        assert!(matches!(fit(&amd64, "linux", "amd64", "v3"), Fit::Variant));
        assert!(matches!(fit(&amd64, "windows", "amd64", ""), Fit::No));
        assert!(matches!(fit(&amd64, "linux", "arm64", ""), Fit::No));
        for variant in ["", "v8", "8"] {
            assert!(
                matches!(fit(&arm64, "linux", "aarch64", variant), Fit::Best),
                "{variant}"
            );
        }
        assert!(matches!(fit(&arm64, "linux", "arm64", "v9"), Fit::Variant));
        assert!(matches!(fit(&arm64, "linux", "arm", "v7"), Fit::No));
    }

    /// Only what could be a chain ID is refused as an image's NAME:
    /// `sha256:` and 64 lowercase hex digits (review: uppercase too).
    #[test]
    fn an_image_name_is_refused_only_in_a_chain_ids_form() {
        let lower = format!("sha256:{}", "ab".repeat(32));
        let err = validate_image_name(&lower).expect_err("a chain ID's form");
        assert_eq!(err.kind(), Kind::Invalid);
        for name in [
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha256:{}", "ab".repeat(31)),
            format!("sha512:{}", "ab".repeat(32)),
            "sha256".to_string(),
        ] {
            assert!(validate_image_name(&name).is_ok(), "{name}");
        }
    }
}
