//! OCI image layers in and out of the store: `apply` unpacks a layer
//! tarball into a new committed snapshot, `diff` writes a snapshot's changes
//! as one.

use super::error::{Error, IoContext, Result};
use super::index::{self, SnapshotKind};
use super::layer::{
    self, ApplyOptions, Changes, Compression, Digests, LayerError, Unfit, Whiteouts,
};
use super::layout::NotATree;
use super::{Driver, Labels, Store, crash, mount};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What `apply` checks before it commits.
#[derive(Debug, Clone)]
pub struct ApplyChecks {
    /// Most uncompressed bytes a layer may expand to (decompression bombs).
    pub max_size: u64,
    /// The digests an image names for the layer: it is committed only if it
    /// is that layer, so no other content ever sits under its chain ID.
    pub expect: Option<Expected>,
}

/// A layer's digests as an image names them: the blob's (manifest) and the
/// uncompressed tar's (config's `rootfs.diff_ids`).
#[derive(Debug, Clone)]
pub struct Expected {
    pub digest: String,
    pub diff_id: String,
}

impl Default for ApplyChecks {
    fn default() -> Self {
        ApplyChecks {
            max_size: 64 << 30,
            expect: None,
        }
    }
}

/// An `invalid` error unless `d` are the digests `want` names.
fn as_expected(name: &str, d: &Digests, want: &Expected) -> Result<()> {
    if d.digest == want.digest && d.diff_id == want.diff_id {
        return Ok(());
    }
    let (what, got, named) = if d.digest != want.digest {
        ("digest", &d.digest, &want.digest)
    } else {
        ("diff_id", &d.diff_id, &want.diff_id)
    };
    Err(Error::invalid(format!(
        "layer `{name}` has {what} {got}, but the image names {named}"
    ))
    .with_hint("nothing was committed from it"))
}

fn layer_error(name: &str, e: LayerError) -> Error {
    match e {
        LayerError::Invalid(msg) => Error::invalid(format!("cannot apply `{name}`: {msg}")),
        // Only writing a layer finds these.
        e @ LayerError::Reserved { .. } => Error::invalid(format!("cannot apply `{name}`: {e}")),
        LayerError::Precondition(msg) => {
            Error::precondition(format!("cannot apply `{name}`: {msg}"))
        }
        LayerError::Io { what, source } => {
            Error::io(format!("cannot apply `{name}`: {what}"), source)
        }
    }
}

impl Store {
    /// Unpacks the layer read from `input` (plain, gzip or zstd, detected)
    /// onto committed `parent` and commits it as `name`, atomically: `name`
    /// exists only when everything is unpacked. `progress` gets the bytes
    /// read so far.
    pub fn apply(
        &mut self,
        name: &str,
        parent: Option<&str>,
        labels: &Labels,
        input: &mut (dyn Read + Send),
        checks: ApplyChecks,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Digests> {
        let driver = self.ensure_driver()?;
        let in_userns = mount::in_user_namespace();
        let allow_devices = rustix::process::geteuid().is_root() && !in_userns;
        let mut digests = None;
        self.make(
            SnapshotKind::Committed,
            name,
            parent,
            labels,
            &mut |tree, lowers| {
                let options = ApplyOptions {
                    whiteouts: match driver {
                        Driver::Overlay => Whiteouts::Overlay {
                            user_xattr: in_userns,
                            lowers: lowers.to_vec(),
                        },
                        Driver::Native => Whiteouts::Delete,
                    },
                    max_size: checks.max_size,
                    allow_devices,
                };
                let d = layer::apply(input, tree, &options, progress)
                    .map_err(|e| layer_error(name, e))?;
                if let Some(want) = &checks.expect {
                    as_expected(name, &d, want)?;
                }
                crash::point("apply:unpacked");
                digests = Some(d);
                Ok(())
            },
        )?;
        digests.ok_or_else(|| Error::internal(format!("applying `{name}` produced no digest")))
    }

    /// Whether [`Store::diff`] of `key` against `base` mounts the trees it
    /// compares: on the overlay driver, against a snapshot other than
    /// `key`'s parent. Unknown snapshots say yes: the diff will say what is
    /// wrong with them.
    pub fn diff_mounts(&mut self, key: &str, base: &str) -> bool {
        let Ok(Some(Driver::Overlay)) = self.driver() else {
            return false;
        };
        let Ok(tx) = self.index.read() else {
            return true;
        };
        match (index::find(&tx, key), index::find(&tx, base)) {
            (Ok(Some(row)), Ok(Some(b))) => {
                compares_mounted(Driver::Overlay, row.parent_id, Some(b.id))
            }
            _ => true,
        }
    }

    /// Writes the changes of `key` (active or committed) against its parent,
    /// or against committed `base`, as a layer tarball to `out`.
    pub fn diff(
        &mut self,
        key: &str,
        base: Option<&str>,
        out: &mut dyn Write,
        compression: Compression,
        source_date_epoch: Option<i64>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Diffed> {
        // Writing the layer is the long step: it stops at a caught Ctrl-C,
        // and the output file goes with the error.
        super::interrupt::catch();
        let driver = self.driver()?.unwrap_or(Driver::Native);
        let (row, base_row, chain, base_chain) = {
            let tx = self.index.read()?;
            let row = super::existing(&tx, key)?;
            if row.kind == SnapshotKind::View {
                return Err(Error::precondition(format!(
                    "snapshot `{key}` is a view: it has no changes of its own"
                ))
                .with_hint("diff the committed snapshot it views instead"));
            }
            let base_row = match base {
                Some(b) => Some(super::committed_parent(&tx, b)?),
                None => None,
            };
            let chain: Vec<i64> = index::chain_ids(&tx, row.id)?;
            let base_chain = index::layers_on(&tx, base_row.as_ref().map(|b| b.id))?;
            (row, base_row, chain, base_chain)
        };
        crash::point("diff:read");
        let mounted = compares_mounted(driver, row.parent_id, base_row.as_ref().map(|b| b.id));
        let write = |changes: Changes<'_>, out: &mut dyn Write, progress: &mut dyn FnMut(u64)| {
            layer::write(changes, out, compression, source_date_epoch, progress).map_err(
                |e| match e {
                    LayerError::Invalid(msg) => {
                        Error::invalid(format!("cannot diff `{key}`: {msg}"))
                    }
                    LayerError::Reserved { unfit, .. } => {
                        // A committed snapshot cannot be changed: its
                        // changes must be made again (review).
                        let hint = match (unfit, row.kind) {
                            (Unfit::Deleted, _) => {
                                "the snapshot that has the file cannot go into a layer either; \
                                 rename such files in the active snapshot before committing it"
                            }
                            (Unfit::Named, SnapshotKind::Active) => {
                                "rename it in the active snapshot before committing it"
                            }
                            (Unfit::WhiteoutDevice, SnapshotKind::Active) => {
                                "remove it in the active snapshot before committing it"
                            }
                            (Unfit::WhiteoutDevice, _) => {
                                "a committed snapshot cannot change: prepare an active on its \
                                 parent, make the change again without that device, and commit \
                                 that"
                            }
                            (_, _) => {
                                "a committed snapshot cannot change: prepare an active on its \
                                 parent, make the change again without such names, and commit that"
                            }
                        };
                        Error::invalid(format!("cannot diff `{key}`: {e}")).with_hint(hint)
                    }
                    LayerError::Precondition(msg) => {
                        Error::precondition(format!("cannot diff `{key}`: {msg}")).with_hint(
                            "strata's own mounts never turn metacopy or redirect_dir on; \
                             mount snapshots by hand without them",
                        )
                    }
                    LayerError::Io { what, source } => match NotATree::of(&source) {
                        Some(tree) => super::not_a_tree(format!("cannot diff `{key}`"), tree),
                        None => Error::io(format!("cannot diff `{key}`: {what}"), source),
                    },
                },
            )
        };
        // The layers the walk reads: the upper directory alone, the two
        // native trees, or both overlay chains, mounted read-only.
        let old_id = base_row.as_ref().map(|b| b.id).or(row.parent_id);
        let mut new_layers = vec![row.id];
        let read: Vec<i64> = match driver {
            Driver::Overlay if !mounted => vec![row.id],
            Driver::Native => std::iter::once(row.id).chain(old_id).collect(),
            Driver::Overlay => {
                new_layers.extend(&chain);
                // Every layer a lower: past overlayfs's limit the kernel
                // says only EINVAL (audit: `internal`, "Invalid argument").
                let base_key = base.unwrap_or_default();
                for (what, layers) in [(key, new_layers.len()), (base_key, base_chain.len())] {
                    if driver.check_depth(layers).is_err() {
                        return Err(Error::unsupported(format!(
                            "cannot diff `{key}` against `{base_key}`: `{what}` has {layers} layers to mount, more than the {} lower layers overlayfs can stack",
                            super::driver::OVERLAY_MAX_LOWER
                        ))
                        .with_hint("diff each layer against its own parent (no mount needed), or use a store with the native driver"));
                    }
                }
                new_layers.iter().chain(&base_chain).copied().collect()
            }
        };
        // They must be the store's own directories: the walk and the kernel
        // would follow a symlink in their place.
        if let Some(tree) = self.bad_tree(read) {
            return Err(super::not_a_tree(format!("cannot diff `{key}`"), &tree));
        }
        let written = match driver {
            // The upper directory is exactly the change against the parent:
            // cost proportional to the change, not to the tree.
            Driver::Overlay if !mounted => {
                write(Changes::Upper(&self.layout.fs(row.id)), out, progress)
            }
            // Every native layer is a whole tree.
            Driver::Native => {
                let new = self.layout.fs(row.id);
                let old = old_id.map(|id| self.layout.fs(id));
                write(
                    Changes::Compare {
                        old: old.as_deref(),
                        new: &new,
                    },
                    out,
                    progress,
                )
            }
            // Two overlay chains: compare their merged trees.
            Driver::Overlay => {
                let new = self.merged(&new_layers)?;
                let old = self.merged(&base_chain)?;
                crash::point("diff:merged");
                write(
                    Changes::Compare {
                        old: Some(old.path()),
                        new: new.path(),
                    },
                    out,
                    progress,
                )
            }
        };
        // Reading takes no lock: an `rm` may delete the tree under the walk.
        let digests = written.map_err(|e| {
            let mut read = vec![(row.id, key)];
            read.extend(base_row.as_ref().zip(base).map(|(b, name)| (b.id, name)));
            self.removed_meanwhile(&read).unwrap_or(e)
        })?;
        Ok(Diffed {
            digests,
            against: base_row.map(|b| b.name).or(row.parent),
        })
    }

    /// A `not_found` error if one of the snapshots `read` (id, name) is
    /// gone from the index.
    fn removed_meanwhile(&mut self, read: &[(i64, &str)]) -> Option<Error> {
        let tx = self.index.read().ok()?;
        read.iter()
            .find_map(|(id, name)| match index::find_id(&tx, *id) {
                Ok(None) => Some(Error::not_found(format!(
                    "snapshot `{name}` was removed by another process while it was read"
                ))),
                _ => None,
            })
    }

    /// Mounts layers `ids` (nearest first) read-only in a scratch directory.
    fn merged(&self, ids: &[i64]) -> Result<Merged> {
        let staging = self
            .layout
            .staging()
            .ctx(|| "cannot create a scratch directory".into())?;
        let target = staging.path().join("merged");
        std::fs::create_dir(&target).ctx(|| "cannot create a scratch directory".into())?;
        // A read-only view of the chain, as the overlay driver mounts one.
        let layers: Vec<PathBuf> = ids.iter().map(|id| self.layout.fs(*id)).collect();
        let mounts = Driver::Overlay.mounts(SnapshotKind::View, staging.path(), &layers, &[]);
        mount::private_namespace();
        mount::mount_all(&mounts, &target).map_err(|e| match mount::errno(&e) {
            // As `strata mount` says them (review: the new mount API's
            // errors carry no raw errno, and EPERM came out `internal`).
            Some(libc::EPERM | libc::EACCES | libc::ENODEV) => {
                Error::unsupported("cannot mount the trees to compare")
                    .with_hint(
                        "a diff against another parent on the overlay driver needs mount privilege",
                    )
                    .with_source(e)
            }
            // Out of descriptors, memory…: said as it is (audit: EMFILE
            // was "needs mount privilege", exit 7).
            _ => Error::io("cannot mount the trees to compare", e),
        })?;
        Ok(Merged {
            _staging: staging,
            target,
        })
    }
}

/// A read-only merged tree, unmounted (and its scratch directory removed)
/// when dropped.
struct Merged {
    _staging: super::layout::Staging,
    target: PathBuf,
}

impl Merged {
    fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        let _ = mount::unmount(&self.target, true);
    }
}

/// What [`Store::diff`] wrote: the layer's digests, and the snapshot its
/// changes are against (`None`: a root, against nothing).
#[derive(Debug, Clone)]
pub struct Diffed {
    pub digests: Digests,
    pub against: Option<String>,
}

/// One committed layer of a chain, root first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainLayer {
    pub name: String,
    pub parent: Option<String>,
    pub labels: Labels,
}

impl Store {
    /// The chain ending at committed `key`, root first (`key` last).
    pub fn chain_of(&mut self, key: &str) -> Result<Vec<ChainLayer>> {
        let tx = self.index.read()?;
        let row = super::existing(&tx, key)?;
        if row.kind != SnapshotKind::Committed {
            return Err(Error::precondition(format!(
                "snapshot `{key}` is {}, not committed",
                super::article(row.kind)
            ))
            .with_hint(super::to_commit(row.kind, key)));
        }
        let mut ids = vec![(row.id, row.name.clone())];
        ids.extend(index::chain(&tx, row.id)?);
        ids.reverse();
        let mut out = Vec::with_capacity(ids.len());
        let mut parent: Option<String> = None;
        for (id, name) in ids {
            out.push(ChainLayer {
                name: name.clone(),
                parent: parent.clone(),
                labels: index::labels(&tx, id)?,
            });
            parent = Some(name);
        }
        Ok(out)
    }

    /// Digests of committed `key`'s layer (its diff against its parent)
    /// made with `compression` and `source_date_epoch`, if known.
    pub fn known_digests(
        &mut self,
        key: &str,
        compression: Compression,
        source_date_epoch: Option<i64>,
    ) -> Result<Option<Digests>> {
        let tx = self.index.read()?;
        let row = super::existing(&tx, key)?;
        let variant = variant(compression, source_date_epoch);
        Ok(
            index::layer_digests(&tx, row.id, &variant)?.map(|(digest, diff_id, size)| Digests {
                digest,
                diff_id,
                compression: compression.as_str(),
                size,
            }),
        )
    }

    /// Writes `key`'s layer to `out` and, when `key` is committed, remembers
    /// its digests (see [`Store::remember_digests`]), so later pushes and
    /// exports only check them.
    pub fn layer_blob(
        &mut self,
        key: &str,
        out: &mut dyn Write,
        compression: Compression,
        source_date_epoch: Option<i64>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Digests> {
        let digests = self
            .diff(key, None, out, compression, source_date_epoch, progress)?
            .digests;
        // Remembering them is an optimisation: an index that cannot be
        // written (a read-only store) does not fail an export or a push
        // that only reads it (audit). A snapshot removed meanwhile does.
        match self.remember_digests(key, compression, source_date_epoch, &digests) {
            Err(e) if e.kind() != super::Kind::Internal => return Err(e),
            _ => {}
        }
        Ok(digests)
    }

    /// Records the digests of committed `key`'s layer with these settings:
    /// learnt elsewhere (a pull knows them from the manifest, verified while
    /// applying) or written here. An active snapshot may still change, so
    /// nothing is recorded for one. Digests already known are kept: a
    /// pulled layer's are those of the registry's blob, which a
    /// cross-repository mount can reuse and strata's own writing of the
    /// same tree (another tar, another gzip) would not match (audit: a push
    /// to a second registry replaced them, and a later push back to the
    /// first uploaded the layer again instead of mounting it).
    pub fn remember_digests(
        &mut self,
        key: &str,
        compression: Compression,
        source_date_epoch: Option<i64>,
        digests: &Digests,
    ) -> Result<()> {
        let tx = self.index.write()?;
        let row = super::existing(&tx, key)?;
        if row.kind != SnapshotKind::Committed {
            return Ok(());
        }
        let v = variant(compression, source_date_epoch);
        index::set_layer_digests(
            &tx,
            row.id,
            &v,
            &digests.digest,
            &digests.diff_id,
            digests.size,
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// Whether a diff of a snapshot with parent `parent_id` against `base_id`
/// compares two mounted trees: on the overlay driver, against another
/// snapshot than its parent (against its parent, its upper directory is
/// the change).
fn compares_mounted(driver: Driver, parent_id: Option<i64>, base_id: Option<i64>) -> bool {
    driver == Driver::Overlay && base_id.is_some_and(|b| Some(b) != parent_id)
}

fn variant(compression: Compression, source_date_epoch: Option<i64>) -> String {
    match source_date_epoch {
        Some(t) => format!("{}@{t}", compression.as_str()),
        None => compression.as_str().to_string(),
    }
}
