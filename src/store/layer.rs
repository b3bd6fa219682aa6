//! OCI image-layer tarballs in and out.
//!
//! [`apply`] unpacks a layer (plain, gzip or zstd tar, detected from its
//! first bytes) into a snapshot directory; [`write`] produces one from an
//! overlay upper directory or from the comparison of two full trees. The
//! format is the one docker, containerd, buildah, umoci and skopeo use: a tar
//! stream where `DIR/.wh.NAME` deletes `DIR/NAME` of the layers below and
//! `DIR/.wh..wh..opq` hides everything below in `DIR`.
//!
//! # Reading: decisions
//!
//! * The tar stream is parsed here, block by block; the `tar` crate only
//!   decodes header fields. This keeps PAX records length-delimited (a
//!   binary `security.capability` value may contain newlines), bounds the
//!   memory spent on extension headers (GNU long names 1 MiB, PAX 16 MiB),
//!   and follows Go's `archive/tar` (which produced nearly every layer in
//!   existence) where parsers differ: PAX `path`/`linkpath` win over GNU
//!   long names, a `\0` type with a trailing `/` is a directory.
//! * Refused as [`LayerError::Invalid`], naming the entry: bad checksums,
//!   short reads, a stream that ends without its end-of-archive block (a
//!   plain tar cut on a block boundary), anything but zeros after that
//!   block, decompression errors, unknown entry types,
//!   data attached to header-only entries (directories, links, devices,
//!   FIFOs: Go ignores such sizes while GNU tar skips the data, so they
//!   would be read differently), more uncompressed bytes than
//!   `max_size`, `..` components, names with a NUL, symlinks or non-
//!   directories in a parent position (of this layer or of the layers
//!   below; but see whiteouts under this layer's own non-directories),
//!   hardlinks that do not point to an earlier entry of the same layer, and
//!   device nodes unless allowed.
//! * Absolute names and `./` prefixes are taken relative to `dest`, as
//!   containerd does (`/etc/passwd` and `./etc/passwd` are `etc/passwd`);
//!   `..` is refused rather than cleaned, even where it would stay inside.
//! * Every path is resolved from a directory descriptor of `dest` with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and created with the
//!   `*at` calls relative to its parent's descriptor, so nothing can be
//!   written outside `dest` whatever the archive holds. A layer whose
//!   entry's path goes through a symlink or a non-directory of a lower
//!   layer (`lib/x` over `lib -> usr/lib`, `f/.wh..wh..opq` over a file
//!   `f`) is refused alike on both drivers, with the same message: native
//!   meets it in its full tree, overlay in the layers below, which it reads
//!   for that (containerd's overlay applier cannot see them and makes a
//!   directory `lib` in the upper, hiding the link). A lower entry that a
//!   nearer layer whites out, or that this layer replaces or whites out
//!   first, is no obstacle.
//! * A whiteout or opaque marker under a path that this layer already made
//!   a non-directory is ignored, on both drivers. umoci writes a directory
//!   replaced by a symlink or a file as the new entry followed by whiteouts
//!   of the old directory's children (`d -> e`, then `d/.wh.x`): what the
//!   layers below had under `d` is hidden by the new entry already, so
//!   there is nothing left to delete, and the path is never followed (no
//!   `e/x` is deleted through `d -> e`). Any other entry through such a
//!   path is still refused.
//! * Entries for the root directory itself (`./`) are ignored, as in
//!   containerd; [`write`] never emits one.
//! * GNU sparse files, in the four ways GNU tar writes them (see
//!   [`sparse`]), are written with their holes left holes; [`write`]
//!   writes every file in full, holes as zeros, as docker does.
//! * A hardlink must point to an earlier entry of the same layer (the only
//!   kind docker/containerd/buildah write). This keeps both drivers
//!   identical: an overlay upper does not contain the parent's files.
//! * Whiteouts only hide what the layers below have (OCI image spec): a
//!   `.wh.X` for a file `X` that this layer itself created is ignored; for
//!   a directory `X` that this layer listed or put entries in, it hides
//!   what the layers below have in `X` and keeps the layer's own (as an
//!   opaque marker would); and an opaque marker keeps the entries this
//!   layer created before it. In an
//!   overlay upper, a directory that replaces a whiteout made by this layer
//!   (a directory entry, or a parent an entry implies) is made opaque,
//!   which is what the pair means; markers under such a whiteout hide
//!   nothing more, as on native where the whiteout deleted the directory.
//! * The overlay driver reads the layers below (the parent chain's upper
//!   directories, nearest first; opened with the same `openat2` rules,
//!   never written) merged as overlayfs merges them: the nearest layer with
//!   an entry at a path decides, a whiteout hides what is under it, an
//!   opaque directory hides the content of the layers under it. A whiteout
//!   is made only where that merged tree has something, an opaque marker
//!   only honoured where it has a directory: overlayfs hides whiteouts only
//!   in directories that merge with one below, so a `.wh.x` in a root
//!   layer or in a directory new in the layer would show as a `c 0,0` file
//!   `x` where the native driver has nothing. A directory of the layers
//!   below that must hold a whiteout or become opaque is made in the
//!   upper (with the nearest lower directory's owner, mode, xattrs and
//!   times, as overlayfs's copy-up; when the layer lists the directory,
//!   its entry sets them); none is made for a marker that hides nothing.
//!   Such a directory that holds nothing of the layer's own goes again when
//!   a later whiteout or opaque marker hides it, and a directory made
//!   opaque loses the whiteouts under it (nothing merges there). The
//!   layers below are looked at only for markers and for directories (never
//!   per file), along the last path looked up; a root layer opens none, and
//!   at most the 64 nearest stay open.
//! * Overlayfs ignores the opaque xattr on an upper's root, so on overlay a
//!   root `.wh..wh..opq` becomes a whiteout for every name the layers below
//!   show in the root, except those this layer made before the marker; of
//!   these, directories that merge with one below are made opaque (native
//!   deletes everything under them that the layer did not make). Later
//!   entries replace those whiteouts as any other of this layer.
//! * `trusted.overlay.*` and `user.overlay.*` xattrs in an archive are never
//!   applied (they steer overlayfs: redirects, metacopy); opaque directories
//!   only come from `.wh..wh..opq` markers. `.wh..wh.*` aufs metadata
//!   entries are skipped.
//! * Metadata order: ownership, then xattrs (chown drops
//!   `security.capability`), then mode (chown clears setuid/setgid), then
//!   times. Directories get all of it after the whole archive is unpacked,
//!   deepest first, so their times are not disturbed by their children and
//!   a read-only directory can still be filled. A directory entry for an
//!   existing directory keeps its contents and replaces its xattrs (except
//!   overlay's own). Missing parent directories are created 0755 root-owned.
//! * A regular file is created 0600 and gets its owner and mode after it is
//!   written, unless `open` already gives it exactly the layer's: the
//!   process's uid and gid (or a setgid directory's group) and a mode the
//!   umask leaves whole, without setuid/setgid/sticky bits, in a directory
//!   with no default ACL. Then the `fchown` and `fchmod` are skipped (two
//!   of the six system calls per small file; checked per directory with
//!   one `fstat` and one `fgetxattr`).
//! * Not running as root, ownership and xattrs that cannot be set (EPERM,
//!   EACCES, ENOTSUP) are skipped, like GNU tar; as root every failure is an
//!   error. An xattr the kernel refuses as malformed or too large (EINVAL,
//!   E2BIG, ERANGE: the layer's value is bad) is `Invalid`, naming the entry
//!   and the xattr; ENOTSUP as root (the file system cannot) stays an I/O
//!   error (`unsupported`), naming the entry too. An xattr no Linux file can
//!   have is `Invalid` before it is set, whoever runs: a namespace other
//!   than `user.`, `trusted.`, `security.` and `system.`, a POSIX ACL that
//!   is not version 2 with 8-byte entries, an ACL on a symlink, a default
//!   ACL on a non-directory (the kernel's ENOTSUP and EACCES would read as
//!   this side's).
//! * atime is the PAX `atime` when present, else the mtime.
//! * One zero block ends the archive (Go wants two; GNU tar pads with more):
//!   what follows must be zeros. The stream is then read to its end, so the
//!   diff_id covers the whole tar and the digest the whole input.
//! * The layer is read (and inflated) on a second thread, 1 MiB chunks at
//!   most four ahead; the unpacking thread parses each chunk in place, the
//!   one copy it makes being the `write` into the new file. SHA-256 runs on
//!   a third thread fed with the chunks once parsed (inline if no thread can
//!   be started; it was a third of the CPU time), which hands them back to
//!   the reading thread to fill again.
//!
//! # Writing: decisions
//!
//! * Plain ustar headers, with a PAX header (named `DIR/PaxHeaders.0/NAME`,
//!   records sorted by key, as Go writes them) only when needed: names over
//!   100 bytes that cannot be split into ustar prefix/name, link targets over
//!   100 bytes, ids over 2097151, sizes of 8 GiB or more, sub-second or
//!   out-of-range mtimes, and xattrs (`SCHILY.xattr.NAME`). No atime, ctime,
//!   user or group names; directories are named with a trailing `/`; the
//!   archive ends with two zero blocks (no padding to a 10 KiB record).
//! * Whiteouts and opaque markers are empty regular files with mode 0, owner
//!   0:0 and mtime 0, so they do not depend on when a file was deleted.
//! * A file, directory or symlink whose name begins with `.wh.` (written
//!   through a mount: `.wh.f`, `d/.wh..wh..opq`) cannot be carried: every
//!   reader, strata's too, takes such an entry for a whiteout and deletes
//!   what it names. Nor can the deletion of one (`.wh..wh.f` is aufs
//!   metadata, which readers skip). Both are [`LayerError::Reserved`],
//!   found once the walk is done and before a byte is written, on both
//!   drivers (an overlay upper's char 0/0 devices are still read as the
//!   whiteouts they are), as Go's writer refuses what a header cannot hold.
//!   So is a char 0/0 device in a tree that is not an overlay upper (the
//!   native driver's): it is overlayfs's whiteout, which readers refuse.
//! * The root directory itself is never emitted (its metadata is not part of
//!   a layer, as with containerd).
//! * `Compare` also emits every parent directory of an emitted entry (with
//!   its metadata in `new`), as containerd does, so that an overlay upper
//!   built from the layer does not get 0755 root-owned stand-ins; and when a
//!   changed file has other hardlinks in `new`, all of them, so the link
//!   survives. Directory sizes are never compared (they depend on history).
//! * `Upper` assumes overlay mounts without `redirect_dir` and `metacopy`
//!   (strata's): an upper entry is taken as it is, char 0/0 devices and
//!   `opaque=y` directories being the only overlay markers read. A redirect
//!   (a renamed directory whose content stayed below; refused before a byte
//!   is written) or a metacopy (a file whose data stayed below; refused when
//!   its turn comes, where its xattrs are read anyway) is an error, not an
//!   empty directory or a file of zeros.
//! * gzip: level 6, no name, mtime 0, OS byte 255. zstd: level 3 with
//!   frame checksums. Sockets are skipped; a file that shrinks while being
//!   read is an error, one that grows is cut at the size in its header.
//!
//! # Parts
//!
//! * `reader`: the input side of [`apply`]: the layer read (and inflated)
//!   ahead on a thread, hashed, and parsed into members.
//! * `extract`: the members written into `dest`: paths resolved beneath it,
//!   entries created, metadata set; its `whiteouts` part applies whiteouts
//!   and opaque markers.
//! * `lowers`: the layers below, only read, by the overlay driver's
//!   extractor.
//! * `sparse`: GNU sparse maps.
//! * `changes`: what `write` puts in a layer: the walk of an overlay upper
//!   directory or the comparison of two trees.
//! * `writer`: the tar stream `write` produces, compressed and hashed.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;
use sha2::{Digest, Sha256};

mod changes;
mod extract;
mod lowers;
mod reader;
mod sparse;
#[cfg(test)]
mod tests;
mod writer;

pub use reader::apply;
pub use writer::write;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Malformed, corrupt, truncated or unsafe input: maps to strata's
    /// `invalid` (exit 6). The message names the entry.
    #[error("{0}")]
    Invalid(String),
    /// A change set that cannot be read as asked: an overlay upper
    /// directory left by a mount with `metacopy` or `redirect_dir`
    /// (`failed_precondition`).
    #[error("{0}")]
    Precondition(String),
    /// A change no layer can carry: a file whose name begins with `.wh.`
    /// (OCI layers take such names for deletions, so every reader would
    /// take it for a whiteout), or the deletion of one (`deleted`). Refused
    /// before a byte is written (`invalid`). `path` is in the snapshot.
    #[error("{}", reserved_message(.path, *.unfit))]
    Reserved { path: Vec<u8>, unfit: Unfit },
    /// I/O failure on our side (disk full, permission…): `internal`.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = LayerError> = std::result::Result<T, E>;

fn invalid(msg: impl Into<String>) -> LayerError {
    LayerError::Invalid(msg.into())
}

/// Why a change cannot go into a layer (see [`LayerError::Reserved`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// A file whose name begins with `.wh.`.
    Named,
    /// The deletion of such a file.
    Deleted,
    /// A character device 0/0 in a tree that is not an overlay upper (the
    /// native driver's, made with `mknod` through a mount): overlayfs's
    /// whiteout, which every reader of a layer, strata's `apply` too,
    /// refuses or takes for a deletion (audit: `diff` wrote it, exit 0,
    /// and `apply` of that layer was `invalid`).
    WhiteoutDevice,
}

fn reserved_message(path: &[u8], unfit: Unfit) -> String {
    let path = show(path);
    match unfit {
        Unfit::Named | Unfit::Deleted => format!(
            "{}`{path}` cannot go into a layer: OCI layers take names beginning with `.wh.` for deletions",
            if unfit == Unfit::Deleted {
                "the deletion of "
            } else {
                ""
            },
        ),
        Unfit::WhiteoutDevice => format!(
            "`{path}` cannot go into a layer: a character device 0/0 is an overlay whiteout, \
             which layers do not carry"
        ),
    }
}

fn io_err(what: impl Into<String>, source: impl Into<io::Error>) -> LayerError {
    LayerError::Io {
        what: what.into(),
        source: source.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// How whiteouts are materialised when applying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whiteouts {
    /// Overlay upper dir: `.wh.X` -> char device 0/0 named X;
    /// `.wh..wh..opq` -> xattr `trusted.overlay.opaque=y` (or
    /// `user.overlay.opaque=y` when `user_xattr`) on that directory.
    /// `lowers` are the trees of the layers below (the parent chain's upper
    /// directories, nearest first), only read: a whiteout is made only where
    /// they have something to hide.
    Overlay {
        user_xattr: bool,
        lowers: Vec<PathBuf>,
    },
    /// A full tree (native driver): `.wh.X` deletes X (recursively);
    /// `.wh..wh..opq` deletes everything in that dir that this layer did not
    /// itself create.
    Delete,
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub whiteouts: Whiteouts,
    /// Max uncompressed bytes read (decompression-bomb guard).
    pub max_size: u64,
    /// May create device nodes (false when not privileged: devices are
    /// refused as Invalid).
    pub allow_devices: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Digests {
    /// "sha256:<hex>" of the bytes as read/written (compressed).
    pub digest: String,
    /// "sha256:<hex>" of the uncompressed tar (OCI diff_id).
    pub diff_id: String,
    /// "none" | "gzip" | "zstd".
    pub compression: &'static str,
    /// Compressed bytes.
    pub size: u64,
}

/// What to put in a layer.
pub enum Changes<'a> {
    /// An overlay upper directory taken as the change set: walk only it
    /// (cost proportional to the change); char 0/0 devices become
    /// `.wh.NAME`, directories with trusted.overlay.opaque=y (or
    /// user.overlay.opaque=y) get a `DIR/.wh..wh..opq` entry, the overlay.*
    /// xattrs themselves are not emitted.
    Upper(&'a Path),
    /// Compare two full trees (`old` None = empty): added/changed entries
    /// from `new`, deletions as `.wh.` whiteouts (a deleted directory yields
    /// one whiteout, not one per child), a non-dir replaced by a dir or vice
    /// versa handled. Changed = differs in type, mode, uid, gid, size, mtime
    /// (ns), xattrs, symlink target, rdev, or (regular files with identical
    /// size and mtime) content.
    Compare {
        old: Option<&'a Path>,
        new: &'a Path,
    },
}

fn sha256_string(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

const BLOCK: usize = 512;
const PROGRESS_STEP: u64 = 1 << 20;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const XATTR_PAX_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Whether an xattr belongs to overlayfs (never copied into or out of a
/// layer).
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Key/value byte pairs (PAX records, xattrs).
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        v.extend_from_slice(parent);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn cstr(b: &[u8]) -> CString {
    // Callers have checked for NUL bytes.
    CString::new(b).unwrap_or_default()
}

/// How directories of `dest` are opened: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// Path order of tar entries: component by component (`a/b` before `a-b`),
/// so a directory's entries follow it directly; among the entries of one
/// directory, whiteouts and the opaque marker first, as the OCI image spec
/// asks of writers ("whiteout files appear before sibling directory
/// entries"; audit: `-x` came before `.wh.y`), each group in byte order.
fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (mut ca, mut cb) = (a.split(|c| *c == b'/'), b.split(|c| *c == b'/'));
    loop {
        match (ca.next(), cb.next()) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let (wx, wy) = (
                    x.starts_with(WHITEOUT_PREFIX),
                    y.starts_with(WHITEOUT_PREFIX),
                );
                return wy.cmp(&wx).then_with(|| x.cmp(y));
            }
            (x, y) => return x.is_some().cmp(&y.is_some()),
        }
    }
}
