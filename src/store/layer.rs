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
//!   error (`unsupported`).
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, Metadata};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::longpath;

mod sparse;

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

fn sha256_string(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

const BLOCK: usize = 512;
/// Linux's longest path, with its NUL (a symlink's target is one).
const PATH_MAX: usize = 4096;
const COPY_BUF: usize = 256 * 1024;
const PROGRESS_STEP: u64 = 1 << 20;
const MAX_LONG_NAME: u64 = 1 << 20;
const MAX_PAX: u64 = 16 << 20;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const META_PREFIX: &[u8] = b".wh..wh.";
const XATTR_PAX_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Whether an xattr belongs to overlayfs (never copied into or out of a
/// layer).
fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------
// apply: the input side
// ---------------------------------------------------------------------------

/// SHA-256 computed on a helper thread (hashing is a third of the CPU time
/// of an apply otherwise). Buffers are handed over once used and come back
/// on `back` for reuse (by whoever takes it); without a thread, hashing
/// happens inline.
struct Hashing {
    inline: Option<Sha256>,
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    back: Option<mpsc::Receiver<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<Sha256>>,
}

impl Hashing {
    fn new() -> Hashing {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let (back_tx, back) = mpsc::sync_channel::<Vec<u8>>(8);
        let spawned = std::thread::Builder::new()
            .name("layer-sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for buf in rx {
                    h.update(&buf);
                    let _ = back_tx.try_send(buf);
                }
                h
            });
        match spawned {
            Ok(worker) => Hashing {
                inline: None,
                tx: Some(tx),
                back: Some(back),
                worker: Some(worker),
            },
            Err(_) => Hashing {
                inline: Some(Sha256::new()),
                tx: None,
                back: None,
                worker: None,
            },
        }
    }

    /// Hashes `buf`, taking it.
    fn feed(&mut self, buf: Vec<u8>) {
        if let Some(h) = &mut self.inline {
            h.update(&buf);
            return;
        }
        if let Some(tx) = &self.tx
            && let Err(mpsc::SendError(buf)) = tx.send(buf)
        {
            // The worker is gone (it cannot fail, but be safe): finish inline.
            self.tx = None;
            let mut h = self
                .worker
                .take()
                .and_then(|w| w.join().ok())
                .unwrap_or_default();
            h.update(&buf);
            self.inline = Some(h);
        }
    }

    /// A buffer of `size` bytes, reused when one came back.
    fn buffer(&mut self, size: usize) -> Vec<u8> {
        reused(self.back.as_ref(), size)
    }

    fn finish(mut self) -> Sha256 {
        if let Some(h) = self.inline.take() {
            return h;
        }
        self.tx = None;
        self.worker
            .take()
            .and_then(|w| w.join().ok())
            .unwrap_or_default()
    }
}

/// A buffer of `size` bytes: one that came back on `back` if there is one.
fn reused(back: Option<&mpsc::Receiver<Vec<u8>>>, size: usize) -> Vec<u8> {
    let mut v = back.and_then(|b| b.try_recv().ok()).unwrap_or_default();
    v.resize(size, 0);
    v
}

const CHUNK: usize = 1 << 20;

/// Bytes on their way to a [`Hashing`], handed over a chunk at a time (for
/// data that passes through buffers we do not own).
struct Digester {
    hashing: Hashing,
    pending: Vec<u8>,
}

impl Digester {
    fn new() -> Digester {
        Digester {
            hashing: Hashing::new(),
            pending: Vec::with_capacity(2 * CHUNK),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= CHUNK {
            let mut next = self.hashing.buffer(0);
            next.reserve(2 * CHUNK);
            let full = std::mem::replace(&mut self.pending, next);
            self.hashing.feed(full);
        }
    }

    fn finish(mut self) -> Sha256 {
        let rest = std::mem::take(&mut self.pending);
        self.hashing.feed(rest);
        self.hashing.finish()
    }
}

/// State shared with the reader at the bottom of the decoder chain.
#[derive(Default)]
struct InputState {
    bytes: AtomicU64,
    failed: AtomicBool,
    /// For compressed input: the digest of the raw bytes, and bytes not yet
    /// handed to it.
    raw: Mutex<Option<Digester>>,
}

impl InputState {
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn raw(&self) -> std::sync::MutexGuard<'_, Option<Digester>> {
        self.raw.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the caller's input, counting and (for compressed layers) hashing.
struct RawReader<'a> {
    inner: &'a mut (dyn Read + Send),
    state: Arc<InputState>,
}

impl Read for RawReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.state.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(d) = self.state.raw().as_mut() {
                    d.update(&buf[..n]);
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.failed.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

/// The uncompressed tar stream, a chunk at a time, as [`read_ahead`]'s
/// thread hands it over.
type Chunks = mpsc::Receiver<io::Result<Vec<u8>>>;

/// Reads `src` on a second thread, at most `AHEAD` chunks ahead of the
/// unpacking (a bomb still stops at the size limit), into buffers that
/// come back from hashing when they can. For a compressed layer this is
/// where it is inflated, a large share of an unpack's CPU time (`tar -xzf`
/// has a gzip process do it beside tar); for a plain one, where the input
/// is copied out of the kernel. Either way the unpacking thread only
/// parses and writes, and takes each chunk as it is, without a copy.
fn read_ahead<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    mut src: impl Read + Send + 'scope,
    recycled: Option<mpsc::Receiver<Vec<u8>>>,
) -> Result<Chunks> {
    const AHEAD: usize = 4;
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(AHEAD);
    std::thread::Builder::new()
        .name("layer-read".into())
        .spawn_scoped(scope, move || {
            loop {
                let mut buf = reused(recycled.as_ref(), CHUNK);
                let (len, failed) = read_until_error(&mut src, &mut buf);
                buf.truncate(len);
                // What was read before an error is handed over first, so
                // the error is met where it is in the stream (garbage after
                // the gzip stream, after the last entry; not "at the start").
                if len > 0 && tx.send(Ok(buf)).is_err() {
                    return;
                }
                if let Some(e) = failed {
                    let _ = tx.send(Err(e));
                    return;
                }
                // Stop at the end.
                if len == 0 {
                    return;
                }
            }
        })
        .map_err(|e| io_err("cannot start a thread to read the layer", e))?;
    Ok(rx)
}

/// Reads into `buf` until it is full, the input ends or reading fails;
/// returns how much, and the error.
fn read_until_error(input: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut len = 0;
    while len < buf.len() {
        match input.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (len, Some(e)),
        }
    }
    (len, None)
}

/// Reads into `buf` until it is full or the input ends; returns how much.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    match read_until_error(input, buf) {
        (len, None) => Ok(len),
        (_, Some(e)) => Err(e),
    }
}

/// The uncompressed tar stream, read in chunks: hashed (diff_id), counted
/// and limited.
struct Stream {
    chunks: Chunks,
    input: Arc<InputState>,
    /// The chunk being parsed; `pos` bytes of it are consumed.
    chunk: Vec<u8>,
    pos: usize,
    /// Whether the last chunk was received.
    ended: bool,
    hashing: Hashing,
    count: u64,
    max: u64,
    compression: Compression,
}

impl Stream {
    /// The bytes available now; empty at the end of the stream.
    fn fill(&mut self) -> Result<&[u8]> {
        if self.pos == self.chunk.len() && !self.ended {
            let used = std::mem::take(&mut self.chunk);
            if !used.is_empty() {
                self.hashing.feed(used);
            }
            self.pos = 0;
            match self.chunks.recv() {
                Ok(Ok(next)) => {
                    self.count += next.len() as u64;
                    if self.count > self.max {
                        return Err(invalid(format!(
                            "the layer is larger than the limit of {} bytes uncompressed",
                            self.max
                        )));
                    }
                    self.chunk = next;
                }
                Ok(Err(e)) => return Err(self.input_error(e)),
                // The reading thread is done: the end of the stream.
                Err(_) => self.ended = true,
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }

    /// Counts a sparse file's holes toward the limit: they take no room
    /// here, but a `diff`, `export` or `push` of the snapshot writes them
    /// out as zeros, and a comparison of trees reads them, so a layer of a
    /// few KiB could otherwise stand for terabytes.
    fn count_holes(&mut self, n: u64) -> Result<()> {
        self.count = self.count.saturating_add(n);
        if self.count > self.max {
            return Err(invalid(format!(
                "the layer is larger than the limit of {} bytes uncompressed (the holes of sparse files count)",
                self.max
            )));
        }
        Ok(())
    }

    fn input_error(&self, e: io::Error) -> LayerError {
        if self.input.failed.load(Ordering::Relaxed) {
            io_err("cannot read the layer", e)
        } else if self.compression == Compression::None {
            invalid(format!("corrupt layer: {e}"))
        } else {
            invalid(format!(
                "corrupt or truncated {} data: {e}",
                self.compression.as_str()
            ))
        }
    }

    /// Fills `buf` unless the stream ends first; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let avail = self.fill()?;
            if avail.is_empty() {
                break;
            }
            let n = avail.len().min(buf.len() - got);
            buf[got..got + n].copy_from_slice(&avail[..n]);
            self.consume(n);
            got += n;
        }
        Ok(got)
    }

    /// Reads exactly `n` bytes into a new buffer (extension headers).
    fn read_vec(&mut self, n: u64) -> Result<Vec<u8>> {
        let mut v = vec![0u8; n as usize];
        if self.read_full(&mut v)? < v.len() {
            return Err(invalid("truncated archive (unexpected end of data)"));
        }
        Ok(v)
    }

    /// Skips exactly `n` bytes.
    fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let avail = self.fill()?.len();
            if avail == 0 {
                return Err(invalid("truncated archive (unexpected end of data)"));
            }
            let k = n.min(avail as u64);
            self.consume(k as usize);
            n -= k;
        }
        Ok(())
    }

    fn skip_padding(&mut self, size: u64) -> Result<()> {
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.skip(pad)
    }

    /// The diff_id, once everything was read.
    fn finish(mut self) -> Sha256 {
        let used = std::mem::take(&mut self.chunk);
        self.hashing.feed(used);
        self.hashing.finish()
    }
}

/// One archive member with its extension headers folded in.
struct Member {
    header: tar::Header,
    path: Vec<u8>,
    link: Vec<u8>,
    size: u64,
    uid: u64,
    gid: u64,
    mtime: Timespec,
    atime: Option<Timespec>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Where the data goes in a GNU sparse file (`size` is then the bytes
    /// of data archived, the map taken out).
    sparse: Option<sparse::Sparse>,
}

fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let field = &block[148..156];
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|b| *b != 0)
        .filter(|b| *b != b' ')
        .collect();
    let Ok(text) = std::str::from_utf8(&text) else {
        return false;
    };
    let Ok(want) = i64::from_str_radix(text, 8) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || want == signed
}

/// Parses PAX records (`LEN key=value\n`, length-delimited).
/// Key/value byte pairs (PAX records, xattrs).
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn parse_pax(data: &[u8]) -> std::result::Result<Pairs, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or("malformed PAX record (no length)")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("malformed PAX record length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("malformed PAX record".into());
        }
        let kv = &rest[sp + 1..len - 1];
        let eq = kv
            .iter()
            .position(|b| *b == b'=')
            .filter(|eq| *eq > 0)
            .ok_or("malformed PAX record (no key)")?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`.
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nsec: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    Some(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        }
    } else if nsec == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nsec,
        }
    })
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(|b| b.is_ascii_digit()) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Cuts a GNU long name at its first NUL.
fn cut_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|b| *b == 0) {
        v.truncate(i);
    }
    v
}

/// Reads the next member; None at the end-of-archive block.
fn next_member(s: &mut Stream, after: &str) -> Result<Option<Member>> {
    let at = || {
        if after.is_empty() {
            "at the start of the layer".to_string()
        } else {
            format!("after entry `{after}`")
        }
    };
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut pax: Option<Vec<(Vec<u8>, Vec<u8>)>> = None;
    loop {
        let mut block = [0u8; BLOCK];
        let got = s.read_full(&mut block).map_err(|e| context(e, &at()))?;
        let pending = long_name.is_some() || long_link.is_some() || pax.is_some();
        if got == 0 {
            return Err(invalid(format!(
                "truncated archive {}: the stream ends without an end-of-archive block",
                at()
            )));
        }
        if got < BLOCK {
            return Err(invalid(format!(
                "truncated archive {}: the stream ends inside a header block",
                at()
            )));
        }
        if block.iter().all(|b| *b == 0) {
            if pending {
                return Err(invalid(format!(
                    "extension header {} describes no entry",
                    at()
                )));
            }
            return Ok(None);
        }
        if !checksum_ok(&block) {
            return Err(invalid(format!(
                "corrupt archive {}: header checksum mismatch",
                at()
            )));
        }
        let header = tar::Header::from_byte_slice(&block).clone();
        let kind = header.entry_type().as_byte();
        let hname = show(&header.path_bytes());
        let size = header_number(&header.as_old().size, "size", || header.entry_size())
            .map_err(|field| not_a_number(&hname, field))?;
        match kind {
            b'L' | b'K' => {
                if size > MAX_LONG_NAME {
                    return Err(invalid(format!(
                        "corrupt archive {}: a GNU long name of {size} bytes",
                        at()
                    )));
                }
                let slot = if kind == b'L' {
                    &mut long_name
                } else {
                    &mut long_link
                };
                if slot.is_some() {
                    return Err(invalid(format!(
                        "corrupt archive {}: two GNU long-name headers for one entry",
                        at()
                    )));
                }
                let v = s.read_vec(size).map_err(|e| context(e, &at()))?;
                s.skip_padding(size).map_err(|e| context(e, &at()))?;
                *slot = Some(cut_nul(v));
            }
            b'x' => {
                if size > MAX_PAX {
                    return Err(invalid(format!(
                        "corrupt archive {}: a PAX header of {size} bytes",
                        at()
                    )));
                }
                if pax.is_some() {
                    return Err(invalid(format!(
                        "corrupt archive {}: two PAX headers for one entry",
                        at()
                    )));
                }
                let v = s.read_vec(size).map_err(|e| context(e, &at()))?;
                s.skip_padding(size).map_err(|e| context(e, &at()))?;
                pax = Some(
                    parse_pax(&v).map_err(|e| invalid(format!("corrupt archive {}: {e}", at())))?,
                );
            }
            b'g' => {
                // Global PAX headers (e.g. `git archive`'s comment) carry
                // nothing a layer needs.
                s.skip(size).map_err(|e| context(e, &at()))?;
                s.skip_padding(size).map_err(|e| context(e, &at()))?;
            }
            _ => {
                let old = header.as_old();
                let uid = header_number(&old.uid, "uid", || header.uid());
                let gid = header_number(&old.gid, "gid", || header.gid());
                let uid = uid.map_err(|field| not_a_number(&hname, field))?;
                let gid = gid.map_err(|field| not_a_number(&hname, field))?;
                let mtime = header_mtime(&header).map_err(|e| match e {
                    BadField::NotANumber(field) => not_a_number(&hname, field),
                    BadField::OutOfRange(what) => invalid(format!(
                        "corrupt archive: entry `{hname}` has a bad mtime: {what}"
                    )),
                })?;
                let mut m = Member {
                    path: long_name
                        .take()
                        .unwrap_or_else(|| header.path_bytes().into_owned()),
                    link: long_link.take().unwrap_or_else(|| {
                        header
                            .link_name_bytes()
                            .map(|c| c.into_owned())
                            .unwrap_or_default()
                    }),
                    size,
                    uid,
                    gid,
                    mtime: Timespec {
                        tv_sec: mtime,
                        tv_nsec: 0,
                    },
                    atime: None,
                    xattrs: BTreeMap::new(),
                    sparse: None,
                    header,
                };
                let mut sparse_records = sparse::Records::default();
                for (k, v) in pax.take().unwrap_or_default() {
                    let name = show(&m.path);
                    let bad_pax = || {
                        invalid(format!(
                            "corrupt archive: entry `{name}` has a bad PAX `{}` record",
                            show(&k)
                        ))
                    };
                    if let Some(attr) = k.strip_prefix(XATTR_PAX_PREFIX) {
                        if attr.is_empty() || attr.contains(&0) {
                            return Err(bad_pax());
                        }
                        m.xattrs.insert(attr.to_vec(), v);
                        continue;
                    }
                    let sparse_record = sparse_records
                        .take(&k, &v)
                        .map_err(|e| invalid(format!("corrupt archive: entry `{name}`: {e}")))?;
                    if sparse_record {
                        continue;
                    }
                    // An empty value removes the record (POSIX): the header
                    // field stands.
                    if v.is_empty() {
                        continue;
                    }
                    match k.as_slice() {
                        b"path" => m.path = v,
                        b"linkpath" => m.link = v,
                        b"size" => m.size = parse_decimal(&v).ok_or_else(bad_pax)?,
                        b"uid" => m.uid = parse_decimal(&v).ok_or_else(bad_pax)?,
                        b"gid" => m.gid = parse_decimal(&v).ok_or_else(bad_pax)?,
                        b"mtime" => m.mtime = parse_pax_time(&v).ok_or_else(bad_pax)?,
                        b"atime" => m.atime = Some(parse_pax_time(&v).ok_or_else(bad_pax)?),
                        _ => {}
                    }
                }
                m.sparse = read_sparse(s, &mut m, &sparse_records)?;
                return Ok(Some(m));
            }
        }
    }
}

/// The map of `m` if it is a GNU sparse file (old GNU type `S`, or PAX
/// `records`), read with what of it follows the header: an old header's
/// extension blocks, a PAX 1.0 map at the start of the data, which is
/// taken out of `m.size`. Also gives `m` its real name (PAX 0.1 and 1.0).
fn read_sparse(
    s: &mut Stream,
    m: &mut Member,
    records: &sparse::Records,
) -> Result<Option<sparse::Sparse>> {
    let type_byte = m.header.as_old().linkflag[0];
    let (size, segments) = if type_byte == b'S' {
        old_gnu_sparse(s, m)?
    } else {
        let bad = |e: String| corrupt(m, e);
        let Some(format) = records.format().map_err(bad)? else {
            return Ok(None);
        };
        if !matches!(type_byte, b'0' | b'7' | 0) {
            return Err(bad(
                "GNU sparse records on an entry that is not a file".into()
            ));
        }
        // Without a size record the file is as long as its data (Go).
        let size = records.size().map_err(bad)?.unwrap_or(m.size);
        let segments = match format {
            sparse::Format::InRecords => records.segments().map_err(bad)?,
            sparse::Format::InData => {
                let (segments, used) = map_in_data(s, m)?;
                m.size -= used;
                segments
            }
        };
        if let Some(name) = records.name() {
            m.path = name.to_vec();
        }
        (size, segments)
    };
    sparse::check(&segments, size, m.size).map_err(|e| corrupt(m, e))?;
    s.count_holes(size - m.size)
        .map_err(|e| context(e, &format!("entry `{}`", show(&m.path))))?;
    Ok(Some(sparse::Sparse { size, segments }))
}

/// "corrupt archive: entry `NAME`: WHAT".
fn corrupt(m: &Member, what: impl std::fmt::Display) -> LayerError {
    invalid(format!(
        "corrupt archive: entry `{}`: {what}",
        show(&m.path)
    ))
}

/// An old GNU sparse header's file size and map, reading its extension
/// blocks from `s`.
fn old_gnu_sparse(s: &mut Stream, m: &Member) -> Result<(u64, Vec<sparse::Segment>)> {
    let bad = |e: &str| corrupt(m, e);
    let gnu = m
        .header
        .as_gnu()
        .ok_or_else(|| bad("a GNU sparse entry (type S) without a GNU header"))?;
    let size = sparse::number(&gnu.realsize).ok_or_else(|| bad("a bad GNU sparse size"))?;
    let mut segments =
        sparse::old_gnu_segments(&m.header.as_bytes()[386..482], 4).map_err(|e| bad(&e))?;
    let mut more = gnu.isextended[0] != 0;
    let mut blocks = 0;
    while more {
        blocks += 1;
        if blocks > sparse::MAX_EXTENSIONS {
            return Err(bad("a GNU sparse map of too many extension headers"));
        }
        let mut block = [0u8; BLOCK];
        if s.read_full(&mut block)? < BLOCK {
            return Err(bad(
                "truncated archive inside a GNU sparse extension header",
            ));
        }
        segments.extend(sparse::old_gnu_segments(&block, 21).map_err(|e| bad(&e))?);
        more = block[504] != 0;
    }
    Ok((size, segments))
}

/// Reads a PAX 1.0 map from the start of `m`'s data: its segments and the
/// bytes it takes.
fn map_in_data(s: &mut Stream, m: &Member) -> Result<(Vec<sparse::Segment>, u64)> {
    let bad = |e: String| corrupt(m, e);
    let mut text = Vec::new();
    let (mut lines, mut want) = (0u64, 1u64);
    loop {
        if text.len() as u64 + BLOCK as u64 > m.size.min(sparse::MAX_MAP_TEXT) {
            return Err(bad(if m.size <= sparse::MAX_MAP_TEXT {
                "its GNU sparse map runs past its data".into()
            } else {
                "a GNU sparse map over 1 MiB".into()
            }));
        }
        let mut block = [0u8; BLOCK];
        if s.read_full(&mut block)? < BLOCK {
            return Err(bad("truncated archive inside a GNU sparse map".into()));
        }
        text.extend_from_slice(&block);
        lines += block.iter().filter(|b| **b == b'\n').count() as u64;
        if lines < want {
            continue;
        }
        match sparse::map_in_data(&text).map_err(bad)? {
            sparse::MapText::Lines(all) => want = all,
            sparse::MapText::Map(segments, used) => return Ok((segments, used)),
        }
    }
}

/// A header's mtime as a signed number of seconds. GNU tar writes a time
/// before 1970 in base-256 as a negative two's-complement number (first
/// byte 0xff), which the tar crate reads as a huge unsigned one; Go's
/// archive/tar (containerd) reads it signed, as here. A value no `i64`
/// holds is an error, not a clamped time; a field of only NULs is 0 (see
/// [`header_number`]).
fn header_mtime(h: &tar::Header) -> std::result::Result<i64, BadField> {
    let raw = &h.as_old().mtime;
    if raw[0] == 0xff {
        // 96 bits of two's complement: an i64 when the top 32 are all ones
        // and the next bit is one too.
        let (top, low) = raw.split_at(4);
        if top.iter().all(|&b| b == 0xff) && low[0] & 0x80 != 0 {
            let low: [u8; 8] = low.try_into().expect("8 bytes");
            return Ok(i64::from_be_bytes(low));
        }
        return Err(BadField::OutOfRange("a negative time out of range"));
    }
    let t = header_number(raw, "mtime", || h.mtime()).map_err(BadField::NotANumber)?;
    i64::try_from(t).map_err(|_| BadField::OutOfRange("a time out of range"))
}

/// Why a numeric header field could not be read.
#[derive(Debug)]
enum BadField {
    /// The field (its name) is not a number.
    NotANumber(&'static str),
    /// A number out of range: what is wrong.
    OutOfRange(&'static str),
}

/// A header's device numbers (0 in a header without the fields: pre-POSIX
/// tar). A field of only NULs is 0, as GNU tar, Go's archive/tar and
/// Python's tarfile read it (the tar crate refuses it as not a number); one
/// of only spaces is refused, as GNU tar refuses it, like the other numeric
/// fields (see [`header_number`]). The error names the field at fault.
fn header_device(h: &tar::Header) -> std::result::Result<(u32, u32), &'static str> {
    let (major, minor) = match (h.as_ustar(), h.as_gnu()) {
        (Some(u), _) => (&u.dev_major, &u.dev_minor),
        (None, Some(g)) => (&g.dev_major, &g.dev_minor),
        (None, None) => return Ok((0, 0)),
    };
    let device = |n: io::Result<Option<u32>>| n.map(|n| n.unwrap_or(0));
    Ok((
        header_number(major, "devmajor", || device(h.device_major()))?,
        header_number(minor, "devminor", || device(h.device_minor()))?,
    ))
}

/// One numeric header field, `raw` being its bytes: 0 if only NULs (GNU
/// tar, Go's archive/tar and Python's tarfile all read 0; the tar crate
/// refuses it as not a number), anything else as the tar crate's `read`
/// gives it (octal, and GNU base-256 where the crate reads that). A field
/// of only spaces is refused: Go and Python read 0 there, but GNU tar fails
/// ("Blanks in header where numeric ... value expected"; for the size it
/// loses the archive's framing). The error is `field`, the field's name.
fn header_number<T: Default>(
    raw: &[u8],
    field: &'static str,
    read: impl FnOnce() -> io::Result<T>,
) -> std::result::Result<T, &'static str> {
    if raw.iter().all(|&b| b == 0) {
        return Ok(T::default());
    }
    read().map_err(|_| field)
}

/// "entry `NAME`: its FIELD field is not a number" (the tar crate's own
/// text quotes the raw field, which may hold anything).
fn not_a_number(name: &str, field: &str) -> LayerError {
    invalid(format!("entry `{name}`: its {field} field is not a number"))
}

/// Adds `ctx` to an Invalid message.
fn context(e: LayerError, ctx: &str) -> LayerError {
    match e {
        LayerError::Invalid(m) => LayerError::Invalid(format!("{m} ({ctx})")),
        other => other,
    }
}

/// Whether `magic` starts a zstd stream: a zstd frame (28 b5 2f fd), or a
/// skippable frame (magic 0x184D2A50 to 0x184D2A5F, little-endian), which
/// some writers put first for metadata (e.g. seekable zstd) and which
/// containerd and moby detect as zstd too; the decoder skips it.
fn is_zstd(magic: &[u8]) -> bool {
    magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (magic.len() >= 4 && magic[0] & 0xf0 == 0x50 && magic[1..4] == [0x2a, 0x4d, 0x18])
}

/// Unpack a layer read from `input` (compression detected from the first
/// bytes: gzip 1f 8b, zstd 28 b5 2f fd or a zstd skippable frame, else
/// plain tar) into directory
/// `dest` (which exists; for Overlay it is an empty upper dir, for Delete a
/// copy of the parent tree). `progress` is called with the number of
/// compressed bytes consumed so far, now and then.
pub fn apply(
    input: &mut (dyn Read + Send),
    dest: &Path,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Digests> {
    let state = Arc::new(InputState::default());
    let mut raw = RawReader {
        inner: input,
        state: state.clone(),
    };
    let mut magic = [0u8; 6];
    let got = read_up_to(&mut raw, &mut magic).map_err(|e| io_err("cannot read the layer", e))?;
    let magic = &magic[..got];
    let compression = if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if is_zstd(magic) {
        Compression::Zstd
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(invalid(
            "xz-compressed layers are not supported (only gzip and zstd)",
        ));
    } else if magic.starts_with(b"BZh") {
        return Err(invalid(
            "bzip2-compressed layers are not supported (only gzip and zstd)",
        ));
    } else {
        Compression::None
    };
    if compression != Compression::None {
        let mut d = Digester::new();
        d.update(magic);
        *state.raw() = Some(d);
    }
    let head = io::Cursor::new(magic.to_vec()).chain(raw);
    let buffered = |head| BufReader::with_capacity(128 * 1024, head);
    // The diff_id's hashing hands its used buffers back to the reading
    // thread, which fills them again.
    let mut hashing = Hashing::new();
    let recycled = hashing.back.take();
    std::thread::scope(|scope| {
        let chunks = match compression {
            Compression::None => read_ahead(scope, head, recycled)?,
            Compression::Gzip => read_ahead(
                scope,
                flate2::bufread::MultiGzDecoder::new(buffered(head)),
                recycled,
            )?,
            Compression::Zstd => read_ahead(
                scope,
                zstd::stream::read::Decoder::with_buffer(buffered(head))
                    .map_err(|e| io_err("cannot start a zstd decoder", e))?,
                recycled,
            )?,
        };
        unpack(chunks, hashing, &state, compression, dest, opts, progress)
    })
}

/// Unpacks the uncompressed tar arriving as `chunks` into `dest`, hashing
/// it with `hashing`; `state` tracks the raw input (bytes read, its digest
/// when compressed).
fn unpack(
    chunks: Chunks,
    hashing: Hashing,
    state: &Arc<InputState>,
    compression: Compression,
    dest: &Path,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Digests> {
    let mut stream = Stream {
        chunks,
        input: state.clone(),
        chunk: Vec::new(),
        pos: 0,
        ended: false,
        hashing,
        count: 0,
        max: opts.max_size,
        compression,
    };

    let mut ex = Extractor::new(dest, opts)?;
    let mut last_progress = 0u64;
    let mut tick = || {
        let now = state.bytes();
        if now - last_progress >= PROGRESS_STEP {
            last_progress = now;
            progress(now);
        }
    };
    let mut last = String::new();
    while let Some(m) = next_member(&mut stream, &last)? {
        last = show(&m.path);
        ex.member(m, &mut stream, &mut tick)?;
        tick();
    }
    // The tar ends with its first zero block; the rest of the stream (the
    // second zero block, record padding) still belongs to the diff_id and
    // must be zeros: anything else would be read differently by a tool that
    // skips zero blocks.
    let at_end = if last.is_empty() {
        "after the end-of-archive block".to_string()
    } else {
        format!("after the end-of-archive block, after entry `{last}`")
    };
    loop {
        let rest = stream.fill().map_err(|e| context(e, &at_end))?;
        if rest.is_empty() {
            break;
        }
        if rest.iter().any(|b| *b != 0) {
            return Err(invalid(format!("corrupt archive: data {at_end}")));
        }
        let n = rest.len();
        stream.consume(n);
    }
    ex.finish()?;
    let diff_id = sha256_string(stream.finish());
    progress(state.bytes());
    let raw_digest = state.raw().take().map(Digester::finish);
    let digest = match raw_digest {
        Some(h) => sha256_string(h),
        None => diff_id.clone(),
    };
    Ok(Digests {
        digest,
        diff_id,
        compression: compression.as_str(),
        size: state.bytes(),
    })
}

// ---------------------------------------------------------------------------
// apply: writing into dest
// ---------------------------------------------------------------------------

/// Metadata of an entry, applied after its data.
struct Meta {
    mode: u32,
    uid: Uid,
    gid: Gid,
    mtime: Timespec,
    atime: Timespec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct DirMeta {
    meta: Meta,
    /// The directory existed before this layer (its xattrs are replaced).
    existed: bool,
}

enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

struct Extractor<'o> {
    opts: &'o ApplyOptions,
    dest: PathBuf,
    root: Rc<OwnedFd>,
    /// The directories last opened.
    trail: Trail,
    /// Paths this layer created (entries and implicit parents), directories
    /// that hold something it created, overlay's copies-up.
    marks: Marks,
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// Overlay: directories made in the upper only to hold whiteouts or be
    /// opaque, with nothing of this layer in them (yet): a whiteout or an
    /// opaque marker over them later removes them, as native deletes the
    /// directory they stand for. Nodes of `marks`.
    containers: HashSet<u32>,
    privileged: bool,
    proc_fd: bool,
    /// This process's effective uid and gid and its umask (None if the
    /// umask cannot be read): what a file it creates starts with.
    creator: Option<(Uid, Gid, u32)>,
    /// What a file created in the directory at this path starts with.
    new_files: Option<(Vec<u8>, Option<NewFiles>)>,
    /// Overlay driver: the layers below, when there are any.
    lowers: Option<Lowers>,
}

/// Directories of `dest` held open at the deepest levels of the trail.
const HELD: usize = 16;

/// The directories along the path last opened in `dest`: the next one,
/// mostly this one's child, parent or sibling, is reached from them by an
/// `openat` of one name a level (or a `..`, checked), however deep the path,
/// not by a walk from the root, which costs as much as the path is deep.
struct Trail {
    /// The path, `/`-separated, and the end of each of its names in it.
    rel: Vec<u8>,
    ends: Vec<usize>,
    /// The directory at each level, held only at the deepest `HELD` (and
    /// where one was reached again); always at the deepest.
    fds: Vec<Option<Rc<OwnedFd>>>,
    /// Counts the changes.
    version: u64,
}

impl Trail {
    fn new() -> Trail {
        Trail {
            rel: Vec::new(),
            ends: Vec::new(),
            fds: Vec::new(),
            version: 0,
        }
    }

    fn clear(&mut self) {
        self.truncate(0);
    }

    fn truncate(&mut self, depth: usize) {
        self.version += 1;
        if depth < self.ends.len() {
            self.ends.truncate(depth);
            self.fds.truncate(depth);
            self.rel.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }

    /// How many leading names of `comps` the trail has.
    fn common(&self, comps: &[&[u8]]) -> usize {
        let mut start = 0;
        for (i, c) in comps.iter().enumerate().take(self.ends.len()) {
            if self.rel[start..self.ends[i]] != **c {
                return i;
            }
            start = self.ends[i] + 1;
        }
        comps.len().min(self.ends.len())
    }

    fn push(&mut self, name: &[u8], fd: Rc<OwnedFd>) {
        self.version += 1;
        if !self.rel.is_empty() {
            self.rel.push(b'/');
        }
        self.rel.extend_from_slice(name);
        self.ends.push(self.rel.len());
        self.fds.push(Some(fd));
        if self.fds.len() > HELD {
            let old = self.fds.len() - HELD - 1;
            self.fds[old] = None;
        }
    }

    /// Something at `rel` is removed: the trail ends above it.
    fn removed(&mut self, rel: &[u8]) {
        if self.rel.starts_with(rel) && (self.rel.len() == rel.len() || self.rel[rel.len()] == b'/')
        {
            self.truncate(rel.iter().filter(|b| **b == b'/').count());
        }
    }

    /// The trail cut to its first `depth` levels, and the directory there;
    /// None when that one is not held and too far to reach by `..`.
    fn up_to(&mut self, depth: usize, root: &Rc<OwnedFd>) -> Option<Rc<OwnedFd>> {
        if depth == 0 {
            self.clear();
            return Some(root.clone());
        }
        if depth > self.ends.len() {
            return None;
        }
        // The nearest held level at or below `depth`.
        let held = (depth..=self.ends.len())
            .take(MOST_UP + 1)
            .find(|&d| self.fds[d - 1].is_some())?;
        for d in (depth..held).rev() {
            // Level d from level d + 1 by `..`, checked to hold it under its
            // name (nothing moves directories in `dest`; this makes sure).
            let child = self.fds[d].clone()?;
            let start = self.ends[d - 1] + 1;
            let name = cstr(&self.rel[start..self.ends[d]]);
            let parent = rustix::fs::openat(&*child, c"..", DIR_FLAGS, Mode::empty()).ok()?;
            let a = rustix::fs::statat(&parent, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
            let b = rustix::fs::fstat(&*child).ok()?;
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
                return None;
            }
            self.fds[d - 1] = Some(Rc::new(parent));
        }
        self.truncate(depth);
        self.fds[depth - 1].clone()
    }
}

/// Going up more levels than this by `..` costs more than a walk from the
/// root.
const MOST_UP: usize = 64;

/// What this layer did at a path (bits of [`Marks`]).
const CREATED: u8 = 1;
/// A directory that contains something this layer created.
const HOLDS: u8 = 2;
/// Overlay: a directory made in the upper as a copy of one below.
const COPIED_UP: u8 = 4;
/// An entry of this layer that is not a directory (file, symlink, link,
/// device, FIFO): whiteouts under it are ignored. The flag can outlive
/// its entry only where an ancestor was replaced since, by a non-directory
/// (ignoring them anyway) or by a new directory (hiding all that was
/// below, so that they would hide nothing).
const NON_DIR: u8 = 8;

/// One path of [`Marks`].
struct Mark {
    parent: u32,
    depth: u32,
    name: Box<[u8]>,
    flags: u8,
}

/// Flags of the paths this layer touched, kept as a tree of names: memory
/// grows with the names, not with the depth times the path's length (each
/// parent of a deep path, made one by one, would keep its own copy of the
/// path so far). Looking up a path starts from the part it shares with the
/// one looked up before, so a path's parents cost one name each.
struct Marks {
    /// Node 0 is the root.
    nodes: Vec<Mark>,
    /// Parent (little-endian) then name, to node.
    index: HashMap<Vec<u8>, u32>,
    key: Vec<u8>,
    /// The path looked up last, and the node and end of each of its names.
    last: Vec<u8>,
    last_nodes: Vec<(usize, u32)>,
}

impl Marks {
    fn new() -> Marks {
        Marks {
            nodes: vec![Mark {
                parent: 0,
                depth: 0,
                name: Box::default(),
                flags: 0,
            }],
            index: HashMap::new(),
            key: Vec::new(),
            last: Vec::new(),
            last_nodes: Vec::new(),
        }
    }

    /// The node of `rel` (`/`-separated names), added if `add`.
    fn find(&mut self, rel: &[u8], add: bool) -> Option<u32> {
        // The names shared with the last path.
        let same = rel
            .iter()
            .zip(&self.last)
            .take_while(|(a, b)| a == b)
            .count();
        let mut k = self.last_nodes.partition_point(|&(end, _)| end <= same);
        if k > 0 {
            let end = self.last_nodes[k - 1].0;
            if end < rel.len() && rel[end] != b'/' {
                k -= 1;
            }
        }
        self.last_nodes.truncate(k);
        let (mut node, mut pos) = match self.last_nodes.last() {
            Some(&(end, id)) => (id, end),
            None => (0, 0),
        };
        self.last.clear();
        self.last.extend_from_slice(rel);
        let mut found = Some(node);
        while pos < rel.len() {
            let start = if rel[pos] == b'/' { pos + 1 } else { pos };
            let end = rel[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(rel.len(), |i| start + i);
            pos = end;
            let name = &rel[start..end];
            if name.is_empty() {
                continue;
            }
            self.key.clear();
            self.key.extend_from_slice(&node.to_le_bytes());
            self.key.extend_from_slice(name);
            node = match self.index.get(self.key.as_slice()) {
                Some(&id) => id,
                None if add => {
                    let id = u32::try_from(self.nodes.len()).expect("fewer than 2^32 paths");
                    let depth = self.nodes[node as usize].depth + 1;
                    self.nodes.push(Mark {
                        parent: node,
                        depth,
                        name: name.into(),
                        flags: 0,
                    });
                    self.index.insert(self.key.clone(), id);
                    id
                }
                None => {
                    found = None;
                    self.last.truncate(start.saturating_sub(1));
                    break;
                }
            };
            self.last_nodes.push((end, node));
            found = Some(node);
        }
        found
    }

    fn has(&mut self, rel: &[u8], flag: u8) -> bool {
        self.find(rel, false)
            .is_some_and(|id| self.nodes[id as usize].flags & flag != 0)
    }

    fn flag(&self, id: u32, flag: u8) -> bool {
        self.nodes[id as usize].flags & flag != 0
    }

    fn clear(&mut self, id: u32, flag: u8) {
        self.nodes[id as usize].flags &= !flag;
    }

    /// Sets `flag` on node `id`; false if it was set.
    fn set(&mut self, id: u32, flag: u8) -> bool {
        let was = self.nodes[id as usize].flags;
        self.nodes[id as usize].flags |= flag;
        was & flag == 0
    }

    fn parent(&self, id: u32) -> Option<u32> {
        (id != 0).then(|| self.nodes[id as usize].parent)
    }

    fn depth(&self, id: u32) -> u32 {
        self.nodes[id as usize].depth
    }

    /// Whether `id` is strictly under `top`.
    fn under(&self, mut id: u32, top: u32) -> bool {
        let depth = self.depth(top);
        while self.depth(id) > depth {
            id = self.nodes[id as usize].parent;
            if id == top {
                return true;
            }
        }
        false
    }

    /// The names of `id`'s path, root first.
    fn names(&self, mut id: u32) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(self.depth(id) as usize);
        while id != 0 {
            let m = &self.nodes[id as usize];
            out.push(&*m.name);
            id = m.parent;
        }
        out.reverse();
        out
    }
}

/// The owner and mode a regular file gets from `open(O_CREAT)` in some
/// directory. When they are already what the layer asks for, the `fchown`
/// and `fchmod` after the write are skipped (tar does both for every file;
/// they are a fifth of the system calls of unpacking small files).
#[derive(Clone, Copy)]
struct NewFiles {
    uid: Uid,
    /// The directory's group if it is setgid, else the creator's.
    gid: Gid,
    /// Permission bits `open` clears.
    umask: u32,
}

/// What a file created in `dir` by `creator` starts with; `None` when a
/// default ACL decides its mode (or the directory cannot be examined).
fn new_files(dir: BorrowedFd<'_>, creator: (Uid, Gid, u32)) -> Option<NewFiles> {
    let (uid, egid, umask) = creator;
    let st = rustix::fs::fstat(dir).ok()?;
    let gid = if st.st_mode & 0o2000 != 0 {
        Gid::from_raw(st.st_gid)
    } else {
        egid
    };
    match rustix::fs::fgetxattr(dir, c"system.posix_acl_default", &mut [0u8; 0][..]) {
        Err(Errno::NODATA | Errno::NOTSUP) => Some(NewFiles { uid, gid, umask }),
        _ => None,
    }
}

/// The umask, read without changing it (`umask(2)` can only set it, and
/// other threads may be creating files meanwhile).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Which of a new file's metadata `open` already set as the layer wants.
#[derive(Clone, Copy, Default)]
struct Preset {
    owner: bool,
    mode: bool,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        v.extend_from_slice(parent);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Splits an archive name into its components: `.`, empty components and a
/// leading `/` are dropped; `..` and NUL are refused.
fn split_name(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("a NUL byte in the name");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a `..` component (it would escape the layer)"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// How directories of `dest` are opened: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// What [`Extractor::open_dir`] does with a directory missing from `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Creates it (the parents of an entry).
    Create,
    /// Creates it where the merged tree has it: on overlay, where a layer
    /// below has a directory (to hold a whiteout, or to be made opaque).
    Merged,
    /// Leaves it.
    Skip,
}

/// The error for an entry whose parent `sub` is a symlink or not a
/// directory.
fn bad_parent(entry: &str, sub: &[u8], symlink: bool) -> LayerError {
    invalid(if symlink {
        format!(
            "entry `{entry}`: its parent `{}` is a symlink (refused: it could lead outside the layer)",
            show(sub)
        )
    } else {
        format!(
            "entry `{entry}`: its parent `{}` is not a directory",
            show(sub)
        )
    })
}

/// An error met on the way to hardlink `entry`'s target `link`, about the
/// target: "entry `hl`: hardlink target `d/f`: its parent `d` is a
/// symlink", not the entry's own parent.
fn about_link_target(e: LayerError, entry: &str, link: &[u8]) -> LayerError {
    match e {
        LayerError::Invalid(msg) => {
            let prefix = format!("entry `{entry}`: ");
            match msg.strip_prefix(&prefix) {
                Some(rest) => invalid(format!("{prefix}hardlink target `{}`: {rest}", show(link))),
                None => LayerError::Invalid(msg),
            }
        }
        other => other,
    }
}

fn cstr(b: &[u8]) -> CString {
    // Callers have checked for NUL bytes.
    CString::new(b).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// apply: the layers below (overlay driver)
// ---------------------------------------------------------------------------

/// What the merged lower layers show at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Below {
    Nothing,
    Dir,
    Symlink,
    /// Any other non-directory.
    Other,
}

/// What one lower layer has at a path.
enum Probe {
    Missing,
    Whiteout,
    Dir { opaque: bool },
    Symlink,
    Other,
}

/// The merged lowers at one directory of the path last looked up.
struct Level {
    /// The component (empty for the root).
    name: Vec<u8>,
    kind: Below,
    /// The layers whose directory here shows through, nearest first, down to
    /// the first opaque one; none when this layer hid the path.
    layers: Vec<usize>,
    /// Those directories, open (at the deepest levels, and when few): the
    /// level under is probed through them, a name each, not by its path
    /// from the layers' roots, which costs as much as it is deep.
    fds: Option<Vec<OwnedFd>>,
}

/// Levels of [`Lowers::path`] whose directories are held open.
const LEVELS_HELD: usize = 2;

/// Lower layers kept open (the nearest); deeper ones are opened when
/// needed: a committed chain may be deeper than the open-file limit.
const HELD_LOWERS: usize = 64;

/// The parent chain's trees, nearest first: what the overlay applier needs
/// to know of the layers below (overlayfs's own lookup rules: the first
/// layer with an entry decides, a whiteout hides the layers under it, an
/// opaque directory hides their content). Never written to.
struct Lowers {
    paths: Vec<PathBuf>,
    held: Vec<OwnedFd>,
    opaque_xattr: &'static CStr,
    /// Paths this layer made opaque directories or whiteouts: the lowers
    /// show nothing at or under them.
    hidden: HashSet<Vec<u8>>,
    /// The path last looked up, root first: consecutive entries of an
    /// archive mostly share their directories.
    path: Vec<Level>,
}

impl Lowers {
    /// None without lowers: a root layer pays nothing.
    fn open(paths: &[PathBuf], user_xattr: bool) -> Result<Option<Lowers>> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut held = Vec::with_capacity(paths.len().min(HELD_LOWERS));
        for p in paths.iter().take(HELD_LOWERS) {
            held.push(open_lower(p)?);
        }
        let root = Level {
            name: Vec::new(),
            kind: Below::Dir,
            layers: (0..paths.len()).collect(),
            fds: None,
        };
        Ok(Some(Lowers {
            paths: paths.to_vec(),
            held,
            opaque_xattr: opaque_xattr(user_xattr),
            hidden: HashSet::new(),
            path: vec![root],
        }))
    }

    /// Runs `f` on the root of lower layer `i`.
    fn with_root<T>(&self, i: usize, f: impl FnOnce(BorrowedFd<'_>) -> Result<T>) -> Result<T> {
        match self.held.get(i) {
            Some(fd) => f(fd.as_fd()),
            None => f(open_lower(&self.paths[i])?.as_fd()),
        }
    }

    /// The merged lowers at directory `comps`.
    fn at(&mut self, comps: &[&[u8]]) -> Result<&Level> {
        let mut keep = 1;
        while keep < self.path.len()
            && keep <= comps.len()
            && self.path[keep].name == comps[keep - 1]
        {
            keep += 1;
        }
        self.path.truncate(keep);
        for i in keep - 1..comps.len() {
            let level = self.step(&self.path[i], i, comps)?;
            self.path.push(level);
            if let Some(old) = self.path.len().checked_sub(LEVELS_HELD + 1) {
                self.path[old].fds = None;
            }
        }
        Ok(&self.path[comps.len()])
    }

    /// The merged lowers at `comps[..=i]`, under `parent`, the level of
    /// `comps[..i]`.
    fn step(&self, parent: &Level, i: usize, comps: &[&[u8]]) -> Result<Level> {
        let name = comps[i];
        let rel = || comps[..=i].join(&b'/');
        let mut level = Level {
            name: name.to_vec(),
            kind: Below::Nothing,
            layers: Vec::new(),
            fds: (parent.layers.len() <= HELD_LOWERS).then(Vec::new),
        };
        let cname = cstr(name);
        for (j, &l) in parent.layers.iter().enumerate() {
            let (probe, fd) = if i == 0 {
                self.with_root(l, |root| self.probe_in(l, root, &cname, &rel))?
            } else if let Some(fds) = &parent.fds {
                self.probe_in(l, fds[j].as_fd(), &cname, &rel)?
            } else {
                self.probe(l, &rel())?
            };
            match probe {
                Probe::Missing => continue,
                Probe::Dir { opaque } => {
                    level.kind = Below::Dir;
                    level.layers.push(l);
                    if let (Some(fds), Some(fd)) = (&mut level.fds, fd) {
                        fds.push(fd);
                    } else {
                        level.fds = None;
                    }
                    if opaque {
                        break;
                    }
                }
                // A whiteout ends the search, and so does a non-directory
                // (hidden by a directory found above, if any).
                found => {
                    if level.kind == Below::Nothing {
                        level.kind = match found {
                            Probe::Symlink => Below::Symlink,
                            Probe::Other => Below::Other,
                            _ => Below::Nothing,
                        };
                    }
                    break;
                }
            }
        }
        if !self.hidden.is_empty() && self.hidden.contains(&rel()) {
            level.kind = Below::Nothing;
            level.layers.clear();
            level.fds = None;
        }
        Ok(level)
    }

    /// What lower layer `l` has at `name` in its directory `dir` (at
    /// `rel()`, for errors), and that directory open if it is one.
    fn probe_in(
        &self,
        l: usize,
        dir: BorrowedFd<'_>,
        name: &CStr,
        rel: &dyn Fn() -> Vec<u8>,
    ) -> Result<(Probe, Option<OwnedFd>)> {
        let failed = |e: Errno| self.unreadable(l, &rel(), e);
        let opened = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty());
        self.classify(
            opened,
            || rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
            &failed,
        )
    }

    /// What lower layer `i` itself has at `rel`, by its path.
    fn probe(&self, i: usize, rel: &[u8]) -> Result<(Probe, Option<OwnedFd>)> {
        let c = cstr(rel);
        let failed = |e: Errno| self.unreadable(i, rel, e);
        self.with_root(i, |root| {
            let opened = open_beneath(root, &c, OFlags::RDONLY | OFlags::DIRECTORY);
            let stat = || rustix::fs::fstat(open_beneath(root, &c, OFlags::PATH)?);
            self.classify(opened, stat, &failed)
        })
    }

    /// A probe's answer from its attempt to open the entry as a directory
    /// (`opened`) and, when it is not one, the entry's own `stat`.
    fn classify(
        &self,
        opened: rustix::io::Result<OwnedFd>,
        stat: impl FnOnce() -> rustix::io::Result<rustix::fs::Stat>,
        failed: &dyn Fn(Errno) -> LayerError,
    ) -> Result<(Probe, Option<OwnedFd>)> {
        match opened {
            Ok(fd) => {
                let opaque = has_opaque_xattr(&fd, self.opaque_xattr).map_err(failed)?;
                Ok((Probe::Dir { opaque }, Some(fd)))
            }
            Err(Errno::NOENT) => Ok((Probe::Missing, None)),
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let st = stat().map_err(failed)?;
                let probe = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                    rustix::fs::FileType::CharacterDevice if st.st_rdev == 0 => Probe::Whiteout,
                    rustix::fs::FileType::Symlink => Probe::Symlink,
                    _ => Probe::Other,
                };
                Ok((probe, None))
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// The error of a failed read in lower layer `l` at `rel`.
    fn unreadable(&self, l: usize, rel: &[u8], e: Errno) -> LayerError {
        io_err(
            format!(
                "cannot read {}",
                self.paths[l].join(OsStr::from_bytes(rel)).display()
            ),
            e,
        )
    }

    /// Owner, mode, times and xattrs (overlay's own left out) of the
    /// directory the merged lowers show at `comps`, if they show one: the
    /// nearest layer's, as overlayfs copies it up.
    fn dir_meta(&mut self, comps: &[&[u8]]) -> Result<Option<Meta>> {
        self.at(comps)?;
        let level = &self.path[comps.len()];
        let (Below::Dir, Some(&i)) = (level.kind, level.layers.first()) else {
            return Ok(None);
        };
        let p = || self.paths[i].join(OsStr::from_bytes(&comps.join(&b'/')));
        let (md, xattrs) = match &level.fds {
            // The directory itself, open.
            Some(fds) => {
                let fd = fds[0].as_fd();
                let md = rustix::fs::fstat(fd)
                    .map_err(|e| io_err(format!("cannot read {}", p().display()), e))?;
                let xattrs = xattrs_fd(fd).map_err(|e| {
                    io_err(format!("cannot read the xattrs of {}", p().display()), e)
                })?;
                let t = |s: i64, n: u64| (s, n as i64);
                let meta = (
                    md.st_mode,
                    md.st_uid,
                    md.st_gid,
                    t(md.st_mtime as i64, md.st_mtime_nsec as u64),
                    t(md.st_atime as i64, md.st_atime_nsec as u64),
                );
                (meta, xattrs)
            }
            // No symlink on the way: `at` opened every component beneath.
            None => {
                let p = p();
                let md = lstat(&p)?;
                let meta = (
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    (md.mtime(), md.mtime_nsec()),
                    (md.atime(), md.atime_nsec()),
                );
                (meta, xattrs_of(&p)?)
            }
        };
        let xattrs = xattrs.into_iter().map(|(k, v)| (cstr(&k), v)).collect();
        let (mode, uid, gid, mtime, atime) = md;
        let time = |sec: i64, nsec: i64| Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        Ok(Some(Meta {
            mode: mode & 0o7777,
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mtime: time(mtime.0, mtime.1),
            atime: time(atime.0, atime.1),
            xattrs,
        }))
    }

    /// The names the merged lowers show in the root.
    fn root_names(&self) -> Result<Vec<CString>> {
        // Name -> whether it shows: the nearest layer having it decides.
        let mut seen: HashMap<CString, bool> = HashMap::new();
        for i in 0..self.paths.len() {
            let failed =
                |e: io::Error| io_err(format!("cannot read {}", self.paths[i].display()), e);
            self.with_root(i, |root| {
                for (name, found) in list_entries(root).map_err(failed)? {
                    seen.entry(name).or_insert(found != Found::Whiteout);
                }
                Ok(())
            })?;
        }
        let mut names: Vec<CString> = seen
            .into_iter()
            .filter_map(|(name, shows)| shows.then_some(name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// What was hidden at and under `rel` shows again (the upper directory
    /// that hid it is gone).
    fn unhide(&mut self, rel: &[u8]) {
        let inside = [rel, b"/"].concat();
        self.hidden
            .retain(|h| h.as_slice() != rel && !h.starts_with(&inside));
        let depth = rel.iter().filter(|b| **b == b'/').count() + 1;
        self.path.truncate(depth);
    }

    /// From here on the lowers show nothing at or under `rel` (this layer
    /// made it opaque or a whiteout).
    fn hide(&mut self, rel: &[u8]) {
        self.hidden.insert(rel.to_vec());
        // Levels of shorter paths stay true.
        let depth = rel.iter().filter(|b| **b == b'/').count() + 1;
        self.path.truncate(depth);
    }
}

fn open_lower(p: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(format!("cannot open the lower layer {}", p.display()), e))
}

/// Opens `rel` beneath `root` without following any symlink (the final
/// one included: `O_PATH` gives the link itself).
fn open_beneath(root: BorrowedFd<'_>, rel: &CStr, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
        // No openat2 (before Linux 5.6), a rename raced it, or `rel` is
        // longer than PATH_MAX: one component at a time.
        Err(Errno::NOSYS | Errno::AGAIN | Errno::NAMETOOLONG) => {}
        other => return other,
    }
    let mut cur: Option<OwnedFd> = None;
    let mut parts = rel.to_bytes().split(|b| *b == b'/').peekable();
    while let Some(part) = parts.next() {
        let how = if parts.peek().is_some() {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        } else {
            flags
        };
        let at = cur.as_ref().map_or(root, |fd| fd.as_fd());
        cur = Some(rustix::fs::openat(
            at,
            cstr(part).as_c_str(),
            how,
            Mode::empty(),
        )?);
    }
    cur.ok_or(Errno::INVAL)
}

fn opaque_xattr(user_xattr: bool) -> &'static CStr {
    if user_xattr {
        c"user.overlay.opaque"
    } else {
        c"trusted.overlay.opaque"
    }
}

fn has_opaque_xattr(fd: &OwnedFd, name: &CStr) -> rustix::io::Result<bool> {
    let mut v = [0u8; 1];
    match rustix::fs::fgetxattr(fd, name, &mut v[..]) {
        Ok(n) => Ok(n == 1 && v[0] == b'y'),
        Err(Errno::NODATA | Errno::NOTSUP | Errno::RANGE) => Ok(false),
        Err(e) => Err(e),
    }
}

impl<'o> Extractor<'o> {
    fn new(dest: &Path, opts: &'o ApplyOptions) -> Result<Self> {
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(format!("cannot open {}", dest.display()), e))?;
        let lowers = match &opts.whiteouts {
            Whiteouts::Overlay { user_xattr, lowers } => Lowers::open(lowers, *user_xattr)?,
            Whiteouts::Delete => None,
        };
        Ok(Extractor {
            opts,
            dest: dest.to_path_buf(),
            root: Rc::new(root),
            trail: Trail::new(),
            marks: Marks::new(),
            dirs: HashMap::new(),
            containers: HashSet::new(),
            privileged: nix::unistd::geteuid().is_root(),
            proc_fd: Path::new("/proc/self/fd").is_dir(),
            creator: current_umask()
                .map(|m| (rustix::process::geteuid(), rustix::process::getegid(), m)),
            new_files: None,
            lowers,
        })
    }

    /// Marks `rel` as made by this layer (a directory unless it is flagged
    /// [`NON_DIR`] after); returns its node.
    fn mark_created(&mut self, rel: &[u8]) -> u32 {
        let id = self.marks.find(rel, true).expect("added");
        self.marks.set(id, CREATED);
        self.marks.clear(id, NON_DIR);
        self.containers.remove(&id);
        let mut p = id;
        while let Some(q) = self.marks.parent(p).filter(|&q| q != 0) {
            if !self.marks.set(q, HOLDS) {
                break;
            }
            // Holds an entry of this layer now: no longer only a container.
            self.containers.remove(&q);
            p = q;
        }
        id
    }

    /// Opens directory `comps` under the root, refusing symlinks and
    /// non-directories; what is done with missing ones is `missing`'s to
    /// say (None when not created).
    fn open_dir(
        &mut self,
        comps: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        if comps.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        let root = self.root.clone();
        let common = self.trail.common(comps);
        if common == comps.len()
            && common == self.trail.ends.len()
            && let Some(Some(fd)) = self.trail.fds.last()
        {
            return Ok(Some(fd.clone()));
        }
        // From the trail when its directory is near: the first `common`
        // names are directories already (the trail ends above what is
        // removed).
        let near = common > 0
            && (common..=self.trail.ends.len())
                .take(MOST_UP + 1)
                .any(|d| self.trail.fds[d - 1].is_some());
        // A short path a few names further is one `openat2` from the root.
        let short =
            comps.len() - common > 2 && comps.iter().map(|c| c.len() + 1).sum::<usize>() < 1024;
        if near
            && !short
            && let Some(fd) = self.trail.up_to(common, &root)
        {
            return self.walk_dir(fd, common, comps, missing, entry);
        }
        // Else from the root: one `openat2` for the whole path when it can.
        let rel = comps.join(&b'/');
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        self.trail.clear();
        match rustix::fs::openat2(
            &*self.root,
            cstr(&rel).as_c_str(),
            DIR_FLAGS,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => {
                let fd = Rc::new(fd);
                // The levels above are reached again by `..`.
                self.trail.version += 1;
                self.trail.rel = rel;
                let mut end = 0;
                for c in comps {
                    end += c.len();
                    self.trail.ends.push(end);
                    self.trail.fds.push(None);
                    end += 1;
                }
                *self.trail.fds.last_mut().expect("a level") = Some(fd.clone());
                Ok(Some(fd))
            }
            Err(Errno::NOENT)
            | Err(Errno::LOOP)
            | Err(Errno::NOTDIR)
            | Err(Errno::NOSYS)
            | Err(Errno::XDEV)
            | Err(Errno::AGAIN)
            | Err(Errno::NAMETOOLONG) => self.walk_dir(root, 0, comps, missing, entry),
            Err(e) => Err(io_err(
                format!("cannot open directory {}", self.path_of(&rel).display()),
                e,
            )),
        }
    }

    /// [`Self::open_dir`] one component at a time from `cur`, the directory
    /// of the first `from` ones (where the trail ends): creates what is
    /// missing and names the component at fault.
    fn walk_dir(
        &mut self,
        mut cur: Rc<OwnedFd>,
        from: usize,
        comps: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        let mut version = self.trail.version;
        for i in from..comps.len() {
            match self.open_component(&cur, &comps[..=i], missing, entry)? {
                Some(fd) => {
                    // Unless opening it went elsewhere (removing containers).
                    if self.trail.version == version {
                        self.trail.push(comps[i], fd.clone());
                        version = self.trail.version;
                    }
                    cur = fd;
                }
                None => {
                    self.check_below(comps, i + 1, entry)?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(cur))
    }

    /// Refuses `comps` if, from component `from` on (missing from the
    /// upper), the layers below have a symlink or a non-directory on the
    /// way, as native refuses what its full tree has there.
    fn check_below(&mut self, comps: &[&[u8]], from: usize, entry: &str) -> Result<()> {
        for j in from..comps.len() {
            match self.below(&comps[..=j])? {
                Below::Dir => {}
                Below::Nothing => break,
                found => {
                    let sub = comps[..=j].join(&b'/');
                    return Err(bad_parent(entry, &sub, found == Below::Symlink));
                }
            }
        }
        Ok(())
    }

    /// Opens the directory `sub` in `cur`, its parent.
    fn open_component(
        &mut self,
        cur: &OwnedFd,
        sub: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        let name = cstr(sub[sub.len() - 1]);
        match rustix::fs::openat(cur, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Rc::new(fd))),
            Err(Errno::NOENT) => self.missing_dir(cur, sub, missing, entry),
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => self.not_a_dir(cur, sub, missing, entry),
            Err(Errno::NAMETOOLONG) => Err(invalid(format!(
                "entry `{entry}`: a name component is too long"
            ))),
            Err(e) => Err(io_err(
                format!(
                    "cannot open directory {}",
                    self.path_of(&sub.join(&b'/')).display()
                ),
                e,
            )),
        }
    }

    /// Directory `sub`, missing in `cur`: created or not as `missing` says,
    /// and refused where a layer below has a symlink or a non-directory
    /// that shows (native refuses it in its full tree; an upper directory
    /// there would replace it).
    fn missing_dir(
        &mut self,
        cur: &OwnedFd,
        sub: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        let below = self.below(sub)?;
        let make = match below {
            Below::Symlink | Below::Other => {
                return Err(bad_parent(entry, &sub.join(&b'/'), below == Below::Symlink));
            }
            Below::Dir => missing != Missing::Skip,
            Below::Nothing => missing == Missing::Create,
        };
        if !make {
            return Ok(None);
        }
        let fd = self.make_dir(cur, sub, missing == Missing::Merged)?;
        if below == Below::Dir {
            self.copy_up(&fd, sub)?;
        }
        Ok(Some(fd))
    }

    /// A directory made in the upper over one of the layers below, with no
    /// entry of its own in the layer (its parent position implies it, or it
    /// holds a whiteout), takes that directory's owner, mode, xattrs and
    /// times, as overlayfs's copy-up gives them and as the native tree
    /// keeps them; a `0755` root-owned stand-in would show instead. An
    /// entry for it later in the layer still sets its own.
    fn copy_up(&mut self, fd: &OwnedFd, sub: &[&[u8]]) -> Result<()> {
        let Some(lowers) = &mut self.lowers else {
            return Ok(());
        };
        let Some(meta) = lowers.dir_meta(sub)? else {
            return Ok(());
        };
        let rel = sub.join(&b'/');
        self.set_meta_fd(fd.as_fd(), &meta, &rel, false, Preset::default())?;
        let id = self.marks.find(&rel, true).expect("added");
        self.marks.set(id, COPIED_UP);
        Ok(())
    }

    /// `sub` in `cur` is not a directory: refused, unless it is a whiteout
    /// this layer made on overlay. The merged tree has nothing there then,
    /// as the native tree has nothing where the whiteout deleted it.
    fn not_a_dir(
        &mut self,
        cur: &OwnedFd,
        sub: &[&[u8]],
        missing: Missing,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>> {
        let name = cstr(sub[sub.len() - 1]);
        let st = rustix::fs::statat(cur, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok();
        let ft = st.map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode));
        let whiteout = ft == Some(rustix::fs::FileType::CharacterDevice)
            && st.is_some_and(|st| st.st_rdev == 0);
        if let Whiteouts::Overlay { user_xattr, .. } = self.opts.whiteouts
            && whiteout
        {
            if missing != Missing::Create {
                return Ok(None);
            }
            return self.replace_whiteout(cur, sub, user_xattr).map(Some);
        }
        let symlink = ft == Some(rustix::fs::FileType::Symlink);
        Err(bad_parent(entry, &sub.join(&b'/'), symlink))
    }

    /// Replaces this layer's whiteout `sub` in `cur` with a directory, made
    /// opaque as an explicit directory entry would be: deleted below, made
    /// again here.
    fn replace_whiteout(
        &mut self,
        cur: &OwnedFd,
        sub: &[&[u8]],
        user_xattr: bool,
    ) -> Result<Rc<OwnedFd>> {
        let rel = sub.join(&b'/');
        self.remove(cur, cstr(sub[sub.len() - 1]).as_c_str(), &rel)?;
        let fd = self.make_dir(cur, sub, false)?;
        self.make_opaque(&fd, &rel, user_xattr)?;
        Ok(fd)
    }

    /// Creates directory `sub` in `cur`, 0755 whatever the umask; as a
    /// container (see [`Extractor::containers`]) or as made by this layer.
    fn make_dir(&mut self, cur: &OwnedFd, sub: &[&[u8]], container: bool) -> Result<Rc<OwnedFd>> {
        let rel = sub.join(&b'/');
        let name = cstr(sub[sub.len() - 1]);
        let failed = |what: &str, e| {
            io_err(
                format!("cannot {what} directory {}", self.path_of(&rel).display()),
                e,
            )
        };
        match rustix::fs::mkdirat(cur, name.as_c_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(failed("create", e)),
        }
        let fd = rustix::fs::openat(cur, name.as_c_str(), DIR_FLAGS, Mode::empty())
            .and_then(|fd| {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                Ok(fd)
            })
            .map_err(|e| failed("open", e))?;
        if container {
            let id = self.marks.find(&rel, true).expect("added");
            self.containers.insert(id);
        } else {
            self.mark_created(&rel);
        }
        Ok(Rc::new(fd))
    }

    /// Removes the containers under `rel`, and `rel` itself if `with_rel`
    /// and it is one: what they stand for is hidden now.
    fn drop_containers(&mut self, rel: &[u8], with_rel: bool, entry: &str) -> Result<()> {
        if self.containers.is_empty() {
            return Ok(());
        }
        let Some(top) = self.marks.find(rel, false) else {
            return Ok(());
        };
        let mut gone: Vec<u32> = self
            .containers
            .iter()
            .copied()
            .filter(|&c| (with_rel && c == top) || self.marks.under(c, top))
            .collect();
        // Parents first: their removal takes the children with them.
        gone.sort_by_key(|&c| self.marks.depth(c));
        for c in gone {
            if !self.containers.contains(&c) {
                continue;
            }
            let comps: Vec<Vec<u8>> = self
                .marks
                .names(c)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect();
            let comps: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
            let path = comps.join(&b'/');
            self.forget_containers(&path);
            let (last, parent) = comps.split_last().expect("a container is not the root");
            if let Some(dir) = self.open_dir(parent, Missing::Skip, entry)? {
                self.remove(&dir, cstr(last).as_c_str(), &path)?;
            }
        }
        Ok(())
    }

    fn is_container(&mut self, rel: &[u8]) -> bool {
        !self.containers.is_empty()
            && self
                .marks
                .find(rel, false)
                .is_some_and(|id| self.containers.contains(&id))
    }

    /// `rel` and what is under it are no containers (any more).
    fn forget_containers(&mut self, rel: &[u8]) {
        if self.containers.is_empty() {
            return;
        }
        let Some(top) = self.marks.find(rel, false) else {
            return;
        };
        let marks = &self.marks;
        self.containers
            .retain(|&c| c != top && !marks.under(c, top));
    }

    /// What the layers below show at `comps` (nothing on native, or with no
    /// parent).
    fn below(&mut self, comps: &[&[u8]]) -> Result<Below> {
        match &mut self.lowers {
            Some(lowers) => Ok(lowers.at(comps)?.kind),
            None => Ok(Below::Nothing),
        }
    }

    /// Whether anything of the layers below shows inside directory `comps`.
    fn shows_below(&mut self, comps: &[&[u8]]) -> Result<bool> {
        match &mut self.lowers {
            Some(lowers) => Ok(!lowers.at(comps)?.layers.is_empty()),
            None => Ok(false),
        }
    }

    /// Makes directory `rel` (open as `fd`) opaque: nothing below shows in
    /// it from here on.
    fn make_opaque(&mut self, fd: &OwnedFd, rel: &[u8], user_xattr: bool) -> Result<()> {
        set_opaque(fd, user_xattr).map_err(|e| {
            io_err(
                format!("cannot mark {} opaque", self.path_of(rel).display()),
                e,
            )
        })?;
        clear_whiteouts(fd).map_err(|e| {
            io_err(
                format!(
                    "cannot clear the whiteouts in {}",
                    self.path_of(rel).display()
                ),
                e,
            )
        })?;
        self.hide(rel);
        // What the containers under it held whiteouts for is hidden as a
        // whole now.
        self.drop_containers(rel, false, &show(rel))
    }

    /// What the layers below have at `rel` is hidden from here on.
    fn hide(&mut self, rel: &[u8]) {
        if let Some(lowers) = &mut self.lowers {
            lowers.hide(rel);
        }
    }

    fn path_of(&self, rel: &[u8]) -> PathBuf {
        self.dest.join(OsStr::from_bytes(rel))
    }

    /// A path naming `name` in directory `dir` for the path-only xattr calls
    /// (symlinks and special files cannot be opened safely).
    fn at_path(&self, dir: &OwnedFd, name: &CStr, rel: &[u8]) -> PathBuf {
        use std::os::fd::AsRawFd;
        if self.proc_fd {
            let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
            p.push(OsStr::from_bytes(name.to_bytes()));
            p
        } else {
            self.path_of(rel)
        }
    }

    /// Drops what is remembered about open directories: they may be
    /// replaced or removed from here on.
    fn forget_dirs(&mut self) {
        self.trail.clear();
        self.new_files = None;
    }

    /// What a file created in the directory `rel` (open as `dir`) starts with.
    fn new_files_in(&mut self, rel: &[u8], dir: &OwnedFd) -> Option<NewFiles> {
        let creator = self.creator?;
        if let Some((known, facts)) = &self.new_files
            && known == rel
        {
            return *facts;
        }
        let facts = new_files(dir.as_fd(), creator);
        self.new_files = Some((rel.to_vec(), facts));
        facts
    }

    /// Removes whatever is at `name` in `dir` (recursively for directories).
    fn remove(&mut self, dir: &OwnedFd, name: &CStr, rel: &[u8]) -> Result<()> {
        self.trail.removed(rel);
        self.new_files = None;
        self.dirs.remove(rel);
        self.forget_containers(rel);
        remove_all_at(dir.as_fd(), name)
            .map_err(|e| io_err(format!("cannot remove {}", self.path_of(rel).display()), e))
    }

    /// Writes the next `len` bytes of the stream to `file`, at its offset.
    fn write_data(
        &self,
        s: &mut Stream,
        file: &mut File,
        len: u64,
        name: &str,
        rel: &[u8],
        progress: &mut dyn FnMut(),
    ) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let avail = s
                .fill()
                .map_err(|e| context(e, &format!("entry `{name}`")))?;
            if avail.is_empty() {
                return Err(invalid(format!(
                    "truncated archive: entry `{name}` ends {left} bytes early"
                )));
            }
            let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            file.write_all(&avail[..n])
                .map_err(|e| io_err(format!("cannot write {}", self.path_of(rel).display()), e))?;
            s.consume(n);
            left -= n as u64;
            progress();
        }
        Ok(())
    }

    /// Writes a GNU sparse file's data where its map puts it, and leaves
    /// the rest holes: the file takes the space its data does, where Go
    /// (containerd) writes the holes out as zeros.
    fn write_sparse(
        &self,
        s: &mut Stream,
        file: &mut File,
        map: &sparse::Sparse,
        name: &str,
        rel: &[u8],
        progress: &mut dyn FnMut(),
    ) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let failed = |e| io_err(format!("cannot write {}", self.path_of(rel).display()), e);
        // The size first: every segment lies within it, so a file larger
        // than the file system allows fails here, once, and is said of the
        // entry (as an xattr the kernel refuses is), not at a seek or a
        // write past the limit.
        file.set_len(map.size).map_err(|e| {
            if e.raw_os_error() == Some(libc::EFBIG) {
                invalid(format!(
                    "entry `{name}`: a sparse file of {} bytes, larger than this file system allows",
                    map.size
                ))
            } else {
                failed(e)
            }
        })?;
        for seg in map.segments.iter().filter(|seg| seg.len > 0) {
            file.seek(SeekFrom::Start(seg.offset)).map_err(failed)?;
            self.write_data(s, file, seg.len, name, rel, progress)?;
        }
        Ok(())
    }

    fn member(&mut self, m: Member, s: &mut Stream, progress: &mut dyn FnMut()) -> Result<()> {
        let name = show(&m.path);
        // The raw typeflag: `EntryType` reads NUL as `0`, and the two differ
        // here. An old-style (pre-POSIX) entry, NUL, whose name ends in `/`
        // is a directory, as Go's archive/tar (containerd) and Python's
        // tarfile read it; `0` is a regular file whatever its name.
        let type_byte = m.header.as_old().linkflag[0];
        let kind = match type_byte {
            b'0' | b'7' => Kind::File,
            0 if m.path.ends_with(b"/") => Kind::Dir,
            0 => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => Kind::File,
            t => {
                return Err(invalid(format!(
                    "entry `{name}`: unsupported entry type `{}`",
                    (t as char).escape_default()
                )));
            }
        };
        if m.sparse.is_some() && !matches!(kind, Kind::File) {
            return Err(invalid(format!(
                "entry `{name}`: a GNU sparse map on an entry that is not a file"
            )));
        }
        if !matches!(kind, Kind::File) && m.size != 0 {
            return Err(invalid(format!(
                "entry `{name}`: a {} entry with {} bytes of data",
                match kind {
                    Kind::Dir => "directory",
                    Kind::Symlink => "symlink",
                    Kind::Hardlink => "hardlink",
                    Kind::Char | Kind::Block => "device",
                    _ => "FIFO",
                },
                m.size
            )));
        }
        let comps = split_name(&m.path).map_err(|why| invalid(format!("entry `{name}`: {why}")))?;
        let Some((last, parent)) = comps.split_last() else {
            // The root itself: containerd ignores it, and so do we.
            if matches!(kind, Kind::Dir) {
                return Ok(());
            }
            return Err(invalid(format!(
                "entry `{name}`: a non-directory names the root of the layer"
            )));
        };
        let base: &[u8] = last;
        let rel = comps.join(&b'/');
        let parent_rel = parent.join(&b'/');

        if base.starts_with(WHITEOUT_PREFIX) {
            // Data of a whiteout (normally none) is not used.
            s.skip(m.size)
                .map_err(|e| context(e, &format!("entry `{name}`")))?;
            s.skip_padding(m.size)
                .map_err(|e| context(e, &format!("entry `{name}`")))?;
            // Under a path this layer made a non-directory (umoci writes
            // `d -> e`, then `d/.wh.x` for what directory `d` held), what
            // the layers below had is gone already: there is nothing left
            // to hide, and nothing is looked up through that path (never
            // through the symlink).
            if self.under_own_non_dir(parent) {
                return Ok(());
            }
            if base == OPAQUE_MARKER {
                return self.opaque(parent, &parent_rel, &name);
            }
            if base.starts_with(META_PREFIX) {
                return Ok(()); // aufs metadata
            }
            let target = &base[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(invalid(format!(
                    "entry `{name}`: a whiteout for an invalid name"
                )));
            }
            return self.whiteout(parent, &parent_rel, target, &name);
        }

        if matches!(kind, Kind::Char | Kind::Block) && !self.opts.allow_devices {
            return Err(invalid(format!(
                "entry `{name}`: device nodes are not allowed here (creating them needs privilege)"
            )));
        }
        if m.uid >= u64::from(u32::MAX) || m.gid >= u64::from(u32::MAX) {
            return Err(invalid(format!(
                "entry `{name}`: owner {}:{} is out of range",
                m.uid, m.gid
            )));
        }
        let mut xattrs = Vec::with_capacity(m.xattrs.len());
        for (k, v) in m.xattrs {
            if !is_overlay_xattr(&k) {
                xattrs.push((cstr(&k), v));
            }
        }
        let meta = Meta {
            mode: header_number(&m.header.as_old().mode, "mode", || m.header.mode())
                .map_err(|field| not_a_number(&name, field))?
                & 0o7777,
            uid: Uid::from_raw(m.uid as u32),
            gid: Gid::from_raw(m.gid as u32),
            mtime: m.mtime,
            atime: m.atime.unwrap_or(m.mtime),
            xattrs,
        };
        let Some(dir) = self.open_dir(parent, Missing::Create, &name)? else {
            return Err(invalid(format!(
                "entry `{name}`: its parent directory vanished"
            )));
        };
        let cname = cstr(base);
        let cname = cname.as_c_str();
        match kind {
            Kind::Dir => {
                let mut existed = false;
                match rustix::fs::mkdirat(&*dir, cname, Mode::from_raw_mode(0o700)) {
                    // New in an overlay upper over a directory below: it
                    // starts as the copy-up of that one until the entry's
                    // own metadata is set at the end, as the native tree's
                    // existing directory does (a setgid one gives its group
                    // to what is made in it meanwhile).
                    Ok(()) if self.below(&comps)? == Below::Dir => {
                        let fd = rustix::fs::openat(&*dir, cname, DIR_FLAGS, Mode::empty())
                            .map_err(|e| {
                                io_err(format!("cannot open {}", self.path_of(&rel).display()), e)
                            })?;
                        self.copy_up(&fd, &comps)?;
                        existed = true;
                    }
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = rustix::fs::statat(&*dir, cname, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| {
                                io_err(format!("cannot stat {}", self.path_of(&rel).display()), e)
                            })?;
                        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
                        if ft == rustix::fs::FileType::Directory {
                            // A copy-up stands for the directory below:
                            // the entry replaces its xattrs, as on native.
                            existed =
                                !self.marks.has(&rel, CREATED) || self.marks.has(&rel, COPIED_UP);
                        } else {
                            let was_whiteout =
                                ft == rustix::fs::FileType::CharacterDevice && st.st_rdev == 0;
                            self.remove(&dir, cname, &rel)?;
                            rustix::fs::mkdirat(&*dir, cname, Mode::from_raw_mode(0o700)).map_err(
                                |e| {
                                    io_err(
                                        format!(
                                            "cannot create directory {}",
                                            self.path_of(&rel).display()
                                        ),
                                        e,
                                    )
                                },
                            )?;
                            // What this layer had here (a whiteout, or a
                            // file over what was below, itself maybe after
                            // a whiteout) hid the layers below; the new
                            // directory must go on hiding them.
                            let hid_below = was_whiteout || self.lowers.is_some();
                            if hid_below
                                && let Whiteouts::Overlay { user_xattr, .. } = self.opts.whiteouts
                            {
                                // Deleted below, recreated here: opaque.
                                let fd = self.open_dir(&comps, Missing::Skip, &name)?.ok_or_else(
                                    || invalid(format!("entry `{name}`: the directory vanished")),
                                )?;
                                self.make_opaque(&fd, &rel, user_xattr)?;
                            }
                        }
                    }
                    Err(Errno::NAMETOOLONG) => {
                        return Err(invalid(format!(
                            "entry `{name}`: a name component is too long"
                        )));
                    }
                    Err(e) => {
                        return Err(io_err(
                            format!("cannot create directory {}", self.path_of(&rel).display()),
                            e,
                        ));
                    }
                }
                let existed = self.dirs.get(&rel).map(|d| d.existed).unwrap_or(existed);
                self.dirs.insert(rel.clone(), DirMeta { meta, existed });
            }
            Kind::File => {
                // Created with its final mode when `open` gives exactly
                // that; else 0600 until written and owned, then chmod.
                let born = self
                    .new_files_in(&parent_rel, &dir)
                    .filter(|_| meta.mode & 0o7000 == 0);
                let preset = Preset {
                    owner: born.is_some_and(|b| b.uid == meta.uid && b.gid == meta.gid),
                    mode: born.is_some_and(|b| meta.mode & b.umask == 0),
                };
                let mode = if preset.mode { meta.mode } else { 0o600 };
                let fd = self.create(&dir, cname, &rel, &name, |d, n| {
                    rustix::fs::openat(
                        d,
                        n,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(mode),
                    )
                })?;
                let mut file = File::from(fd);
                match &m.sparse {
                    None => self.write_data(s, &mut file, m.size, &name, &rel, progress)?,
                    Some(map) => self.write_sparse(s, &mut file, map, &name, &rel, progress)?,
                }
                s.skip_padding(m.size)
                    .map_err(|e| context(e, &format!("entry `{name}`")))?;
                self.set_meta_fd(file.as_fd(), &meta, &rel, false, preset)?;
            }
            Kind::Symlink => {
                if m.link.is_empty() || m.link.contains(&0) {
                    return Err(invalid(format!(
                        "entry `{name}`: a symlink with an empty or invalid target"
                    )));
                }
                // `symlinkat` says ENAMETOOLONG, which `create` would blame
                // on the name.
                if m.link.len() >= PATH_MAX {
                    return Err(invalid(format!(
                        "entry `{name}`: its symlink target is too long ({} bytes; Linux allows {})",
                        m.link.len(),
                        PATH_MAX - 1
                    )));
                }
                let target = cstr(&m.link);
                self.create(&dir, cname, &rel, &name, |d, n| {
                    rustix::fs::symlinkat(target.as_c_str(), d, n)
                })?;
                self.set_meta_at(&dir, cname, &rel, &meta, false)?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (ft, dev) = match kind {
                    Kind::Char | Kind::Block => {
                        let (major, minor) =
                            header_device(&m.header).map_err(|field| not_a_number(&name, field))?;
                        // In an overlay upper directory that node is a
                        // whiteout, on the native driver a device: refused on
                        // both, so a layer means one thing everywhere.
                        if matches!(kind, Kind::Char) && major == 0 && minor == 0 {
                            return Err(invalid(format!(
                                "entry `{name}`: a character device 0/0 is an overlay whiteout, not a file; layers write whiteouts as `.wh.NAME`"
                            )));
                        }
                        let ft = if matches!(kind, Kind::Char) {
                            rustix::fs::FileType::CharacterDevice
                        } else {
                            rustix::fs::FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                    _ => (rustix::fs::FileType::Fifo, 0),
                };
                self.create(&dir, cname, &rel, &name, |d, n| {
                    rustix::fs::mknodat(d, n, ft, Mode::from_raw_mode(0o600), dev)
                })?;
                self.set_meta_at(&dir, cname, &rel, &meta, true)?;
            }
            Kind::Hardlink => {
                let tcomps = split_name(&m.link).map_err(|why| {
                    invalid(format!(
                        "entry `{name}`: hardlink target `{}` has {why}",
                        show(&m.link)
                    ))
                })?;
                let trel = tcomps.join(&b'/');
                let inside =
                    trel.len() > rel.len() && trel.starts_with(&rel) && trel[rel.len()] == b'/';
                if trel == rel || inside || !self.marks.has(&trel, CREATED) {
                    return Err(invalid(format!(
                        "entry `{name}`: hardlink target `{}` is not an earlier entry of this layer",
                        show(&m.link)
                    )));
                }
                let (tlast, tparent) = tcomps
                    .split_last()
                    .ok_or_else(|| invalid(format!("entry `{name}`: hardlink to the root")))?;
                // What is wrong on the way is the target's: said so.
                let tdir = self
                    .open_dir(tparent, Missing::Skip, &name)
                    .map_err(|e| about_link_target(e, &name, &m.link))?
                    .ok_or_else(|| {
                        invalid(format!(
                            "entry `{name}`: hardlink target `{}` does not exist",
                            show(&m.link)
                        ))
                    })?;
                let tname = cstr(tlast);
                let st = rustix::fs::statat(&*tdir, tname.as_c_str(), AtFlags::SYMLINK_NOFOLLOW);
                match st {
                    Ok(st)
                        if rustix::fs::FileType::from_raw_mode(st.st_mode)
                            != rustix::fs::FileType::Directory => {}
                    _ => {
                        return Err(invalid(format!(
                            "entry `{name}`: hardlink target `{}` is missing or a directory",
                            show(&m.link)
                        )));
                    }
                }
                self.create(&dir, cname, &rel, &name, |d, n| {
                    rustix::fs::linkat(&*tdir, tname.as_c_str(), d, n, AtFlags::empty())
                })?;
            }
        }
        let id = self.mark_created(&rel);
        if !matches!(kind, Kind::Dir) {
            self.marks.set(id, NON_DIR);
        }
        Ok(())
    }

    /// Whether directory `comps`, or one above it, is a non-directory this
    /// layer made (as far as [`NON_DIR`] says).
    fn under_own_non_dir(&mut self, comps: &[&[u8]]) -> bool {
        let mut rel = Vec::new();
        for c in comps {
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(c);
            match self.marks.find(&rel, false) {
                None => return false,
                Some(id) if self.marks.flag(id, NON_DIR) => return true,
                Some(_) => {}
            }
        }
        false
    }

    /// Creates `name` in `dir` with `make`, replacing what is there.
    fn create<T>(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        entry: &str,
        make: impl Fn(BorrowedFd<'_>, &CStr) -> rustix::io::Result<T>,
    ) -> Result<T> {
        match make(dir.as_fd(), name) {
            Ok(t) => return Ok(t),
            Err(Errno::EXIST) => {}
            Err(Errno::NAMETOOLONG) => {
                return Err(invalid(format!(
                    "entry `{entry}`: a name component is too long"
                )));
            }
            Err(e) => {
                return Err(io_err(
                    format!("cannot create {}", self.path_of(rel).display()),
                    e,
                ));
            }
        }
        self.remove(dir, name, rel)?;
        make(dir.as_fd(), name)
            .map_err(|e| io_err(format!("cannot create {}", self.path_of(rel).display()), e))
    }

    fn chown_failed(&self, e: Errno) -> bool {
        e != Errno::PERM || self.privileged
    }

    fn xattr_failed(&self, e: Errno) -> bool {
        self.privileged || !matches!(e, Errno::PERM | Errno::NOTSUP | Errno::ACCESS)
    }

    /// The error for xattr `name` (value `value`) of entry `rel` that could
    /// not be set. The kernel's EINVAL (a malformed value, such as a
    /// `security.capability` or an ACL it cannot read), E2BIG (a value over
    /// its 64 KiB limit) and ERANGE (a name or value too long) say the
    /// layer's xattr is bad: `invalid`, naming the entry and the xattr, as
    /// other refused entries. Anything else is this side's (ENOTSUP, a file
    /// system without xattrs, stays `unsupported`).
    fn xattr_error(&self, rel: &[u8], name: &CStr, value: &[u8], e: Errno) -> LayerError {
        let why = match e {
            Errno::INVAL => "the kernel refuses it as malformed",
            Errno::TOOBIG => "its value is larger than the kernel allows (64 KiB)",
            Errno::RANGE => "its name or value is too long",
            _ => {
                return io_err(
                    format!(
                        "cannot set the xattr `{}` of {}",
                        name.to_string_lossy(),
                        self.path_of(rel).display()
                    ),
                    e,
                );
            }
        };
        invalid(format!(
            "entry `{}`: xattr `{}` ({} bytes): {why}",
            show(rel),
            show(name.to_bytes()),
            value.len()
        ))
    }

    /// Ownership, xattrs, mode and times through an open descriptor.
    fn set_meta_fd(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        rel: &[u8],
        existed: bool,
        preset: Preset,
    ) -> Result<()> {
        let what = |op: &str| format!("cannot set the {op} of {}", self.path_of(rel).display());
        if !preset.owner
            && let Err(e) = rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid))
            && self.chown_failed(e)
        {
            return Err(io_err(what("owner"), e));
        }
        if existed {
            // Replace, not merge: xattrs the layer does not list are gone.
            let list = xattr_call(|b| rustix::fs::flistxattr(fd, b))
                .map_err(|e| io_err(what("xattrs"), e))?;
            for old in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                if is_overlay_xattr(old) || meta.xattrs.iter().any(|(k, _)| k.to_bytes() == old) {
                    continue;
                }
                if let Err(e) = rustix::fs::fremovexattr(fd, cstr(old).as_c_str())
                    && self.xattr_failed(e)
                {
                    return Err(io_err(what("xattrs"), e));
                }
            }
        }
        for (k, v) in &meta.xattrs {
            if let Err(e) = rustix::fs::fsetxattr(fd, k.as_c_str(), v, XattrFlags::empty())
                && self.xattr_failed(e)
            {
                return Err(self.xattr_error(rel, k, v, e));
            }
        }
        if !preset.mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| io_err(what("mode"), e))?;
        }
        rustix::fs::futimens(fd, &times(meta)).map_err(|e| io_err(what("times"), e))?;
        Ok(())
    }

    /// The same for entries that are not opened (symlinks, devices, FIFOs).
    fn set_meta_at(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        let what = |op: &str| format!("cannot set the {op} of {}", self.path_of(rel).display());
        if let Err(e) = rustix::fs::chownat(
            dir,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        ) && self.chown_failed(e)
        {
            return Err(io_err(what("owner"), e));
        }
        if !meta.xattrs.is_empty() {
            let p = self.at_path(dir, name, rel);
            for (k, v) in &meta.xattrs {
                if let Err(e) = rustix::fs::lsetxattr(&p, k.as_c_str(), v, XattrFlags::empty())
                    && self.xattr_failed(e)
                {
                    return Err(self.xattr_error(rel, k, v, e));
                }
            }
        }
        if chmod {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| io_err(what("mode"), e))?;
        }
        rustix::fs::utimensat(dir, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(what("times"), e))?;
        Ok(())
    }

    fn whiteout(
        &mut self,
        parent: &[&[u8]],
        parent_rel: &[u8],
        target: &[u8],
        entry: &str,
    ) -> Result<()> {
        let rel = join(parent_rel, target);
        // A whiteout hides only what the layers below have (OCI image
        // spec). Where this layer itself made a directory, or put entries
        // in one, it keeps them: what the layers below have in it is hidden
        // instead, as an opaque marker would.
        if (self.dirs.contains_key(&rel) || self.marks.has(&rel, HOLDS))
            && self.is_dir(parent, target, entry)?
        {
            let mut comps = parent.to_vec();
            comps.push(target);
            return self.opaque(&comps, &rel, entry);
        }
        if let Whiteouts::Overlay { .. } = self.opts.whiteouts {
            return self.overlay_whiteout(parent, target, &rel, entry);
        }
        // The path is checked even where the whiteout then does nothing.
        let Some(dir) = self.open_dir(parent, Missing::Skip, entry)? else {
            return Ok(());
        };
        if self.marks.has(&rel, CREATED) {
            return Ok(());
        }
        self.remove(&dir, cstr(target).as_c_str(), &rel)
    }

    /// Whether `target` in directory `parent` is a directory now.
    fn is_dir(&mut self, parent: &[&[u8]], target: &[u8], entry: &str) -> Result<bool> {
        let Some(dir) = self.open_dir(parent, Missing::Skip, entry)? else {
            return Ok(false);
        };
        let st = rustix::fs::statat(&*dir, cstr(target).as_c_str(), AtFlags::SYMLINK_NOFOLLOW);
        Ok(st.is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        }))
    }

    /// A whiteout in the upper: a char device 0/0, made only where a layer
    /// below has something to hide (overlayfs shows one as a file in a
    /// directory that merges with none below).
    fn overlay_whiteout(
        &mut self,
        parent: &[&[u8]],
        target: &[u8],
        rel: &[u8],
        entry: &str,
    ) -> Result<()> {
        let mut comps = parent.to_vec();
        comps.push(target);
        if self.is_container(rel) {
            // Made only to hold markers: it goes, and what it hid shows
            // again, for the whiteout to hide as a whole.
            self.drop_containers(rel, true, entry)?;
            if let Some(lowers) = &mut self.lowers {
                lowers.unhide(rel);
            }
        }
        if self.below(&comps)? == Below::Nothing {
            // Nothing to hide; the path is still checked.
            self.open_dir(parent, Missing::Skip, entry)?;
            return Ok(());
        }
        let Some(dir) = self.open_dir(parent, Missing::Merged, entry)? else {
            return Ok(());
        };
        let cname = cstr(target);
        match rustix::fs::statat(&*dir, cname.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            // Made by this layer (or a duplicate whiteout): whiteouts only
            // hide the layers below.
            Ok(_) => return Ok(()),
            Err(Errno::NOENT) => {}
            Err(Errno::NAMETOOLONG) => {
                return Err(invalid(format!(
                    "entry `{entry}`: a name component is too long"
                )));
            }
            Err(e) => {
                return Err(io_err(
                    format!("cannot stat {}", self.path_of(rel).display()),
                    e,
                ));
            }
        }
        make_whiteout(&dir, &cname).map_err(|e| {
            io_err(
                format!("cannot create the whiteout {}", self.path_of(rel).display()),
                e,
            )
        })?;
        self.hide(rel);
        Ok(())
    }

    fn opaque(&mut self, dir: &[&[u8]], rel: &[u8], entry: &str) -> Result<()> {
        match self.opts.whiteouts {
            Whiteouts::Overlay { user_xattr, .. } => {
                if dir.is_empty() {
                    return self.opaque_root(user_xattr);
                }
                if !self.shows_below(dir)? {
                    // Nothing below to hide; the path is still checked.
                    self.open_dir(dir, Missing::Skip, entry)?;
                    return Ok(());
                }
                let Some(fd) = self.open_dir(dir, Missing::Merged, entry)? else {
                    return Ok(());
                };
                self.make_opaque(&fd, rel, user_xattr)
            }
            Whiteouts::Delete => {
                let Some(fd) = self.open_dir(dir, Missing::Skip, entry)? else {
                    return Ok(());
                };
                self.forget_dirs();
                // Walk down, keeping only what this layer created.
                let mut stack: Vec<(Rc<OwnedFd>, Vec<u8>)> = vec![(fd, rel.to_vec())];
                while let Some((fd, rel)) = stack.pop() {
                    let names = list_dir(&fd).map_err(|e| {
                        io_err(format!("cannot read {}", self.path_of(&rel).display()), e)
                    })?;
                    for (name, is_dir) in names {
                        let child = join(&rel, name.to_bytes());
                        if self.marks.has(&child, CREATED | HOLDS) {
                            if is_dir {
                                let sub = rustix::fs::openat(
                                    &*fd,
                                    name.as_c_str(),
                                    OFlags::RDONLY
                                        | OFlags::DIRECTORY
                                        | OFlags::NOFOLLOW
                                        | OFlags::CLOEXEC,
                                    Mode::empty(),
                                )
                                .map_err(|e| {
                                    io_err(
                                        format!("cannot open {}", self.path_of(&child).display()),
                                        e,
                                    )
                                })?;
                                stack.push((Rc::new(sub), child));
                            }
                        } else {
                            self.remove(&fd, name.as_c_str(), &child)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// An opaque marker for the root, on overlay, where the kernel ignores
    /// the xattr on the upper's root: a whiteout for every name the layers
    /// below show there, except those this layer made before the marker;
    /// of those, directories are made opaque (what they held below goes
    /// too, as on native). Later entries replace these whiteouts as they
    /// replace any other of this layer.
    fn opaque_root(&mut self, user_xattr: bool) -> Result<()> {
        let names = match &self.lowers {
            Some(lowers) => lowers.root_names()?,
            None => return Ok(()),
        };
        let root = self.root.clone();
        for name in names {
            let rel = name.to_bytes();
            if self.is_container(rel) {
                self.drop_containers(rel, true, ".wh..wh..opq")?;
            }
            let failed =
                |what: &str, e| io_err(format!("cannot {what} {}", self.path_of(rel).display()), e);
            let st = rustix::fs::statat(&*root, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW);
            match st {
                Err(Errno::NOENT) => {
                    make_whiteout(&root, &name).map_err(|e| failed("create the whiteout", e))?;
                    self.hide(rel);
                }
                Ok(st)
                    if rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::Directory =>
                {
                    let fd = rustix::fs::openat(&*root, name.as_c_str(), DIR_FLAGS, Mode::empty())
                        .map_err(|e| failed("open", e))?;
                    if self.shows_below(&[rel])? {
                        self.make_opaque(&fd, rel, user_xattr)?;
                    }
                }
                // This layer's own file, or its whiteout.
                Ok(_) => {}
                Err(e) => return Err(failed("stat", e)),
            }
        }
        Ok(())
    }

    /// Directory metadata, deepest first, once everything is in place.
    fn finish(&mut self) -> Result<()> {
        self.forget_dirs();
        let mut dirs: Vec<(Vec<u8>, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by(|a, b| path_order(&b.0, &a.0));
        for (rel, d) in dirs {
            let comps: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
            // Gone if replaced by a later entry or removed by a whiteout.
            let fd = match self.open_dir(&comps, Missing::Skip, &show(&rel)) {
                Ok(Some(fd)) => fd,
                Ok(None) | Err(LayerError::Invalid(_)) => continue,
                Err(e) => return Err(e),
            };
            self.set_meta_fd(fd.as_fd(), &d.meta, &rel, d.existed, Preset::default())?;
        }
        self.forget_dirs();
        Ok(())
    }
}

fn times(meta: &Meta) -> Timestamps {
    Timestamps {
        last_access: meta.atime,
        last_modification: meta.mtime,
    }
}

fn set_opaque(fd: &OwnedFd, user_xattr: bool) -> rustix::io::Result<()> {
    rustix::fs::fsetxattr(fd, opaque_xattr(user_xattr), b"y", XattrFlags::empty())
}

/// An overlay whiteout named `name` in `dir`.
fn make_whiteout(dir: &OwnedFd, name: &CStr) -> rustix::io::Result<()> {
    rustix::fs::mknodat(
        dir,
        name,
        rustix::fs::FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
}

/// What a directory entry is, as far as unpacking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Dir,
    /// An overlay whiteout: a character device 0/0.
    Whiteout,
    Other,
}

/// The entries of a directory and what each is; `stat` only where the
/// entry's type does not tell (unknown, or a character device).
fn list_entries(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, Found)>> {
    use rustix::fs::FileType;
    let mut out = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir)?;
    while let Some(ent) = entries.read() {
        let ent = ent?;
        let name = ent.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let (kind, rdev) = match ent.file_type() {
            FileType::Unknown | FileType::CharacterDevice => {
                let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                (FileType::from_raw_mode(st.st_mode), st.st_rdev)
            }
            kind => (kind, 0),
        };
        let found = match kind {
            FileType::Directory => Found::Dir,
            FileType::CharacterDevice if rdev == 0 => Found::Whiteout,
            _ => Found::Other,
        };
        out.push((name.to_owned(), found));
    }
    Ok(out)
}

/// The entries of a directory: (name, is a directory).
fn list_dir(fd: &OwnedFd) -> io::Result<Vec<(CString, bool)>> {
    Ok(list_entries(fd.as_fd())?
        .into_iter()
        .map(|(name, found)| (name, found == Found::Dir))
        .collect())
}

/// Removes the whiteouts anywhere under directory `dir`, just made opaque:
/// nothing merges under an opaque directory, so they hide nothing, and
/// overlayfs would list them (as names `lstat` cannot find).
fn clear_whiteouts(dir: &OwnedFd) -> io::Result<()> {
    // (parent, name) of directories still to clear; parents are shared, so
    // the descriptors held grow with the depth, not the width.
    let mut stack: Vec<(Rc<OwnedFd>, Option<CString>)> = vec![(Rc::new(dir.try_clone()?), None)];
    while let Some((parent, name)) = stack.pop() {
        let fd = match name {
            Some(name) => Rc::new(rustix::fs::openat(
                &*parent,
                name.as_c_str(),
                DIR_FLAGS,
                Mode::empty(),
            )?),
            None => parent,
        };
        for (name, found) in list_entries(fd.as_fd())? {
            match found {
                Found::Dir => stack.push((Rc::clone(&fd), Some(name))),
                Found::Whiteout => rustix::fs::unlinkat(&*fd, name.as_c_str(), AtFlags::empty())?,
                Found::Other => {}
            }
        }
    }
    Ok(())
}

/// Removes `name` in `dir`, recursively, without following symlinks and
/// without recursion on the call stack.
fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let how = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let top = rustix::fs::openat(dir, name, how, Mode::empty())?;
    let mut frames: Vec<(OwnedFd, CString)> = vec![(top, name.to_owned())];
    while let Some((fd, _)) = frames.last() {
        let mut descend = None;
        for (child, is_dir) in list_dir(fd)? {
            if is_dir {
                descend = Some(child);
                break;
            }
            match rustix::fs::unlinkat(fd, child.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    descend = Some(child);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        match descend {
            Some(child) => {
                let sub = rustix::fs::openat(fd, child.as_c_str(), how, Mode::empty())?;
                frames.push((sub, child));
            }
            None => {
                let (fd, n) = frames.pop().expect("a frame");
                drop(fd);
                let parent = match frames.last() {
                    Some((p, _)) => p.as_fd(),
                    None => dir,
                };
                match rustix::fs::unlinkat(parent, n.as_c_str(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// Path order of tar entries: component by component (`a/b` before `a-b`),
/// so a directory's entries follow it directly.
fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: &u8| if *c == b'/' { 0u8 } else { *c };
    a.iter().map(key).cmp(b.iter().map(key))
}

// ---------------------------------------------------------------------------
// write: change sets
// ---------------------------------------------------------------------------

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

enum Item {
    /// An empty marker file (`.wh.NAME` or `.wh..wh..opq`), by tar path.
    Marker(Vec<u8>),
    /// A filesystem object: its path in the layer (and under the tree the
    /// layer is written from), and lstat.
    Node(Vec<u8>, Metadata),
}

impl Item {
    fn rel(&self) -> &[u8] {
        match self {
            Item::Marker(r) | Item::Node(r, _) => r,
        }
    }
}

fn read_err(p: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |e| io_err(format!("cannot read {}", p.display()), e)
}

/// [`longpath::reach`], with the error naming `p`.
fn reach(p: &Path) -> Result<longpath::Reach<'_>> {
    longpath::reach(p).map_err(read_err(p))
}

/// Sorted names of a directory's entries.
fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for ent in std::fs::read_dir(&*reach(dir)?).map_err(read_err(dir))? {
        names.push(ent.map_err(read_err(dir))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn lstat(p: &Path) -> Result<Metadata> {
    std::fs::symlink_metadata(&*reach(p)?).map_err(read_err(p))
}

fn read_link(p: &Path) -> Result<PathBuf> {
    std::fs::read_link(&*reach(p)?).map_err(read_err(p))
}

/// Opens a regular file of the walk for reading.
fn open_file(p: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&*reach(p)?)
        .map_err(read_err(p))
}

fn is_whiteout_dev(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

#[cfg(test)]
fn is_opaque(p: &Path) -> Result<bool> {
    Ok(overlay_marks(p)?.opaque)
}

/// What overlayfs left on an upper entry, from one listing of its xattrs.
#[derive(Default)]
struct OverlayMarks {
    /// `opaque=y`: the directory hides what is below it.
    opaque: bool,
    /// A redirect (`redirect_dir=on`): a renamed directory whose content is
    /// still below, under its old name.
    redirect: bool,
}

fn overlay_marks(p: &Path) -> Result<OverlayMarks> {
    let at = reach(p)?;
    let list = match xattr_call(|b| rustix::fs::llistxattr(&*at, b)) {
        Ok(list) => list,
        Err(Errno::NOTSUP) => return Ok(OverlayMarks::default()),
        Err(e) => {
            return Err(io_err(
                format!("cannot list the xattrs of {}", p.display()),
                e,
            ));
        }
    };
    let mut marks = OverlayMarks::default();
    for name in list.split(|b| *b == 0) {
        let Some(mark) = name
            .strip_prefix(b"trusted.overlay.")
            .or_else(|| name.strip_prefix(b"user.overlay."))
        else {
            continue;
        };
        match mark {
            b"redirect" => marks.redirect = true,
            b"opaque" => {
                let mut v = [0u8; 4];
                let name = cstr(name);
                marks.opaque |= matches!(
                    rustix::fs::lgetxattr(&*at, name.as_c_str(), &mut v[..]),
                    Ok(1) if v[0] == b'y'
                );
            }
            _ => {}
        }
    }
    Ok(marks)
}

/// Refuses an upper entry that is not the change it looks like: a
/// directory renamed with `redirect_dir=on` (its content is still below,
/// under the old name) or a file changed with `metacopy=on` (its data is
/// still below). Written as they are, they would be an empty directory and
/// a file of zeros.
fn left_below(rel: &[u8], option: &str) -> LayerError {
    LayerError::Precondition(format!(
        "`{}` in its upper directory was left by an overlay mount with {option}=on: \
         its {} is still in a lower layer, so the upper directory is not the \
         snapshot's change",
        show(rel),
        if option == "metacopy" {
            "data"
        } else {
            "content"
        }
    ))
}

/// The opaque marker an upper directory adds, if any, after refusing a
/// redirected one ([`left_below`]). Files are checked for a metacopy where
/// their xattrs are read anyway ([`TarWriter::node`]).
fn upper_dir_marker(p: &Path, rel: &[u8]) -> Result<Option<Item>> {
    let marks = overlay_marks(p)?;
    if marks.redirect {
        return Err(left_below(rel, "redirect_dir"));
    }
    Ok(marks.opaque.then(|| {
        Item::Marker(if rel == b"." {
            OPAQUE_MARKER.to_vec()
        } else {
            join(rel, OPAQUE_MARKER)
        })
    }))
}

fn walk_upper(upper: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    items.extend(upper_dir_marker(upper, b".")?);
    let mut stack = vec![(Vec::new(), upper.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        for name in sorted_names(&dir)? {
            let path = dir.join(&name);
            let md = lstat(&path)?;
            let crel = join(&rel, name.as_bytes());
            if is_whiteout_dev(&md) {
                items.push(Item::Marker(join(
                    &rel,
                    &[WHITEOUT_PREFIX, name.as_bytes()].concat(),
                )));
                continue;
            }
            if md.file_type().is_socket() {
                continue;
            }
            if md.is_dir() {
                items.extend(upper_dir_marker(&path, &crel)?);
                stack.push((crel.clone(), path.clone()));
            }
            items.push(Item::Node(crel, md));
        }
    }
    Ok(items)
}

/// Runs an xattr call with a small buffer, then a 64 KiB one (the kernel's
/// limit for names and values) when that is too small.
fn xattr_call(
    mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut small = [0u8; 1024];
    match f(&mut small) {
        Ok(n) => Ok(small[..n].to_vec()),
        Err(Errno::RANGE) => {
            let mut big = vec![0u8; 64 * 1024];
            let n = f(&mut big)?;
            big.truncate(n);
            Ok(big)
        }
        Err(e) => Err(e),
    }
}

/// Non-overlay xattrs of `p`, sorted by name.
fn xattrs_of(p: &Path) -> Result<Pairs> {
    Ok(xattrs_listed(p)?.0)
}

/// Non-overlay xattrs of `p`, sorted by name, and whether overlay's
/// `metacopy` is among the others.
fn xattrs_listed(p: &Path) -> Result<(Pairs, bool)> {
    let at = reach(p)?;
    let list = match xattr_call(|b| rustix::fs::llistxattr(&*at, b)) {
        Ok(list) => list,
        Err(Errno::NOTSUP) => return Ok((Vec::new(), false)),
        Err(e) => {
            return Err(io_err(
                format!("cannot list the xattrs of {}", p.display()),
                e,
            ));
        }
    };
    let (mut out, mut metacopy) = (Vec::new(), false);
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if is_overlay_xattr(name) {
            metacopy |= name.ends_with(b".overlay.metacopy");
            continue;
        }
        let cname = cstr(name);
        match xattr_call(|b| rustix::fs::lgetxattr(&*at, cname.as_c_str(), b)) {
            Ok(value) => out.push((name.to_vec(), value)),
            // Removed meanwhile.
            Err(Errno::NODATA) => {}
            Err(e) => {
                return Err(io_err(
                    format!("cannot read xattr `{}` of {}", show(name), p.display()),
                    e,
                ));
            }
        }
    }
    out.sort();
    Ok((out, metacopy))
}

/// Non-overlay xattrs of an open file, sorted by name.
fn xattrs_fd(fd: BorrowedFd<'_>) -> rustix::io::Result<Pairs> {
    let list = match xattr_call(|b| rustix::fs::flistxattr(fd, b)) {
        Ok(list) => list,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if is_overlay_xattr(name) {
            continue;
        }
        let cname = cstr(name);
        match xattr_call(|b| rustix::fs::fgetxattr(fd, cname.as_c_str(), b)) {
            Ok(value) => out.push((name.to_vec(), value)),
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Whether files `a` and `b`, of `len` bytes each, hold the same bytes.
/// When one has holes and both have them in the same places (a native copy
/// keeps them), only their data is read: a sparse file of terabytes with a
/// few bytes of data is compared in microseconds, not hours.
fn same_content(a: &Path, b: &Path, len: u64, sparse: bool) -> Result<bool> {
    let mut fa = open_file(a)?;
    let mut fb = open_file(b)?;
    if sparse {
        if let Some(data) = same_data_map(&fa, &fb, len).map_err(read_err(a))? {
            return same_ranges(&fa, &fb, &data).map_err(read_err(a));
        }
        // The walk moved the file offsets the whole comparison reads from.
        use std::io::Seek;
        fa.rewind().map_err(read_err(a))?;
        fb.rewind().map_err(read_err(b))?;
    }
    let mut ba = vec![0u8; 128 * 1024];
    let mut bb = vec![0u8; 128 * 1024];
    loop {
        let na = read_up_to(&mut fa, &mut ba).map_err(read_err(a))?;
        let nb = read_up_to(&mut fb, &mut bb).map_err(read_err(b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// The data segments (offset, end) of `a` and `b` if both have the same
/// ones below `len`; None if they differ, or the file system cannot tell
/// holes (then the whole files are compared).
fn same_data_map(a: &File, b: &File, len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let ours = super::copy::data_segments(a, len)?;
    let theirs = super::copy::data_segments(b, len)?;
    Ok(if ours == theirs { ours } else { None })
}

/// Whether `a` and `b` hold the same bytes in each of `ranges`.
fn same_ranges(a: &File, b: &File, ranges: &[(u64, u64)]) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut ba = vec![0u8; 128 * 1024];
    let mut bb = vec![0u8; 128 * 1024];
    for &(start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).map_or(ba.len(), |n| n.min(ba.len()));
            // A file cut short while being read (an active's) differs.
            match (
                a.read_exact_at(&mut ba[..n], at),
                b.read_exact_at(&mut bb[..n], at),
            ) {
                (Ok(()), Ok(())) if ba[..n] == bb[..n] => {}
                (Err(e), _) | (_, Err(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
                    return Err(e);
                }
                _ => return Ok(false),
            }
            at += n as u64;
        }
    }
    Ok(true)
}

/// Whether `new` differs from `old` (same name in the two trees).
fn changed(old: &Path, om: &Metadata, new: &Path, nm: &Metadata) -> Result<bool> {
    let (ot, nt) = (om.file_type(), nm.file_type());
    let same_type = ot.is_dir() == nt.is_dir()
        && ot.is_file() == nt.is_file()
        && ot.is_symlink() == nt.is_symlink()
        && ot.is_char_device() == nt.is_char_device()
        && ot.is_block_device() == nt.is_block_device()
        && ot.is_fifo() == nt.is_fifo();
    if !same_type
        || om.mode() != nm.mode()
        || om.uid() != nm.uid()
        || om.gid() != nm.gid()
        || om.mtime() != nm.mtime()
        || om.mtime_nsec() != nm.mtime_nsec()
        || (!nt.is_dir() && om.size() != nm.size())
        || ((nt.is_char_device() || nt.is_block_device()) && om.rdev() != nm.rdev())
    {
        return Ok(true);
    }
    if nt.is_symlink() {
        let ol = read_link(old)?;
        let nl = read_link(new)?;
        if ol != nl {
            return Ok(true);
        }
    }
    if xattrs_of(old)? != xattrs_of(new)? {
        return Ok(true);
    }
    if nt.is_file() && !(om.dev() == nm.dev() && om.ino() == nm.ino()) {
        let holes = super::copy::may_have_holes(om) || super::copy::may_have_holes(nm);
        return Ok(!same_content(old, new, nm.size(), holes)?);
    }
    Ok(false)
}

fn walk_compare(old: Option<&Path>, new: &Path) -> Result<Vec<Item>> {
    let mut items: Vec<Item> = Vec::new();
    // Every multiply-linked non-directory of `new`, by inode.
    let mut links: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut stack: Vec<(Vec<u8>, Option<PathBuf>, PathBuf)> =
        vec![(Vec::new(), old.map(Path::to_path_buf), new.to_path_buf())];
    let mut note_link = |rel: &[u8], md: &Metadata| {
        if !md.is_dir() && md.nlink() > 1 {
            links
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.to_vec());
        }
    };
    while let Some((rel, odir, ndir)) = stack.pop() {
        let nnames = sorted_names(&ndir)?;
        let onames = match &odir {
            Some(o) => sorted_names(o)?,
            None => Vec::new(),
        };
        // Sockets are never in a layer: treat them as absent on both sides.
        let mut olive: BTreeMap<Vec<u8>, (PathBuf, Metadata)> = BTreeMap::new();
        if let Some(o) = &odir {
            for n in onames {
                let p = o.join(&n);
                let md = lstat(&p)?;
                if !md.file_type().is_socket() {
                    olive.insert(n.as_bytes().to_vec(), (p, md));
                }
            }
        }
        for n in nnames {
            let np = ndir.join(&n);
            let nm = lstat(&np)?;
            if nm.file_type().is_socket() {
                continue;
            }
            let crel = join(&rel, n.as_bytes());
            note_link(&crel, &nm);
            match olive.remove(n.as_bytes()) {
                None => {
                    if nm.is_dir() {
                        stack.push((crel.clone(), None, np.clone()));
                    }
                    items.push(Item::Node(crel, nm));
                }
                Some((op, om)) => {
                    let is_changed = changed(&op, &om, &np, &nm)?;
                    if nm.is_dir() {
                        stack.push((crel.clone(), om.is_dir().then_some(op), np.clone()));
                    }
                    if is_changed {
                        items.push(Item::Node(crel, nm));
                    }
                }
            }
        }
        for gone in olive.into_keys() {
            items.push(Item::Marker(join(&rel, &[WHITEOUT_PREFIX, &gone].concat())));
        }
    }
    // The paths emitted, borrowed from the items (no copy of each path).
    let mut have: HashSet<&[u8]> = items.iter().map(Item::rel).collect();
    // Every link of a changed multiply-linked file.
    let mut extra = Vec::new();
    for item in &items {
        if let Item::Node(_, md) = item
            && let Some(group) = links.get(&(md.dev(), md.ino()))
        {
            for r in group {
                if have.insert(r) {
                    let p = new.join(OsStr::from_bytes(r));
                    extra.push(Item::Node(r.clone(), lstat(&p)?));
                }
            }
        }
    }
    // Every parent directory of an emitted entry.
    let mut parents = Vec::new();
    for item in items.iter().chain(&extra) {
        let mut r = item.rel();
        while let Some(i) = r.iter().rposition(|b| *b == b'/') {
            r = &r[..i];
            if !have.insert(r) {
                break;
            }
            let p = new.join(OsStr::from_bytes(r));
            parents.push(Item::Node(r.to_vec(), lstat(&p)?));
        }
    }
    drop(have);
    items.extend(extra);
    items.extend(parents);
    Ok(items)
}

// ---------------------------------------------------------------------------
// write: the tar stream
// ---------------------------------------------------------------------------

/// Hashes and counts what passes through.
struct HashWriter<W> {
    inner: W,
    hasher: Option<Digester>,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<'a> {
    None(HashWriter<&'a mut dyn Write>),
    Gzip(flate2::write::GzEncoder<HashWriter<&'a mut dyn Write>>),
    Zstd(zstd::stream::write::Encoder<'static, HashWriter<&'a mut dyn Write>>),
}

impl Write for Encoder<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<'a> Encoder<'a> {
    fn finish(self) -> io::Result<HashWriter<&'a mut dyn Write>> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

struct TarWriter<'a, 'p> {
    out: BufWriter<HashWriter<Encoder<'a>>>,
    progress: &'p mut dyn FnMut(u64),
    reported: u64,
    epoch: Option<i64>,
    buf: Vec<u8>,
    /// Writing an overlay upper directory: a metacopy file is refused.
    from_upper: bool,
}

const USTAR_MAX_ID: u64 = 0o7777777;
const USTAR_MAX_SIZE: u64 = 0o77777777777;

fn out_err(e: io::Error) -> LayerError {
    io_err("cannot write the layer", e)
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Splits a long name into ustar prefix and name, if possible.
fn ustar_split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((b"", path));
    }
    // The prefix takes as much as it can; the rest must fit in name.
    let limit = path.len().min(156);
    let i = path[..limit].iter().rposition(|b| *b == b'/')?;
    let (prefix, name) = (&path[..i], &path[i + 1..]);
    (i > 0 && !name.is_empty() && name.len() <= 100).then_some((prefix, name))
}

struct EntryHead<'x> {
    path: &'x [u8],
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: (i64, i64),
    link: &'x [u8],
    dev: (u32, u32),
    xattrs: &'x [(Vec<u8>, Vec<u8>)],
}

impl TarWriter<'_, '_> {
    fn tick(&mut self) {
        let now = self.out.get_ref().count + self.out.buffer().len() as u64;
        if now - self.reported >= PROGRESS_STEP {
            self.reported = now;
            (self.progress)(now);
        }
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.out
            .write_all(&[0u8; BLOCK][..pad as usize])
            .map_err(out_err)
    }

    fn head(&mut self, h: &EntryHead<'_>) -> Result<()> {
        let mut pax = Vec::new();
        let (mut sec, mut nsec) = h.mtime;
        if let Some(epoch) = self.epoch
            && (sec, nsec) > (epoch, 0)
        {
            (sec, nsec) = (epoch, 0);
        }
        let split = ustar_split(h.path);
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if split.is_none() {
            records.push((b"path".to_vec(), h.path.to_vec()));
        }
        if h.link.len() > 100 {
            records.push((b"linkpath".to_vec(), h.link.to_vec()));
        }
        if h.uid > USTAR_MAX_ID {
            records.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
        }
        if h.gid > USTAR_MAX_ID {
            records.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
        }
        if h.size > USTAR_MAX_SIZE {
            records.push((b"size".to_vec(), h.size.to_string().into_bytes()));
        }
        if nsec != 0 || sec < 0 || sec as u64 > USTAR_MAX_SIZE {
            let mut t = if sec < 0 && nsec != 0 {
                // -1.25 s is sec -2, nsec 750000000.
                format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec)
            } else {
                format!("{sec}.{nsec:09}")
            };
            while t.ends_with('0') {
                t.pop();
            }
            if t.ends_with('.') {
                t.pop();
            }
            records.push((b"mtime".to_vec(), t.into_bytes()));
        }
        for (k, v) in h.xattrs {
            // A PAX keyword ends at its first `=`: every reader would take
            // the rest of such a name as the value (Go's writer refuses it).
            if k.contains(&b'=') {
                return Err(invalid(format!(
                    "`{}` has an xattr whose name holds `=` (`{}`), which a layer cannot carry",
                    show(h.path),
                    show(k)
                )));
            }
            records.push(([XATTR_PAX_PREFIX, k].concat(), v.clone()));
        }
        records.sort();
        for (k, v) in &records {
            pax_record(&mut pax, k, v);
        }
        if !pax.is_empty() {
            let trimmed = h.path.strip_suffix(b"/").unwrap_or(h.path);
            let (dir, base) = match trimmed.iter().rposition(|b| *b == b'/') {
                Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
                None => (&b""[..], trimmed),
            };
            let name = [dir, b"PaxHeaders.0/", base].concat();
            let mut x = tar::Header::new_ustar();
            set_field(&mut x.as_old_mut().name, &name);
            x.set_mode(0o644);
            x.set_uid(0);
            x.set_gid(0);
            x.set_mtime(0);
            x.set_size(pax.len() as u64);
            x.set_entry_type(tar::EntryType::XHeader);
            x.set_cksum();
            self.out.write_all(x.as_bytes()).map_err(out_err)?;
            self.out.write_all(&pax).map_err(out_err)?;
            self.pad(pax.len() as u64)?;
        }
        let mut hd = tar::Header::new_ustar();
        {
            let u = hd.as_ustar_mut().expect("a ustar header");
            match split {
                Some((prefix, name)) => {
                    set_field(&mut u.prefix, prefix);
                    set_field(&mut u.name, name);
                }
                None => set_field(&mut u.name, h.path),
            }
            set_field(&mut u.linkname, h.link);
        }
        hd.set_mode(h.mode);
        hd.set_uid(h.uid);
        hd.set_gid(h.gid);
        hd.set_size(h.size);
        hd.set_mtime(sec.clamp(0, USTAR_MAX_SIZE as i64) as u64);
        hd.set_entry_type(tar::EntryType::new(h.kind));
        if matches!(h.kind, b'3' | b'4') {
            hd.set_device_major(h.dev.0).map_err(out_err)?;
            hd.set_device_minor(h.dev.1).map_err(out_err)?;
        }
        hd.set_cksum();
        self.out.write_all(hd.as_bytes()).map_err(out_err)
    }

    fn marker(&mut self, path: &[u8]) -> Result<()> {
        self.head(&EntryHead {
            path,
            kind: b'0',
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (0, 0),
            link: b"",
            dev: (0, 0),
            xattrs: &[],
        })
    }

    fn node(
        &mut self,
        rel: &[u8],
        path: &Path,
        md: &Metadata,
        first_link: Option<&[u8]>,
    ) -> Result<()> {
        let ft = md.file_type();
        let (xattrs, metacopy) = xattrs_listed(path)?;
        if metacopy && self.from_upper && ft.is_file() {
            return Err(left_below(rel, "metacopy"));
        }
        let mut head = EntryHead {
            path: rel,
            kind: b'0',
            mode: md.mode() & 0o7777,
            uid: u64::from(md.uid()),
            gid: u64::from(md.gid()),
            size: 0,
            mtime: (md.mtime(), md.mtime_nsec()),
            link: b"",
            dev: (0, 0),
            xattrs: &xattrs,
        };
        if let Some(target) = first_link {
            head.kind = b'1';
            head.link = target;
            return self.head(&head);
        }
        if ft.is_dir() {
            let name = [rel, b"/"].concat();
            head.path = &name;
            head.kind = b'5';
            return self.head(&head);
        }
        if ft.is_symlink() {
            let target = read_link(path)?;
            head.kind = b'2';
            head.link = target.as_os_str().as_bytes();
            return self.head(&head);
        }
        if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            head.kind = if ft.is_char_device() {
                b'3'
            } else if ft.is_block_device() {
                b'4'
            } else {
                b'6'
            };
            let rdev = md.rdev();
            head.dev = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
            return self.head(&head);
        }
        // A regular file.
        let mut file = open_file(path)?;
        let size = md.len();
        head.size = size;
        self.head(&head)?;
        let mut left = size;
        let mut buf = std::mem::take(&mut self.buf);
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let got = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(io_err(
                        format!("cannot read {}", path.display()),
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank while being read",
                        ),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(format!("cannot read {}", path.display()), e)),
            };
            self.out.write_all(&buf[..got]).map_err(out_err)?;
            left -= got as u64;
            self.tick();
        }
        self.buf = buf;
        self.pad(size)
    }
}

/// Write the layer tarball to `out`. Reproducible: entries sorted by path
/// (parents before children, `.wh.` markers in path order), numeric uid/gid
/// only, mtimes clamped to `source_date_epoch` when Some, gzip header without
/// mtime/name, same tree => same bytes. Hardlinks within the layer are
/// emitted once as a file and then as hardlink entries (first path in sort
/// order is the file). xattrs (all namespaces except overlay's own) as PAX
/// `SCHILY.xattr.NAME` records. Sockets are skipped. `progress` gets the
/// uncompressed bytes written so far.
pub fn write(
    changes: Changes<'_>,
    out: &mut dyn Write,
    compression: Compression,
    source_date_epoch: Option<i64>,
    progress: &mut dyn FnMut(u64),
) -> Result<Digests> {
    let from_upper = matches!(changes, Changes::Upper(_));
    let (mut items, tree) = match changes {
        Changes::Upper(upper) => (walk_upper(upper)?, upper),
        Changes::Compare { old, new } => (walk_compare(old, new)?, new),
    };
    items.sort_by(|a, b| path_order(a.rel(), b.rel()));
    items.dedup_by(|a, b| a.rel() == b.rel());

    let raw = HashWriter {
        inner: out,
        hasher: (compression != Compression::None).then(Digester::new),
        count: 0,
    };
    let enc = match compression {
        Compression::None => Encoder::None(raw),
        Compression::Gzip => Encoder::Gzip(
            flate2::GzBuilder::new()
                .operating_system(255)
                .write(raw, flate2::Compression::new(6)),
        ),
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(raw, 3)
                .map_err(|e| io_err("cannot start a zstd encoder", e))?;
            z.include_checksum(true)
                .map_err(|e| io_err("cannot start a zstd encoder", e))?;
            Encoder::Zstd(z)
        }
    };
    let mut tw = TarWriter {
        out: BufWriter::with_capacity(
            COPY_BUF,
            HashWriter {
                inner: enc,
                hasher: Some(Digester::new()),
                count: 0,
            },
        ),
        progress,
        reported: 0,
        epoch: source_date_epoch,
        buf: vec![0u8; COPY_BUF],
        from_upper,
    };
    let mut first: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for item in &items {
        match item {
            Item::Marker(rel) => tw.marker(rel)?,
            Item::Node(rel, md) => {
                let mut link = None;
                if !md.is_dir() && md.nlink() > 1 {
                    match first.get(&(md.dev(), md.ino())) {
                        Some(target) => link = Some(target.clone()),
                        None => {
                            first.insert((md.dev(), md.ino()), rel.clone());
                        }
                    }
                }
                let path = tree.join(OsStr::from_bytes(rel));
                tw.node(rel, &path, md, link.as_deref())?;
            }
        }
        tw.tick();
    }
    tw.out.write_all(&[0u8; 2 * BLOCK]).map_err(out_err)?;
    let TarWriter { out, progress, .. } = tw;
    let tar = out.into_inner().map_err(|e| out_err(e.into_error()))?;
    let HashWriter {
        inner: enc,
        hasher: diff_hasher,
        count: tar_bytes,
    } = tar;
    let mut raw = enc.finish().map_err(out_err)?;
    raw.flush().map_err(out_err)?;
    progress(tar_bytes);
    let diff_id = sha256_string(diff_hasher.expect("a hasher").finish());
    let digest = match raw.hasher {
        Some(h) => sha256_string(h.finish()),
        None => diff_id.clone(),
    };
    Ok(Digests {
        digest,
        diff_id,
        compression: compression.as_str(),
        size: raw.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::process::Command;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Skips a test that needs root (devices, chown, trusted xattrs, mounts).
    macro_rules! need_root {
        () => {
            if !is_root() {
                eprintln!("skipped: needs root");
                return;
            }
        };
    }

    fn sh(cmd: &str) {
        let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success(), "command failed: {cmd}");
    }

    fn set_mtime(p: &Path, sec: i64, nsec: i64) {
        let t = Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        rustix::fs::chmod(p, Mode::from_raw_mode(mode)).unwrap();
    }

    fn setx(p: &Path, name: &CStr, value: &[u8]) {
        rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()).unwrap();
    }

    fn mknod(p: &Path, ft: rustix::fs::FileType, major: u32, minor: u32) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            ft,
            Mode::from_raw_mode(0o640),
            rustix::fs::makedev(major, minor),
        )
        .unwrap();
    }

    /// A v2 file capability (cap_dac_override|cap_fowner = 0x0a, a newline).
    const CAP: [u8; 20] = [
        0, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// A tree with every kind of entry `write` and `apply` support.
    fn build_full_tree(root: &Path) {
        std::fs::write(root.join("file"), b"hello\n").unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        let big: Vec<u8> = (0..5 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(root.join("big"), &big).unwrap();
        std::fs::create_dir(root.join("private")).unwrap();
        std::fs::write(root.join("private/secret"), b"s").unwrap();
        chmod(&root.join("private"), 0o700);
        std::fs::create_dir(root.join("sgid")).unwrap();
        chmod(&root.join("sgid"), 0o2755);
        std::fs::create_dir(root.join("tmp")).unwrap();
        chmod(&root.join("tmp"), 0o1777);
        std::fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("file", root.join("link")).unwrap();
        std::fs::write(root.join("hard1"), b"linked").unwrap();
        std::fs::hard_link(root.join("hard1"), root.join("hard2")).unwrap();
        mknod(&root.join("fifo"), rustix::fs::FileType::Fifo, 0, 0);
        std::fs::create_dir(root.join("dev")).unwrap();
        mknod(
            &root.join("dev/null"),
            rustix::fs::FileType::CharacterDevice,
            1,
            3,
        );
        mknod(
            &root.join("dev/loop0"),
            rustix::fs::FileType::BlockDevice,
            7,
            0,
        );
        std::fs::write(root.join("owned"), b"mine").unwrap();
        std::os::unix::fs::lchown(root.join("owned"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("private"), Some(1234), Some(5678)).unwrap();
        std::fs::write(root.join("capped"), b"\x7fELF").unwrap();
        setx(&root.join("capped"), c"security.capability", &CAP);
        setx(&root.join("file"), c"user.comment", b"a\nbinary\0value=1");
        setx(&root.join("sgid"), c"trusted.note", b"t");
        setx(&root.join("link"), c"trusted.onlink", b"l");
        // Past the first 1 KiB buffers: a big value, a long list.
        setx(&root.join("empty"), c"user.big", &[b'v'; 3000]);
        std::fs::write(root.join("many-xattrs"), b"").unwrap();
        for i in 0..60 {
            let name = CString::new(format!("user.attribute-with-a-long-name-{i:03}")).unwrap();
            setx(&root.join("many-xattrs"), &name, format!("{i}").as_bytes());
        }
        let long = "n".repeat(200);
        std::fs::create_dir_all(root.join("deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")).unwrap();
        std::fs::write(root.join(&long), b"long name").unwrap();
        std::fs::write(
            root.join(format!("deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/{long}")),
            b"long path",
        )
        .unwrap();
        std::os::unix::fs::symlink("t".repeat(150), root.join("longlink")).unwrap();
        std::os::unix::fs::symlink(&long, root.join("to-long")).unwrap();
        std::fs::hard_link(root.join(&long), root.join("hard-long")).unwrap();
        chmod(&root.join("suid"), 0o4755);
        set_mtime(&root.join("file"), 1_600_000_000, 123_456_789);
        set_mtime(&root.join("link"), 1_500_000_000, 5);
        set_mtime(&root.join("fifo"), 1_400_000_000, 0);
        set_mtime(&root.join("sgid"), 1_300_000_000, 999_999_999);
        set_mtime(&root.join("private"), 1_200_000_000, 1);
        set_mtime(&root.join("dev"), 1_100_000_000, 0);
    }

    fn list_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v = xattrs_of(p).unwrap();
        v.retain(|(k, _)| !k.starts_with(b"security.selinux"));
        v
    }

    /// Everything `apply` must reproduce, by path (the root excluded).
    fn snapshot(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut groups: HashMap<(u64, u64), String> = HashMap::new();
        let mut stack = vec![(String::new(), root.to_path_buf())];
        while let Some((rel, dir)) = stack.pop() {
            for name in sorted_names(&dir).unwrap() {
                let p = dir.join(&name);
                let r = if rel.is_empty() {
                    name.to_string_lossy().into_owned()
                } else {
                    format!("{rel}/{}", name.to_string_lossy())
                };
                let md = std::fs::symlink_metadata(&p).unwrap();
                let ft = md.file_type();
                let mut d = format!(
                    "mode={:o} owner={}:{} mtime={}.{:09}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    md.mtime_nsec()
                );
                if ft.is_file() {
                    let data = std::fs::read(&p).unwrap();
                    d += &format!(
                        " size={} sha={}",
                        data.len(),
                        hex::encode(Sha256::digest(&data))
                    );
                }
                if ft.is_symlink() {
                    d += &format!(" target={}", std::fs::read_link(&p).unwrap().display());
                }
                if ft.is_char_device() || ft.is_block_device() {
                    d += &format!(
                        " rdev={}:{}",
                        rustix::fs::major(md.rdev()),
                        rustix::fs::minor(md.rdev())
                    );
                }
                for (k, v) in list_xattrs(&p) {
                    d += &format!(" xattr:{}={}", show(&k), hex::encode(v));
                }
                if !ft.is_dir() && md.nlink() > 1 {
                    let g = groups
                        .entry((md.dev(), md.ino()))
                        .or_insert_with(|| r.clone());
                    d += &format!(" group={g}");
                }
                if ft.is_dir() {
                    stack.push((r.clone(), p.clone()));
                }
                out.insert(r, d);
            }
        }
        out
    }

    fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) {
        for (k, v) in a {
            assert_eq!(Some(v), b.get(k), "entry {k}");
        }
        for k in b.keys() {
            assert!(a.contains_key(k), "extra entry {k}");
        }
    }

    fn opts(whiteouts: Whiteouts) -> ApplyOptions {
        ApplyOptions {
            whiteouts,
            max_size: 1 << 40,
            allow_devices: true,
        }
    }

    fn write_vec(changes: Changes<'_>, c: Compression, sde: Option<i64>) -> (Vec<u8>, Digests) {
        let mut out = Vec::new();
        let mut last = 0;
        let d = write(changes, &mut out, c, sde, &mut |n| {
            assert!(n >= last);
            last = n;
        })
        .unwrap();
        assert_eq!(d.size, out.len() as u64);
        (out, d)
    }

    fn apply_vec(data: &[u8], dest: &Path, o: &ApplyOptions) -> Result<Digests> {
        apply(&mut &data[..], dest, o, &mut |_| {})
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    /// The entry names of a plain tar, in order.
    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| show(&e.unwrap().path_bytes()))
            .collect()
    }

    fn decompress(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if data.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            zstd::stream::read::Decoder::new(data)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        } else {
            out = data.to_vec();
        }
        out
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("layer-test")
            .tempdir_in("/tmp")
            .unwrap()
    }

    #[test]
    fn round_trip_every_kind() {
        need_root!();
        let t = tmp();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        build_full_tree(&src);
        let want = snapshot(&src);
        assert!(want["capped"].contains("xattr:security.capability"));
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let (data, d) = write_vec(
                Changes::Compare {
                    old: None,
                    new: &src,
                },
                c,
                None,
            );
            assert_eq!(d.compression, c.as_str());
            assert_eq!(d.digest, sha(&data));
            assert_eq!(d.diff_id, sha(&decompress(&data)));
            let dst = t.path().join(format!("dst-{}", c.as_str()));
            std::fs::create_dir(&dst).unwrap();
            let got = apply_vec(&data, &dst, &opts(Whiteouts::Delete)).unwrap();
            assert_eq!(got, d);
            assert_same(&want, &snapshot(&dst));
        }
        // The long names went through PAX, the hardlinks as links.
        let (data, _) = write_vec(
            Changes::Compare {
                old: None,
                new: &src,
            },
            Compression::None,
            None,
        );
        let names = names(&data);
        assert!(names.iter().any(|n| n.len() > 250));
        let mut a = tar::Archive::new(&data[..]);
        let links: Vec<(String, String)> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.header().entry_type() == tar::EntryType::Link)
            .map(|e| (show(&e.path_bytes()), show(&e.link_name_bytes().unwrap())))
            .collect();
        assert!(
            links.contains(&("hard2".into(), "hard1".into())),
            "{links:?}"
        );
        assert!(
            links.contains(&("n".repeat(200), "hard-long".into())),
            "{links:?}"
        );
    }

    #[test]
    fn deterministic_and_clamped() {
        need_root!();
        let t = tmp();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        build_full_tree(&src);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let (a, da) = write_vec(
                Changes::Compare {
                    old: None,
                    new: &src,
                },
                c,
                None,
            );
            let (b, db) = write_vec(
                Changes::Compare {
                    old: None,
                    new: &src,
                },
                c,
                None,
            );
            assert!(a == b, "{c:?}: two writes differ");
            assert_eq!(da, db);
        }
        // The same tree elsewhere (other inodes, other directory order).
        let copy = t.path().join("copy");
        sh(&format!("cp -a {} {}", src.display(), copy.display()));
        let (a, _) = write_vec(
            Changes::Compare {
                old: None,
                new: &src,
            },
            Compression::Gzip,
            None,
        );
        let (b, _) = write_vec(
            Changes::Compare {
                old: None,
                new: &copy,
            },
            Compression::Gzip,
            None,
        );
        assert!(a == b, "a copy writes differently");
        // No gzip name (flags) or mtime.
        assert_eq!(&a[3..8], &[0, 0, 0, 0, 0]);

        let epoch = 1_450_000_000;
        let (data, _) = write_vec(
            Changes::Compare {
                old: None,
                new: &src,
            },
            Compression::None,
            Some(epoch),
        );
        let mut ar = tar::Archive::new(&data[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert!(e.header().mtime().unwrap() <= epoch as u64);
        }
        let dst = t.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        apply_vec(&data, &dst, &opts(Whiteouts::Delete)).unwrap();
        let md = std::fs::symlink_metadata(dst.join("file")).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (epoch, 0));
        let md = std::fs::symlink_metadata(dst.join("fifo")).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_400_000_000, 0));
        let md = std::fs::symlink_metadata(dst.join("sgid")).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_300_000_000, 999_999_999));
    }

    fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) {
        sh(&format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
            lower.display(),
            upper.display(),
            work.display(),
            merged.display()
        ));
    }

    fn mkdirs(base: &Path, names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| {
                let p = base.join(n);
                std::fs::create_dir_all(&p).unwrap();
                p
            })
            .collect()
    }

    fn build_lower(lower: &Path) {
        std::fs::write(lower.join("file"), b"lower file").unwrap();
        std::fs::write(lower.join("keep"), b"kept").unwrap();
        std::fs::create_dir_all(lower.join("dir/sub")).unwrap();
        std::fs::write(lower.join("dir/a"), b"a").unwrap();
        std::fs::write(lower.join("dir/sub/c"), b"c").unwrap();
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/conf"), b"x=1").unwrap();
        chmod(&lower.join("etc"), 0o750);
        std::fs::create_dir_all(lower.join("gone/deeper")).unwrap();
        std::fs::write(lower.join("gone/deeper/f"), b"f").unwrap();
    }

    /// An upper directory left by a mount with metacopy=on or redirect_dir=on
    /// holds a file without its data and a renamed directory without its
    /// content: refused, instead of written as zeros and an empty directory.
    #[test]
    fn metacopy_and_redirect_uppers_are_refused() {
        need_root!();
        for (options, change, left) in [
            ("metacopy=on", "chown 5:5 file", "`file`"),
            ("redirect_dir=on", "mv dir moved", "`moved`"),
        ] {
            let t = tmp();
            let [lower, upper, work, merged] =
                <[PathBuf; 4]>::try_from(mkdirs(t.path(), &["lower", "upper", "work", "merged"]))
                    .unwrap();
            build_lower(&lower);
            sh(&format!(
                "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={},{options} {}",
                lower.display(),
                upper.display(),
                work.display(),
                merged.display()
            ));
            let changed = std::process::Command::new("sh")
                .args(["-c", &format!("cd {} && {change}", merged.display())])
                .status();
            sh(&format!("umount {}", merged.display()));
            assert!(changed.unwrap().success(), "{change}");
            let mut out = Vec::new();
            let err = write(
                Changes::Upper(&upper),
                &mut out,
                Compression::None,
                None,
                &mut |_| {},
            )
            .err()
            .unwrap_or_else(|| panic!("{options}: the upper was taken as the change"));
            let text = err.to_string();
            assert!(matches!(err, LayerError::Precondition(_)), "{text}");
            assert!(text.contains(left) && text.contains(options), "{text}");
            // A redirect is found by the walk, before anything is written.
            if options.starts_with("redirect") {
                assert!(out.is_empty(), "{options}: {} bytes written", out.len());
            }
        }
    }

    #[test]
    fn upper_round_trip() {
        need_root!();
        let t = tmp();
        let [lower, upper, work, merged, upper2, work2, merged2] =
            <[PathBuf; 7]>::try_from(mkdirs(
                t.path(),
                &[
                    "lower", "upper", "work", "merged", "upper2", "work2", "merged2",
                ],
            ))
            .unwrap();
        build_lower(&lower);
        mount_overlay(&lower, &upper, &work, &merged);
        let m = |p: &str| merged.join(p);
        std::fs::remove_file(m("file")).unwrap();
        std::fs::remove_dir_all(m("dir")).unwrap();
        std::fs::create_dir(m("dir")).unwrap();
        std::fs::write(m("dir/new"), b"new").unwrap();
        std::fs::remove_dir_all(m("gone")).unwrap();
        std::fs::write(m("etc/conf"), b"x=2").unwrap();
        std::fs::write(m("added"), b"added").unwrap();
        std::fs::hard_link(m("added"), m("added-too")).unwrap();
        setx(&m("keep"), c"user.tag", b"v");
        let want = snapshot(&merged);
        sh(&format!("umount {}", merged.display()));

        let (data, _) = write_vec(Changes::Upper(&upper), Compression::None, None);
        let names = names(&data);
        assert!(names.contains(&".wh.file".to_string()), "{names:?}");
        assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
        assert!(names.contains(&"dir/.wh..wh..opq".to_string()), "{names:?}");
        assert!(names.contains(&"etc/".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("deeper")), "{names:?}");
        let mut sorted = names.clone();
        sorted.sort_by(|a, b| {
            path_order(
                a.trim_end_matches('/').as_bytes(),
                b.trim_end_matches('/').as_bytes(),
            )
        });
        assert_eq!(names, sorted);
        // No overlay xattrs leak into the layer.
        assert!(!data.windows(8).any(|w| w == b".overlay"));

        // Into an empty upper: char 0/0 and the opaque xattr.
        apply_vec(
            &data,
            &upper2,
            &opts(Whiteouts::Overlay {
                user_xattr: false,
                lowers: vec![lower.clone()],
            }),
        )
        .unwrap();
        let md = std::fs::symlink_metadata(upper2.join("file")).unwrap();
        assert!(md.file_type().is_char_device() && md.rdev() == 0);
        let mut v = [0u8; 4];
        let n = rustix::fs::lgetxattr(upper2.join("dir"), c"trusted.overlay.opaque", &mut v[..])
            .unwrap();
        assert_eq!(&v[..n], b"y");
        mount_overlay(&lower, &upper2, &work2, &merged2);
        let got = snapshot(&merged2);
        sh(&format!("umount {}", merged2.display()));
        assert_same(&want, &got);

        // The user-xattr flavour.
        let upper3 = t.path().join("upper3");
        std::fs::create_dir(&upper3).unwrap();
        apply_vec(
            &data,
            &upper3,
            &opts(Whiteouts::Overlay {
                user_xattr: true,
                lowers: vec![lower.clone()],
            }),
        )
        .unwrap();
        let n =
            rustix::fs::lgetxattr(upper3.join("dir"), c"user.overlay.opaque", &mut v[..]).unwrap();
        assert_eq!(&v[..n], b"y");

        // Onto a copy of the lower (native driver).
        let native = t.path().join("native");
        sh(&format!("cp -a {} {}", lower.display(), native.display()));
        apply_vec(&data, &native, &opts(Whiteouts::Delete)).unwrap();
        assert_same(&want, &snapshot(&native));

        // And the upper written again from the applied upper: same bytes.
        let (again, _) = write_vec(Changes::Upper(&upper2), Compression::None, None);
        assert!(again == data, "{:?}", names);
    }

    #[test]
    fn compare_changes() {
        need_root!();
        let t = tmp();
        let old = t.path().join("old");
        std::fs::create_dir(&old).unwrap();
        build_lower(&old);
        build_full_tree(&old);
        std::fs::write(old.join("same-size"), b"aaaa").unwrap();
        set_mtime(&old.join("same-size"), 1_000_000_000, 0);
        std::fs::write(old.join("to-dir"), b"file").unwrap();
        std::fs::create_dir_all(old.join("to-file/x")).unwrap();
        let new = t.path().join("new");
        sh(&format!("cp -a {} {}", old.display(), new.display()));
        let n = |p: &str| new.join(p);
        std::fs::remove_file(n("file")).unwrap();
        std::fs::remove_dir_all(n("gone")).unwrap();
        std::fs::write(n("same-size"), b"bbbb").unwrap();
        set_mtime(&n("same-size"), 1_000_000_000, 0);
        chmod(&n("keep"), 0o600);
        std::fs::remove_file(n("to-dir")).unwrap();
        std::fs::create_dir(n("to-dir")).unwrap();
        std::fs::write(n("to-dir/inside"), b"in").unwrap();
        std::fs::remove_dir_all(n("to-file")).unwrap();
        std::fs::write(n("to-file"), b"now a file").unwrap();
        setx(&n("empty"), c"user.new", b"1");
        rustix::fs::lremovexattr(n("sgid"), c"trusted.note").unwrap();
        std::fs::remove_file(n("link")).unwrap();
        std::os::unix::fs::symlink("empty", n("link")).unwrap();
        std::fs::hard_link(n("keep"), n("etc/keep-link")).unwrap();
        std::fs::write(n("dir/sub/c"), b"changed").unwrap();
        let want = snapshot(&new);

        let (data, _) = write_vec(
            Changes::Compare {
                old: Some(&old),
                new: &new,
            },
            Compression::Zstd,
            None,
        );
        let plain = decompress(&data);
        let names = names(&plain);
        assert!(names.contains(&".wh.file".to_string()), "{names:?}");
        assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("gone/")), "{names:?}");
        assert!(names.contains(&"same-size".to_string()), "{names:?}");
        assert!(names.contains(&"to-dir/inside".to_string()), "{names:?}");
        assert!(
            names.contains(&"dir/".to_string()),
            "parent of a change: {names:?}"
        );
        assert!(
            names.contains(&"dir/sub/".to_string()),
            "parent of a change: {names:?}"
        );
        assert!(!names.contains(&"big".to_string()), "unchanged: {names:?}");
        assert!(
            !names.contains(&"private/".to_string()),
            "unchanged: {names:?}"
        );

        let native = t.path().join("native");
        sh(&format!("cp -a {} {}", old.display(), native.display()));
        apply_vec(&data, &native, &opts(Whiteouts::Delete)).unwrap();
        assert_same(&want, &snapshot(&native));

        // The same layer as an overlay upper over the old tree.
        let [upper, work, merged] =
            <[PathBuf; 3]>::try_from(mkdirs(t.path(), &["upper", "work", "merged"])).unwrap();
        apply_vec(
            &data,
            &upper,
            &opts(Whiteouts::Overlay {
                user_xattr: false,
                lowers: vec![old.clone()],
            }),
        )
        .unwrap();
        mount_overlay(&old, &upper, &work, &merged);
        let got = snapshot(&merged);
        sh(&format!("umount {}", merged.display()));
        assert_same(&want, &got);

        // Nothing changed: an empty layer.
        let (data, _) = write_vec(
            Changes::Compare {
                old: Some(&new),
                new: &native,
            },
            Compression::None,
            None,
        );
        assert_eq!(names_of(&data), Vec::<String>::new());
        assert_eq!(data.len(), 1024);
    }

    fn names_of(data: &[u8]) -> Vec<String> {
        names(data)
    }

    #[test]
    fn gnu_tar_with_whiteouts() {
        need_root!();
        let t = tmp();
        let base = t.path().join("base");
        std::fs::create_dir(&base).unwrap();
        build_lower(&base);
        std::fs::create_dir(base.join("opq")).unwrap();
        std::fs::write(base.join("opq/old"), b"old").unwrap();
        let want_dir = t.path().join("want");
        sh(&format!("cp -a {} {}", base.display(), want_dir.display()));

        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("opq")).unwrap();
        std::fs::write(src.join(".wh.file"), b"").unwrap();
        std::fs::write(src.join("opq/.wh..wh..opq"), b"").unwrap();
        std::fs::write(src.join("opq/new"), b"new").unwrap();
        std::fs::write(src.join("added"), b"added").unwrap();
        std::fs::create_dir_all(src.join("dir")).unwrap();
        std::fs::write(src.join("dir/.wh.sub"), b"").unwrap();
        let long = "L".repeat(180);
        std::fs::write(src.join(&long), b"long").unwrap();
        setx(&src.join("added"), c"user.x", b"y");
        setx(&src.join("added"), c"trusted.t", b"z");
        std::os::unix::fs::lchown(src.join("added"), Some(42), Some(43)).unwrap();
        sh(&format!(
            "cd {} && tar --xattrs --xattrs-include='*' --numeric-owner -cf {}/layer.tar .",
            src.display(),
            t.path().display()
        ));
        let data = std::fs::read(t.path().join("layer.tar")).unwrap();
        apply_vec(&data, &base, &opts(Whiteouts::Delete)).unwrap();

        // What the layer means, done by hand.
        let w = |p: &str| want_dir.join(p);
        std::fs::remove_file(w("file")).unwrap();
        std::fs::remove_file(w("opq/old")).unwrap();
        std::fs::remove_dir_all(w("dir/sub")).unwrap();
        sh(&format!(
            "cd {} && tar --exclude='.wh.*' --xattrs --xattrs-include='*' --numeric-owner -cf - . | tar --xattrs --xattrs-include='*' --numeric-owner -xpf - -C {}",
            src.display(),
            want_dir.display()
        ));
        assert!(!base.join("file").exists());
        assert!(!base.join("opq/old").exists());
        assert!(base.join("opq/new").exists());
        assert!(!base.join("dir/sub").exists());
        assert_eq!(std::fs::read(base.join(&long)).unwrap(), b"long");
        let md = std::fs::metadata(base.join("added")).unwrap();
        assert_eq!((md.uid(), md.gid()), (42, 43));
        assert_same(&snapshot(&want_dir), &snapshot(&base));
    }

    // ---- hostile input ----

    /// A raw tar member, written without the `tar` crate's path checks.
    struct Raw<'a> {
        name: &'a [u8],
        kind: u8,
        data: &'a [u8],
        link: &'a [u8],
    }

    fn raw(name: &[u8], kind: u8, data: &[u8], link: &[u8]) -> Vec<u8> {
        tar_of(&[Raw {
            name,
            kind,
            data,
            link,
        }])
    }

    fn tar_of(members: &[Raw<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in members {
            let mut h = tar::Header::new_gnu();
            set_field(&mut h.as_old_mut().name, m.name);
            set_field(&mut h.as_old_mut().linkname, m.link);
            h.set_mode(if m.kind == b'5' { 0o755 } else { 0o644 });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_000_000_000);
            h.set_size(m.data.len() as u64);
            h.set_entry_type(tar::EntryType::new(m.kind));
            if m.kind == b'3' {
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(m.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn dir(name: &[u8]) -> Raw<'_> {
        Raw {
            name,
            kind: b'5',
            data: b"",
            link: b"",
        }
    }

    fn symlink<'a>(name: &'a [u8], link: &'a [u8]) -> Raw<'a> {
        Raw {
            name,
            kind: b'2',
            data: b"",
            link,
        }
    }

    fn hardlink<'a>(name: &'a [u8], link: &'a [u8]) -> Raw<'a> {
        Raw {
            name,
            kind: b'1',
            data: b"",
            link,
        }
    }

    fn file<'a>(name: &'a [u8], data: &'a [u8]) -> Raw<'a> {
        Raw {
            name,
            kind: b'0',
            data,
            link: b"",
        }
    }

    /// A `dest` beside a `sibling` directory holding one file.
    struct Jail {
        _t: tempfile::TempDir,
        top: PathBuf,
        dest: PathBuf,
    }

    fn jail() -> Jail {
        let t = tmp();
        let top = t.path().to_path_buf();
        std::fs::create_dir(top.join("dest")).unwrap();
        std::fs::create_dir(top.join("sibling")).unwrap();
        std::fs::write(top.join("sibling/x"), b"precious").unwrap();
        Jail {
            dest: top.join("dest"),
            top,
            _t: t,
        }
    }

    impl Jail {
        fn untouched(&self) {
            let mut top: Vec<_> = std::fs::read_dir(&self.top)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            top.sort();
            assert_eq!(top, ["dest", "sibling"]);
            let sib: Vec<_> = std::fs::read_dir(self.top.join("sibling"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(sib, ["x"]);
            assert_eq!(
                std::fs::read(self.top.join("sibling/x")).unwrap(),
                b"precious"
            );
            assert!(!Path::new("/evil").exists());
            assert!(!Path::new("/etc/evil").exists());
        }

        fn refuse(&self, data: &[u8], o: &ApplyOptions, needle: &str) {
            match apply_vec(data, &self.dest, o) {
                Err(LayerError::Invalid(msg)) => {
                    assert!(msg.contains(needle), "message `{msg}` lacks `{needle}`")
                }
                other => panic!("expected Invalid ({needle}), got {other:?}"),
            }
            self.untouched();
        }
    }

    fn delete() -> ApplyOptions {
        opts(Whiteouts::Delete)
    }

    /// GNU tar's base-256 times: before 1970 negative (as Go reads them), after
    /// 2242 (past octal's 11 digits) positive; one no i64 holds is refused.
    #[test]
    fn base_256_times() {
        let with_mtime = |field: [u8; 12]| {
            let mut data = raw(b"f", b'0', b"x", b"");
            let mut h = tar::Header::new_gnu();
            h.as_mut_bytes().copy_from_slice(&data[..512]);
            h.as_old_mut().mtime = field;
            h.set_cksum();
            data[..512].copy_from_slice(h.as_bytes());
            data
        };
        let base_256 = |v: i64| {
            let mut field = if v < 0 { [0xff; 12] } else { [0; 12] };
            field[4..].copy_from_slice(&v.to_be_bytes());
            field[0] |= 0x80;
            field
        };
        for when in [-315_619_200, -1, 10_000_000_000] {
            let j = jail();
            apply_vec(&with_mtime(base_256(when)), &j.dest, &delete()).unwrap();
            let md = std::fs::symlink_metadata(j.dest.join("f")).unwrap();
            assert_eq!(md.mtime(), when);
        }
        let mut beyond = [0xff; 12];
        beyond[3] = 0x7f;
        jail().refuse(&with_mtime(beyond), &delete(), "bad mtime");
    }

    /// Bytes this thread has read through read(2) and friends so far.
    fn thread_reads() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        let line = io.lines().find_map(|l| l.strip_prefix("rchar:")).unwrap();
        line.trim().parse().unwrap()
    }

    /// Two sparse files with their holes in the same places are compared by
    /// their data alone (8 KiB read for two 4 GiB files, not 8 GiB of
    /// zeros); with the holes in other places, or data that differs, the
    /// answer is still the bytes'.
    #[test]
    fn sparse_files_compare_by_their_data() {
        use std::os::unix::fs::FileExt;
        let t = tmp();
        let make = |name: &str, runs: &[(u64, &[u8])]| {
            let p = t.path().join(name);
            let f = File::create(&p).unwrap();
            f.set_len(4 << 30).unwrap();
            for (at, data) in runs {
                f.write_all_at(data, *at).unwrap();
            }
            p
        };
        let a = make("a", &[(1 << 30, b"data")]);
        let b = make("b", &[(1 << 30, b"data")]);
        let c = make("c", &[(1 << 30, b"dat!")]);
        let len = 4 << 30;
        if std::fs::metadata(&a).unwrap().blocks() > 64 {
            eprintln!("skipped: the temporary file system keeps no holes");
            return;
        }
        let before = thread_reads();
        assert!(same_content(&a, &b, len, true).unwrap());
        assert!(!same_content(&a, &c, len, true).unwrap());
        let read = thread_reads() - before;
        assert!(read < 1 << 20, "{read} bytes read to compare");
        // The same bytes with a hole written out as zeros: other maps, the
        // whole files compared (small ones here).
        let small = |name: &str, zeros: bool| {
            let p = t.path().join(name);
            let f = File::create(&p).unwrap();
            f.set_len(1 << 20).unwrap();
            if zeros {
                f.write_all_at(&[0; 8192], 0).unwrap();
            }
            f.write_all_at(b"end", (1 << 20) - 3).unwrap();
            p
        };
        let (d, e) = (small("d", false), small("e", true));
        assert!(same_content(&d, &e, 1 << 20, true).unwrap());
        let f = t.path().join("f");
        std::fs::copy(&e, &f).unwrap();
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .write_all_at(b"x", 10)
            .unwrap();
        assert!(!same_content(&d, &f, 1 << 20, true).unwrap());
    }

    /// An old GNU sparse entry (type `S`) of `data`, with `map` (offset,
    /// length pairs in the header; more in one extension block) for a file
    /// of `size` bytes.
    fn old_sparse(map: &[(u64, u64)], size: u64, data: &[u8]) -> Vec<u8> {
        let mut tar = raw(b"s", b'S', data, b"");
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes().copy_from_slice(&tar[..512]);
        let field = |v: u64| format!("{v:011o}\0").into_bytes();
        let mut ext = [0u8; 512];
        for (i, (offset, len)) in map.iter().enumerate() {
            let (area, at) = if i < 4 {
                (&mut h.as_mut_bytes()[386..482], i * 24)
            } else {
                (&mut ext[..], (i - 4) * 24)
            };
            area[at..at + 12].copy_from_slice(&field(*offset));
            area[at + 12..at + 24].copy_from_slice(&field(*len));
        }
        h.as_mut_bytes()[483..495].copy_from_slice(&field(size));
        if map.len() > 4 {
            h.as_mut_bytes()[482] = 1;
            tar.splice(512..512, ext);
        }
        h.set_cksum();
        tar[..512].copy_from_slice(h.as_bytes());
        tar
    }

    /// A PAX header of `records`, then a file `p` of `data`.
    fn pax_then(records: &[(&str, &str)], kind: u8, data: &[u8]) -> Vec<u8> {
        let mut pax = Vec::new();
        for (k, v) in records {
            pax_record(&mut pax, k.as_bytes(), v.as_bytes());
        }
        let name: &[u8] = if kind == b'5' { b"p/" } else { b"p" };
        tar_of(&[
            Raw {
                name: b"p",
                kind: b'x',
                data: &pax,
                link: b"",
            },
            Raw {
                name,
                kind,
                data,
                link: b"",
            },
        ])
    }

    /// GNU sparse entries: the data lands where the map says, the rest is
    /// holes (zeros when read); the real name of PAX 0.1 and 1.0 wins. A
    /// map that overlaps, leaves data over or runs short of it, goes past
    /// the file or the entry, sits on a directory, or is of a version
    /// strata does not know, is refused with nothing written.
    #[test]
    fn gnu_sparse_entries() {
        let read = |j: &Jail, name: &str| std::fs::read(j.dest.join(name)).unwrap();
        let expect = |size: usize, runs: &[(usize, &[u8])]| {
            let mut v = vec![0u8; size];
            for (at, data) in runs {
                v[*at..*at + data.len()].copy_from_slice(data);
            }
            v
        };
        // Old GNU, in the header and with an extension block.
        let j = jail();
        apply_vec(
            &old_sparse(&[(2, 3), (9, 1)], 12, b"abcd"),
            &j.dest,
            &delete(),
        )
        .unwrap();
        assert_eq!(read(&j, "s"), expect(12, &[(2, b"abc"), (9, b"d")]));
        let map: Vec<(u64, u64)> = (0..6).map(|i| (i * 10, 1)).collect();
        let j = jail();
        apply_vec(&old_sparse(&map, 60, b"uvwxyz"), &j.dest, &delete()).unwrap();
        let runs: Vec<(usize, &[u8])> = (0..6).map(|i| (i * 10, &b"uvwxyz"[i..i + 1])).collect();
        assert_eq!(read(&j, "s"), expect(60, &runs));
        // PAX 0.1 and 1.0 with their real names.
        let j = jail();
        let v01 = [
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.name", "real"),
            ("GNU.sparse.size", "8"),
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.map", "5,2"),
        ];
        apply_vec(&pax_then(&v01, b'0', b"hi"), &j.dest, &delete()).unwrap();
        assert_eq!(read(&j, "real"), expect(8, &[(5, b"hi")]));
        let mut data = b"1\n1000\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"hi");
        let v10 = [
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "real"),
            ("GNU.sparse.realsize", "4096"),
        ];
        let j = jail();
        apply_vec(&pax_then(&v10, b'0', &data), &j.dest, &delete()).unwrap();
        assert_eq!(read(&j, "real"), expect(4096, &[(1000, b"hi")]));
        assert!(!j.dest.join("p").exists());

        // Refused.
        jail().refuse(
            &old_sparse(&[(0, 3), (2, 1)], 12, b"abcd"),
            &delete(),
            "overlaps",
        );
        jail().refuse(&old_sparse(&[(0, 3)], 12, b"abcd"), &delete(), "holds 4");
        jail().refuse(&old_sparse(&[(0, 5)], 12, b"abcd"), &delete(), "places 5");
        jail().refuse(&old_sparse(&[(10, 4)], 12, b"abcd"), &delete(), "offset 10");
        // Type S in a POSIX (not GNU) header.
        let mut ustar = old_sparse(&[(0, 4)], 4, b"abcd");
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[..257].copy_from_slice(&ustar[..257]);
        h.as_mut_bytes()[345..].copy_from_slice(&ustar[345..512]);
        h.set_cksum();
        ustar[..512].copy_from_slice(h.as_bytes());
        jail().refuse(&ustar, &delete(), "without a GNU header");
        // A 1.0 map over 1 MiB.
        let mut long = b"300000\n".to_vec();
        long.extend_from_slice(&b"0\n0\n".repeat(300_000));
        long.resize(long.len().div_ceil(512) * 512, 0);
        jail().refuse(&pax_then(&v10, b'0', &long), &delete(), "over 1 MiB");
        // A 1.0 map that runs past its entry's data.
        let mut short = b"1\n0\n".to_vec();
        short.resize(512, b'7');
        jail().refuse(
            &pax_then(&v10, b'0', &short),
            &delete(),
            "runs past its data",
        );
        // Sparse records on a directory; an unknown version.
        jail().refuse(&pax_then(&v01, b'5', b""), &delete(), "not a file");
        let v2 = [("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")];
        jail().refuse(
            &pax_then(&v2, b'0', b"x"),
            &delete(),
            "2.0 is not supported",
        );
        // As large as a file can be: ext4 (16 TiB) refuses it, tmpfs,
        // XFS and btrfs (8 EiB less a byte) hold it.
        let huge = (i64::MAX as u64).to_string();
        let v01_huge = [
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.size", huge.as_str()),
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.map", "0,2"),
        ];
        let j = jail();
        let probe = std::fs::File::create(j.top.join("probe")).unwrap();
        let holds = probe.set_len(i64::MAX as u64).is_ok();
        std::fs::remove_file(j.top.join("probe")).unwrap();
        let huge_tar = pax_then(&v01_huge, b'0', b"hi");
        // Its holes count toward the limit: within it only when allowed.
        j.refuse(&huge_tar, &delete(), "the holes of sparse files count");
        let unlimited = ApplyOptions {
            max_size: u64::MAX,
            ..delete()
        };
        if holds {
            apply_vec(&huge_tar, &j.dest, &unlimited).unwrap();
            let md = std::fs::metadata(j.dest.join("p")).unwrap();
            assert_eq!(md.len(), i64::MAX as u64);
        } else {
            j.refuse(&huge_tar, &unlimited, "larger than this file system allows");
        }
        // The limit counts the holes with the archive's bytes: its 3.5 KiB
        // and 4094 bytes of holes are over 4000 and under 8192.
        let small_limit = ApplyOptions {
            max_size: 4000,
            ..delete()
        };
        jail().refuse(
            &pax_then(&v10, b'0', &data),
            &small_limit,
            "sparse files count",
        );
        apply_vec(
            &pax_then(&v10, b'0', &data),
            &jail().dest,
            &ApplyOptions {
                max_size: 8192,
                ..delete()
            },
        )
        .unwrap();
    }

    /// An xattr name with `=` would come back as another xattr (`user.k` =
    /// `v=val`): refused with the file named, not written.
    #[test]
    fn xattr_names_with_equals_are_refused() {
        let t = tmp();
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let name = CString::new("user.k=v").unwrap();
        if let Err(e) = rustix::fs::lsetxattr(&f, &name, b"val", XattrFlags::empty()) {
            eprintln!("skipped: no user xattrs here ({e})");
            return;
        }
        let mut out = Vec::new();
        let changes = Changes::Compare {
            old: None,
            new: t.path(),
        };
        match write(changes, &mut out, Compression::None, None, &mut |_| {}) {
            Err(LayerError::Invalid(msg)) => {
                assert!(msg.contains("`f`") && msg.contains("user.k=v"), "{msg}")
            }
            other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
        }
    }

    /// A member with PAX records `pax` (no end-of-archive blocks).
    fn with_pax(pax: &[(&[u8], &[u8])], member: Vec<u8>) -> Vec<u8> {
        let mut records = Vec::new();
        for (k, v) in pax {
            pax_record(&mut records, k, v);
        }
        let mut out = raw(b"PaxHeaders.0/x", b'x', &records, b"");
        out.truncate(out.len() - 1024);
        out.extend(member);
        out
    }

    /// An xattr of the layer that the kernel refuses as malformed (EINVAL:
    /// a `security.capability` it cannot read) or too large (E2BIG: over
    /// 64 KiB) is `Invalid`, naming the entry and the xattr, not an I/O
    /// error naming the staging directory; on a symlink too.
    #[test]
    fn xattrs_the_kernel_refuses_are_invalid() {
        need_root!();
        let big = vec![b'A'; 70_000];
        let cases: [(&[u8], &[u8], Vec<u8>); 3] = [
            (
                b"SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00",
                raw(b"d/f", b'0', b"", b""),
            ),
            (b"SCHILY.xattr.user.big", &big, raw(b"d/f", b'0', b"", b"")),
            (
                b"SCHILY.xattr.user.big",
                &big,
                tar_of(&[symlink(b"d/f", b"target")]),
            ),
        ];
        for (key, value, member) in cases {
            let j = jail();
            let data = with_pax(&[(key, value)], member);
            let attr = show(&key[XATTR_PAX_PREFIX.len()..]);
            match apply_vec(&data, &j.dest, &delete()) {
                Err(LayerError::Invalid(msg)) => {
                    assert!(
                        msg.starts_with("entry `d/f`: xattr") && msg.contains(&attr),
                        "{msg}"
                    );
                    assert!(!msg.contains(j.dest.to_str().unwrap()), "{msg}");
                }
                other => panic!("{attr}: expected Invalid, got {other:?}"),
            }
            j.untouched();
        }
    }

    #[test]
    fn refuses_dotdot() {
        let j = jail();
        j.refuse(&raw(b"../evil", b'0', b"x", b""), &delete(), "../evil");
        j.refuse(
            &raw(b"a/../../evil", b'0', b"x", b""),
            &delete(),
            "a/../../evil",
        );
        j.refuse(&raw(b"../sibling/x", b'0', b"x", b""), &delete(), "..");
        j.refuse(
            &raw(b"a/b/../../../sibling/x", b'5', b"", b""),
            &delete(),
            "..",
        );
        j.refuse(&raw(b"../.wh.sibling", b'0', b"", b""), &delete(), "..");
        // Compressed: the decompressing thread, chunks ahead, stops too.
        let big = vec![1u8; 20 << 20];
        let data = gzip(&tar_of(&[file(b"../evil", b"x"), file(b"big", &big)]));
        j.refuse(&data, &delete(), "../evil");
        j.refuse(
            &raw(b"../sibling/.wh..wh..opq", b'0', b"", b""),
            &delete(),
            "..",
        );
        j.refuse(&raw(b"ok/.wh...", b'0', b"", b""), &delete(), "whiteout");
        j.refuse(&raw(b"link", b'2', b"", b""), &delete(), "symlink");
        // PAX path with `..`.
        let mut pax = Vec::new();
        pax_record(&mut pax, b"path", b"../sibling/evil");
        let mut data = raw(b"PaxHeaders/x", b'x', &pax, b"");
        data.truncate(data.len() - 1024);
        data.extend(raw(b"harmless", b'0', b"x", b""));
        j.refuse(&data, &delete(), "../sibling/evil");
    }

    #[test]
    fn absolute_names_stay_inside() {
        let j = jail();
        let data = tar_of(&[
            dir(b"/etc/"),
            file(b"/etc/evil", b"x"),
            file(b"./rel", b"y"),
            file(b"//double//slash", b"z"),
        ]);
        apply_vec(&data, &j.dest, &delete()).unwrap();
        assert_eq!(std::fs::read(j.dest.join("etc/evil")).unwrap(), b"x");
        assert_eq!(std::fs::read(j.dest.join("rel")).unwrap(), b"y");
        assert_eq!(std::fs::read(j.dest.join("double/slash")).unwrap(), b"z");
        j.untouched();
    }

    #[test]
    fn refuses_symlink_parents() {
        let j = jail();
        let outside = j.top.join("sibling");
        let data = tar_of(&[
            symlink(b"s", outside.as_os_str().as_bytes()),
            file(b"s/evil", b"x"),
        ]);
        j.refuse(&data, &delete(), "s/evil");
        let j = jail();
        let data = tar_of(&[symlink(b"s", b"../sibling"), dir(b"s/sub/")]);
        j.refuse(&data, &delete(), "symlink");
        // Relative symlink inside dest, then through it: refused too.
        let j = jail();
        let data = tar_of(&[dir(b"d/"), symlink(b"s", b"d"), file(b"s/f", b"x")]);
        j.refuse(&data, &delete(), "symlink");
        // Whiteouts and opaque markers through a symlink of the layers
        // below (native: in its copy of the parent) are refused; under the
        // layer's own symlink there is nothing to delete: ignored, and
        // never followed.
        for name in [&b"s/.wh.x"[..], b"s/.wh..wh..opq"] {
            let j = jail();
            std::os::unix::fs::symlink(&outside, j.dest.join("s")).unwrap();
            j.refuse(&tar_of(&[file(name, b"")]), &delete(), "symlink");
            let data = tar_of(&[
                symlink(b"s", outside.as_os_str().as_bytes()),
                file(name, b""),
            ]);
            let overlay = opts(Whiteouts::Overlay {
                user_xattr: false,
                lowers: vec![],
            });
            for o in [delete(), overlay] {
                let j = jail();
                apply_vec(&data, &j.dest, &o).unwrap();
                j.untouched();
            }
        }
        // A hardlink named through a symlink.
        let j = jail();
        let data = tar_of(&[
            file(b"f", b"x"),
            symlink(b"s", outside.as_os_str().as_bytes()),
            hardlink(b"s/h", b"f"),
        ]);
        j.refuse(&data, &delete(), "symlink");
    }

    #[test]
    fn replaces_symlinks_instead_of_following() {
        let j = jail();
        let outside = j.top.join("sibling/x");
        let data = tar_of(&[
            symlink(b"s", outside.as_os_str().as_bytes()),
            file(b"s", b"replaced"),
            symlink(b"d", b"../sibling"),
            dir(b"d/"),
            file(b"d/in", b"in"),
        ]);
        apply_vec(&data, &j.dest, &delete()).unwrap();
        assert_eq!(std::fs::read(j.dest.join("s")).unwrap(), b"replaced");
        assert!(
            std::fs::symlink_metadata(j.dest.join("d"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(std::fs::read(j.dest.join("d/in")).unwrap(), b"in");
        j.untouched();
    }

    #[test]
    fn refuses_bad_hardlinks() {
        let j = jail();
        j.refuse(&tar_of(&[hardlink(b"h", b"../sibling/x")]), &delete(), "..");
        j.refuse(
            &tar_of(&[hardlink(b"h", b"/etc/passwd")]),
            &delete(),
            "earlier entry",
        );
        j.refuse(
            &tar_of(&[hardlink(b"h", b"later"), file(b"later", b"x")]),
            &delete(),
            "earlier entry",
        );
        j.refuse(&tar_of(&[hardlink(b"h", b"h")]), &delete(), "earlier entry");
        j.refuse(
            &tar_of(&[file(b"d/f", b"x"), hardlink(b"d", b"d/f")]),
            &delete(),
            "earlier entry",
        );
        j.refuse(
            &tar_of(&[dir(b"d/"), hardlink(b"h", b"d")]),
            &delete(),
            "directory",
        );
        // A file of the parent layer is not a valid target either.
        std::fs::write(j.dest.join("parent-file"), b"p").unwrap();
        j.refuse(
            &tar_of(&[hardlink(b"h", b"parent-file")]),
            &delete(),
            "earlier entry",
        );
        // A link to an earlier symlink pointing outside links the symlink.
        let j = jail();
        let data = tar_of(&[symlink(b"s", b"/etc/passwd"), hardlink(b"h", b"s")]);
        apply_vec(&data, &j.dest, &delete()).unwrap();
        assert!(
            std::fs::symlink_metadata(j.dest.join("h"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        j.untouched();
    }

    /// A device entry whose devmajor or devminor field is all NULs or all
    /// spaces has the number 0 there, as GNU tar, Go and Python read it (the
    /// tar crate refuses it); a field that is not a number is named.
    #[test]
    fn blank_device_number_fields_are_zero() {
        need_root!();
        let with_fields = |major: &[u8; 8], minor: &[u8; 8]| {
            let mut data = raw(b"c", b'3', b"", b"");
            data[329..337].copy_from_slice(major);
            data[337..345].copy_from_slice(minor);
            let mut h = tar::Header::from_byte_slice(&data[..512]).clone();
            h.set_cksum();
            data[..512].copy_from_slice(h.as_bytes());
            data
        };
        for (major, minor, want) in [
            (b"\0\0\0\0\0\0\0\0", b"0000003\0", (0, 3)),
            (b"0000001\0", b"\0\0\0\0\0\0\0\0", (1, 0)),
        ] {
            let j = jail();
            apply_vec(&with_fields(major, minor), &j.dest, &delete()).unwrap();
            let st = rustix::fs::lstat(j.dest.join("c")).unwrap();
            assert_eq!(
                rustix::fs::FileType::from_raw_mode(st.st_mode),
                rustix::fs::FileType::CharacterDevice
            );
            let dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
            assert_eq!(dev, want);
        }
        jail().refuse(
            &with_fields(b"0000001\0", b"zz\0\0\0\0\0\0"),
            &delete(),
            "entry `c`: its devminor field is not a number",
        );
        // Spaces are refused, as GNU tar refuses them.
        jail().refuse(
            &with_fields(b"        ", b"0000003 "),
            &delete(),
            "entry `c`: its devmajor field is not a number",
        );
        // Both blank: a character device 0/0, which is a whiteout.
        jail().refuse(
            &with_fields(b"\0\0\0\0\0\0\0\0", b"\0\0\0\0\0\0\0\0"),
            &delete(),
            "0/0",
        );
    }

    /// A uid, gid, mode, mtime or size field of only NULs is 0, as GNU tar,
    /// Go and Python read it (the tar crate refuses it); one of only spaces
    /// (GNU tar refuses it too) or not a number is refused, in one line
    /// naming the entry and the field.
    #[test]
    fn blank_numeric_fields_are_zero() {
        let with = |data: &[u8], fields: &[(std::ops::Range<usize>, u8)]| {
            let mut out = raw(b"f", b'0', data, b"");
            for (at, byte) in fields {
                out[at.clone()].fill(*byte);
            }
            let mut h = tar::Header::from_byte_slice(&out[..512]).clone();
            h.set_cksum();
            out[..512].copy_from_slice(h.as_bytes());
            out
        };
        let (mode, uid, gid, size, mtime) = (100..108, 108..116, 116..124, 124..136, 136..148);
        let j = jail();
        let all = [&mode, &uid, &gid, &size, &mtime].map(|f| (f.clone(), 0));
        apply_vec(&with(b"", &all), &j.dest, &delete()).unwrap();
        let md = std::fs::symlink_metadata(j.dest.join("f")).unwrap();
        assert!(md.is_file());
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime(), md.len()),
            (0, 0, 0, 0, 0)
        );
        // Each one alone, the others as written (0644, 0:0, 1000000000).
        let j = jail();
        apply_vec(&with(b"", &[(size.clone(), 0)]), &j.dest, &delete()).unwrap();
        let md = std::fs::symlink_metadata(j.dest.join("f")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.mtime(), md.len()),
            (0o644, 1_000_000_000, 0)
        );
        for field in [&mode, &mtime] {
            let j = jail();
            apply_vec(&with(b"data", &[(field.clone(), 0)]), &j.dest, &delete()).unwrap();
            let md = std::fs::symlink_metadata(j.dest.join("f")).unwrap();
            assert_eq!(std::fs::read(j.dest.join("f")).unwrap(), b"data");
            let want = if *field == mode {
                (0, 1_000_000_000)
            } else {
                (0o644, 0)
            };
            assert_eq!((md.mode() & 0o7777, md.mtime()), want);
        }
        // A blank size with data after it: that data is the next header
        // (GNU tar skips it as garbage).
        jail().refuse(
            &with(b"data", &[(size.clone(), 0)]),
            &delete(),
            "header checksum mismatch",
        );
        for (name, field) in [
            ("mode", &mode),
            ("uid", &uid),
            ("gid", &gid),
            ("size", &size),
            ("mtime", &mtime),
        ] {
            for byte in [b' ', b'z', b'\n'] {
                let data = with(b"", &[(field.clone(), byte)]);
                match apply_vec(&data, &jail().dest, &delete()) {
                    Err(LayerError::Invalid(msg)) => assert_eq!(
                        msg,
                        format!("entry `f`: its {name} field is not a number"),
                        "{byte}"
                    ),
                    other => panic!("{name} {byte}: expected Invalid, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn refuses_devices_when_not_allowed() {
        let j = jail();
        let o = ApplyOptions {
            allow_devices: false,
            ..delete()
        };
        j.refuse(&raw(b"dev/null", b'3', b"", b""), &o, "dev/null");
        j.refuse(&raw(b"dev/sda", b'4', b"", b""), &o, "dev/sda");
        // FIFOs are fine.
        apply_vec(&raw(b"fifo", b'6', b"", b""), &j.dest, &o).unwrap();
        // A character device 0/0 is refused even where devices are allowed.
        let mut zero = raw(b"zero", b'3', b"", b"");
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes().copy_from_slice(&zero[..512]);
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        h.set_cksum();
        zero[..512].copy_from_slice(h.as_bytes());
        for o in [
            delete(),
            opts(Whiteouts::Overlay {
                user_xattr: false,
                lowers: vec![],
            }),
        ] {
            j.refuse(&zero, &o, "character device 0/0");
        }
        assert!(
            std::fs::symlink_metadata(j.dest.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    fn sample_tar() -> Vec<u8> {
        let big = vec![7u8; 100_000];
        tar_of(&[
            dir(b"d/"),
            file(b"d/a", b"aaa"),
            file(b"d/big", &big),
            file(b"d/z", b"zzz"),
        ])
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd_of(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    #[test]
    fn refuses_truncated_and_corrupt() {
        let good = sample_tar();
        let j = jail();
        apply_vec(&good, &j.dest, &delete()).unwrap();
        for (what, data) in [
            ("half", good[..good.len() / 2].to_vec()),
            ("no end block", good[..good.len() - 1024].to_vec()),
            ("mid header", good[..good.len() - 1024 - 512 - 100].to_vec()),
            ("empty", Vec::new()),
            ("gzip half", gzip(&good)[..gzip(&good).len() / 2].to_vec()),
            (
                "zstd half",
                zstd_of(&good)[..zstd_of(&good).len() / 2].to_vec(),
            ),
        ] {
            let j = jail();
            match apply_vec(&data, &j.dest, &delete()) {
                Err(LayerError::Invalid(msg)) => eprintln!("{what}: {msg}"),
                other => panic!("{what}: expected Invalid, got {other:?}"),
            }
            j.untouched();
        }
        // A flipped byte in a header name: checksum.
        let mut bad = good.clone();
        bad[512 + 2] ^= 0x20;
        jail().refuse(&bad, &delete(), "checksum");
        // Corrupt deflate data.
        let mut gz = gzip(&good);
        let mid = gz.len() / 2;
        for b in &mut gz[mid..mid + 16] {
            *b ^= 0x55;
        }
        jail().refuse(&gz, &delete(), "gzip");
        let mut zs = zstd_of(&good);
        let mid = zs.len() / 2;
        for b in &mut zs[mid..mid + 16] {
            *b ^= 0x55;
        }
        jail().refuse(&zs, &delete(), "zstd");
        // Garbage after the end of the archive, and after the gzip stream.
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"garbage");
        jail().refuse(&trailing, &delete(), "after the end");
        let mut gz = gzip(&good);
        gz.extend_from_slice(b"garbage");
        jail().refuse(&gz, &delete(), "gzip");
        // A directory with data, an unknown type.
        jail().refuse(&raw(b"d/", b'5', b"data", b""), &delete(), "d/");
        jail().refuse(&raw(b"v", b'V', b"", b""), &delete(), "unsupported");
        // Extension header with no entry.
        let mut pax = Vec::new();
        pax_record(&mut pax, b"path", b"x");
        jail().refuse(&raw(b"p", b'x', &pax, b""), &delete(), "no entry");
        // Malformed PAX.
        jail().refuse(&raw(b"p", b'x', b"99 path=x\n", b""), &delete(), "PAX");
        // Zero padding after the end is fine (GNU tar pads to 10 KiB).
        let mut padded = good.clone();
        padded.resize(padded.len() + 9216, 0);
        apply_vec(&padded, &jail().dest, &delete()).unwrap();
    }

    /// A zstd layer that starts with skippable frames (magic 0x184D2A50 to
    /// 0x184D2A5F, as containerd and moby detect it) is zstd: the frames
    /// are skipped, and belong to the digest but not to the diff_id. One
    /// with only a skippable frame and then garbage is corrupt zstd.
    #[test]
    fn zstd_after_a_skippable_frame() {
        let tar = sample_tar();
        for magic in [0x50u8, 0x5f] {
            let mut data = vec![magic, 0x2a, 0x4d, 0x18, 8, 0, 0, 0];
            data.extend_from_slice(b"skipskip");
            data.extend(zstd_of(&tar[..1024]));
            // A second skippable frame between two zstd frames.
            data.extend_from_slice(&[0x5a, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]);
            data.extend(zstd_of(&tar[1024..]));
            let j = jail();
            let d = apply_vec(&data, &j.dest, &delete()).unwrap();
            assert_eq!(d.compression, "zstd");
            assert_eq!(d.diff_id, sha(&tar));
            assert_eq!(d.digest, sha(&data));
            assert_eq!(std::fs::read(j.dest.join("d/z")).unwrap(), b"zzz");
        }
        let mut bad = vec![0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
        bad.extend_from_slice(&tar);
        jail().refuse(&bad, &delete(), "zstd");
    }

    /// Refusals say where and what: garbage after a gzip stream is after
    /// the last entry (the entries before an input error are read first),
    /// a gzip stream cut inside a file names that file, a symlink target
    /// over PATH_MAX is the target's fault, and a hardlink whose target's
    /// directory became a symlink names the target's parent.
    #[test]
    fn refusals_say_where_and_what() {
        let good = sample_tar();
        let mut gz = gzip(&good);
        gz.extend_from_slice(b"GARBAGE");
        jail().refuse(
            &gz,
            &delete(),
            "(after the end-of-archive block, after entry `d/z`)",
        );
        let gz = gzip(&good);
        let cut = &gz[..gz.len() / 2];
        jail().refuse(cut, &delete(), "(entry `d/big`)");
        let long = vec![b'x'; 5000];
        let data = with_pax(&[(b"linkpath", &long)], tar_of(&[symlink(b"ls", b"x")]));
        jail().refuse(
            &data,
            &delete(),
            "entry `ls`: its symlink target is too long (5000 bytes",
        );
        let data = tar_of(&[
            dir(b"d/"),
            file(b"d/f", b""),
            symlink(b"d", b"/etc"),
            hardlink(b"hl", b"d/f"),
        ]);
        jail().refuse(
            &data,
            &delete(),
            "entry `hl`: hardlink target `d/f`: its parent `d` is a symlink",
        );
    }

    #[test]
    fn refuses_bombs() {
        let zeros = vec![0u8; 10 << 20];
        let data = gzip(&tar_of(&[file(b"zeros", &zeros)]));
        assert!(data.len() < 100_000);
        let j = jail();
        let o = ApplyOptions {
            max_size: 1 << 20,
            ..delete()
        };
        j.refuse(&data, &o, "limit");
        let meta = std::fs::metadata(j.dest.join("zeros"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(meta <= 1 << 20);
        // A huge GNU long name is refused before it is read.
        let mut h = tar::Header::new_gnu();
        set_field(&mut h.as_old_mut().name, b"././@LongLink");
        h.set_size(1 << 40);
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_cksum();
        jail().refuse(h.as_bytes(), &delete(), "long name");
        // Within the limit: fine.
        let o = ApplyOptions {
            max_size: 11 << 20,
            ..delete()
        };
        apply_vec(&data, &jail().dest, &o).unwrap();
    }

    /// A layer of several read-ahead chunks: files straddle chunk
    /// boundaries, buffers come back from hashing and are filled again, and
    /// the limit and a failing input are noticed in any chunk.
    #[test]
    fn layers_of_many_chunks() {
        let big: Vec<u8> = (0..3 * CHUNK + 777).map(|i| (i * 7 % 251) as u8).collect();
        let small: Vec<u8> = (0..CHUNK / 3).map(|i| (i % 13) as u8).collect();
        let names: Vec<Vec<u8>> = (0..7).map(|i| format!("f{i}").into_bytes()).collect();
        let mut members = vec![file(b"big", &big)];
        members.extend(names.iter().map(|n| file(n, &small)));
        let plain = tar_of(&members);
        assert!(plain.len() > 5 * CHUNK);
        for data in [plain.clone(), gzip(&plain), zstd_of(&plain)] {
            let j = jail();
            let d = apply_vec(&data, &j.dest, &delete()).unwrap();
            assert_eq!(d.diff_id, sha(&plain));
            assert_eq!(d.digest, sha(&data));
            assert!(std::fs::read(j.dest.join("big")).unwrap() == big);
            for n in &names {
                let path = j.dest.join(OsStr::from_bytes(n));
                assert!(std::fs::read(path).unwrap() == small);
            }
        }
        // The limit falls in the third chunk of a plain layer.
        let o = ApplyOptions {
            max_size: 2 * CHUNK as u64 + 5,
            ..delete()
        };
        jail().refuse(&plain, &o, "limit");

        // The input fails after two chunks: a read error, not a corrupt layer.
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let j = jail();
        let mut input = Failing(&plain[..2 * CHUNK]);
        match apply(&mut input, &j.dest, &delete(), &mut |_| {}) {
            Err(LayerError::Io { what, source }) => {
                assert!(what.contains("cannot read the layer"), "{what}");
                assert!(source.to_string().contains("disk on fire"), "{source}");
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn digests_and_progress() {
        let good = sample_tar();
        for data in [good.clone(), gzip(&good), zstd_of(&good)] {
            let j = jail();
            let mut seen = Vec::new();
            let d = apply(&mut &data[..], &j.dest, &delete(), &mut |n| seen.push(n)).unwrap();
            assert_eq!(d.digest, sha(&data));
            assert_eq!(d.diff_id, sha(&good));
            assert_eq!(d.size, data.len() as u64);
            assert_eq!(seen.last(), Some(&(data.len() as u64)));
        }
    }

    #[test]
    fn whiteout_semantics() {
        // Delete: `.wh.X` removes the parent's X, but not one this layer made;
        // an opaque marker keeps what this layer made before it.
        let j = jail();
        let d = &j.dest;
        std::fs::create_dir_all(d.join("o/sub")).unwrap();
        std::fs::write(d.join("o/old"), b"").unwrap();
        std::fs::write(d.join("o/sub/old"), b"").unwrap();
        std::fs::create_dir_all(d.join("w/deep")).unwrap();
        std::fs::write(d.join("w/deep/f"), b"").unwrap();
        std::fs::create_dir_all(d.join("p/q")).unwrap();
        std::fs::write(d.join("p/q/old"), b"").unwrap();
        let data = tar_of(&[
            file(b"mine", b"1"),
            file(b".wh.mine", b""),
            file(b".wh.w", b""),
            file(b".wh.absent", b""),
            dir(b"o/"),
            file(b"o/-first", b"before the marker"),
            dir(b"o/sub/"),
            file(b"o/.wh..wh..opq", b""),
            file(b"o/sub/new", b""),
            file(b"p/q/new", b""),
            file(b"p/.wh..wh..opq", b""),
            file(b".wh..wh.plnk", b""),
        ]);
        apply_vec(&data, d, &delete()).unwrap();
        let mut left: Vec<String> = snapshot(d).into_keys().collect();
        left.sort();
        assert_eq!(
            left,
            [
                "mine",
                "o",
                "o/-first",
                "o/sub",
                "o/sub/new",
                "p",
                "p/q",
                "p/q/new"
            ]
        );
        j.untouched();

        // Overlay (over `sibling`, which has `x`): a directory replacing a
        // whiteout of the same layer is opaque.
        let j = jail();
        let data = tar_of(&[file(b".wh.x", b""), dir(b"x/"), file(b"x/f", b"")]);
        let lowers = vec![j.top.join("sibling")];
        apply_vec(
            &data,
            &j.dest,
            &opts(Whiteouts::Overlay {
                user_xattr: true,
                lowers,
            }),
        )
        .unwrap();
        let mut v = [0u8; 4];
        let n =
            rustix::fs::lgetxattr(j.dest.join("x"), c"user.overlay.opaque", &mut v[..]).unwrap();
        assert_eq!(&v[..n], b"y");
        j.untouched();
        // Overlay xattrs in an archive are not applied.
        let j = jail();
        let mut pax = Vec::new();
        pax_record(&mut pax, b"SCHILY.xattr.user.overlay.redirect", b"/etc");
        pax_record(&mut pax, b"SCHILY.xattr.user.ok", b"fine");
        let mut data = raw(b"x", b'x', &pax, b"");
        data.truncate(data.len() - 1024);
        data.extend(raw(b"f", b'0', b"", b""));
        apply_vec(&data, &j.dest, &delete()).unwrap();
        let names: Vec<Vec<u8>> = list_xattrs(&j.dest.join("f"))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, [b"user.ok".to_vec()]);
    }

    /// Files of several read chunks (and of exactly one), a file replaced by
    /// a later entry, a hardlink to a large file and a whiteout after one of
    /// this layer's files all end as the archive says, with their metadata.
    #[test]
    fn large_replaced_and_linked_files() {
        let j = jail();
        let big: Vec<u8> = (0..(3 * CHUNK + 12_345)).map(|i| (i % 251) as u8).collect();
        let exact = vec![7u8; CHUNK];
        let data = tar_of(&[
            file(b"big", &big),
            hardlink(b"big-link", b"big"),
            file(b"exact", &exact),
            file(b"again", &big),
            file(b"again", b"second"),
            file(b"gone", &big),
            file(b".wh.gone", b""),
            file(b"small", b"tiny"),
        ]);
        apply_vec(&data, &j.dest, &opts(Whiteouts::Delete)).unwrap();
        let read = |n: &str| std::fs::read(j.dest.join(n)).unwrap();
        assert_eq!(read("big"), big);
        assert_eq!(read("big-link"), big);
        let (a, b) = (
            std::fs::metadata(j.dest.join("big")).unwrap(),
            std::fs::metadata(j.dest.join("big-link")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        assert_eq!(a.mode() & 0o7777, 0o644);
        assert_eq!(a.mtime(), 1_000_000_000);
        assert_eq!(read("exact"), exact);
        assert_eq!(read("again"), b"second");
        // A whiteout only hides lower layers' files, not this layer's own.
        assert_eq!(read("gone"), big);
        assert_eq!(read("small"), b"tiny");
        j.untouched();
    }

    /// A failure to write (a full filesystem) is an I/O error naming the file.
    #[test]
    fn write_errors_name_the_file() {
        let t = tmp();
        let small = t.path().join("small");
        std::fs::create_dir(&small).unwrap();
        // A 1 MiB tmpfs: the second big file cannot fit.
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&small)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot mount a tmpfs (needs root)"
            );
            eprintln!("skipped: cannot mount a tmpfs (needs root)");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _guard = Unmount(&small);
        let big = vec![1u8; 700 * 1024];
        let data = tar_of(&[file(b"one", &big), file(b"two", &big), file(b"three", b"x")]);
        let err = apply_vec(&data, &small, &opts(Whiteouts::Delete)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LayerError::Io { .. }), "{text}");
        assert!(
            text.contains("cannot write") && text.contains("two"),
            "{text}"
        );
    }

    #[test]
    fn dir_entry_updates_existing_dir() {
        let j = jail();
        std::fs::create_dir(j.dest.join("d")).unwrap();
        std::fs::write(j.dest.join("d/keep"), b"k").unwrap();
        setx(&j.dest.join("d"), c"user.stale", b"1");
        let mut data = tar_of(&[dir(b"d/")]);
        // Mode 0700 via a hand-edited header.
        let h = tar::Header::from_byte_slice(&data[..512]).clone();
        let mut h = h;
        h.set_mode(0o700);
        h.set_cksum();
        data[..512].copy_from_slice(h.as_bytes());
        apply_vec(&data, &j.dest, &delete()).unwrap();
        assert_eq!(std::fs::read(j.dest.join("d/keep")).unwrap(), b"k");
        let md = std::fs::metadata(j.dest.join("d")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o700);
        assert_eq!(md.mtime(), 1_000_000_000);
        assert!(list_xattrs(&j.dest.join("d")).is_empty());
    }

    /// Typeflag NUL (the old "regular file") with a name ending in `/` is a
    /// directory, as Go's archive/tar reads it; `0` stays a file.
    #[test]
    fn old_style_directory_entries() {
        let j = jail();
        let mut data = tar_of(&[dir(b"vdir/"), file(b"vdir/f", b"x"), file(b"reg/", b"")]);
        let flag = |data: &mut Vec<u8>, at: usize, kind: u8| {
            let mut h = tar::Header::from_byte_slice(&data[at..at + 512]).clone();
            h.as_old_mut().linkflag[0] = kind;
            h.set_cksum();
            data[at..at + 512].copy_from_slice(h.as_bytes());
        };
        flag(&mut data, 0, 0);
        // `vdir/f` takes a header and a data block.
        flag(&mut data, 3 * 512, b'0');
        apply_vec(&data, &j.dest, &delete()).unwrap();
        assert!(
            std::fs::symlink_metadata(j.dest.join("vdir"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(std::fs::read(j.dest.join("vdir/f")).unwrap(), b"x");
        assert!(
            std::fs::symlink_metadata(j.dest.join("reg"))
                .unwrap()
                .is_file()
        );
        // NUL without the `/` is a file.
        let mut data = tar_of(&[file(b"plain", b"y")]);
        flag(&mut data, 0, 0);
        let k = jail();
        apply_vec(&data, &k.dest, &delete()).unwrap();
        assert_eq!(std::fs::read(k.dest.join("plain")).unwrap(), b"y");
    }

    /// Files are created with their final owner and mode when `open` gives
    /// exactly that, and fixed with fchown/fchmod whenever it does not: the
    /// umask clears bits, a setgid directory hands down its group, a default
    /// ACL decides the mode, setuid bits, other owners.
    #[test]
    fn new_files_get_the_layers_owner_and_mode() {
        need_root!();
        let j = jail();
        let sg = j.dest.join("sg");
        std::fs::create_dir(&sg).unwrap();
        std::os::unix::fs::chown(&sg, None, Some(50)).unwrap();
        rustix::fs::chmod(&sg, Mode::from_raw_mode(0o2775)).unwrap();
        let acl = j.dest.join("acl");
        std::fs::create_dir(&acl).unwrap();
        // Default ACL u::rwx,g::---,o::--- (xattr format version 2: tag,
        // perm, id per entry): a file created in it gets no group or other
        // bits whatever the umask says.
        let mut value = 2u32.to_le_bytes().to_vec();
        for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
            value.extend(tag.to_le_bytes());
            value.extend(perm.to_le_bytes());
            value.extend(u32::MAX.to_le_bytes());
        }
        let acl_set = rustix::fs::setxattr(
            &acl,
            c"system.posix_acl_default",
            &value,
            XattrFlags::empty(),
        );
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, mode: u32, uid: u64, gid: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(1_000_000_000);
            h.set_size(1);
            h.set_cksum();
            b.append_data(&mut h, path, &b"x"[..]).unwrap();
        };
        let want = [
            ("plain", 0o644, 0, 0),
            ("open", 0o666, 0, 0),
            ("exec", 0o755, 0, 0),
            ("private", 0o600, 0, 0),
            ("readonly", 0o444, 0, 0),
            ("nothing", 0o000, 0, 0),
            ("theirs", 0o640, 1000, 1001),
            ("tool", 0o4755, 0, 0),
            ("sg/f", 0o644, 0, 0),
            ("sg/g", 0o644, 0, 50),
            ("acl/f", 0o644, 0, 0),
        ];
        for (path, mode, uid, gid) in want {
            add(path, mode, uid, gid);
        }
        let data = b.into_inner().unwrap();
        apply_vec(&data, &j.dest, &delete()).unwrap();
        for (path, mode, uid, gid) in want {
            if path.starts_with("acl/") && acl_set.is_err() {
                eprintln!("skipped {path}: no ACL support here ({acl_set:?})");
                continue;
            }
            let md = std::fs::symlink_metadata(j.dest.join(path)).unwrap();
            assert_eq!(
                (md.mode() & 0o7777, md.uid(), md.gid()),
                (mode, uid as u32, gid as u32),
                "{path}"
            );
            assert_eq!(md.mtime(), 1_000_000_000, "{path}");
        }
    }

    /// A member with a PAX header carrying `path`.
    fn pax_member(path: &[u8], kind: u8, mode: u32) -> Vec<u8> {
        let mut pax = Vec::new();
        pax_record(&mut pax, b"path", path);
        let mut out = raw(b"PaxHeaders.0/x", b'x', &pax, b"");
        out.truncate(out.len() - 1024);
        let mut m = raw(b"truncated-name", kind, b"", b"");
        let mut h = tar::Header::from_byte_slice(&m[..512]).clone();
        h.set_mode(mode);
        h.set_cksum();
        m[..512].copy_from_slice(h.as_bytes());
        m.truncate(m.len() - 1024);
        out.extend(m);
        out
    }

    #[test]
    fn paths_longer_than_path_max() {
        let j = jail();
        let comp = "c".repeat(200);
        let mut data = Vec::new();
        let mut path = String::new();
        for _ in 0..25 {
            path = format!("{path}{comp}/");
            data.extend(pax_member(path.as_bytes(), b'5', 0o711));
        }
        data.extend(pax_member(format!("{path}leaf").as_bytes(), b'0', 0o600));
        data.extend_from_slice(&[0u8; 1024]);
        apply_vec(&data, &j.dest, &delete()).unwrap();
        let out = Command::new("find")
            .arg(&j.dest)
            .args(["-mindepth", "1", "-printf", "%m %y\\n"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.matches("711 d").count(), 25, "{text}");
        assert_eq!(text.matches("600 f").count(), 1, "{text}");
        j.untouched();
    }

    #[test]
    fn pax_helpers() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"abc");
        assert_eq!(v, b"12 path=abc\n");
        let mut v = Vec::new();
        pax_record(&mut v, b"k", &[b'x'; 95]);
        assert_eq!(&v[..4], b"102 ");
        assert_eq!(v.len(), 102);
        assert_eq!(parse_pax(&v).unwrap()[0].1.len(), 95);
        let t = parse_pax_time(b"1.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1, 500_000_000));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        let t = parse_pax_time(b"1700000000.1234567891").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 123_456_789));
        assert!(parse_pax_time(b"x").is_none());
        assert_eq!(
            ustar_split(&[b'a'; 100]),
            Some((&b""[..], &[b'a'; 100][..]))
        );
        let p = [&[b'd'; 120][..], b"/", &[b'f'; 90]].concat();
        assert_eq!(ustar_split(&p), Some((&[b'd'; 120][..], &[b'f'; 90][..])));
        assert_eq!(ustar_split(&[b'a'; 101]), None);
        assert!(path_order(b"a/b", b"a-b").is_lt());
        assert!(path_order(b"a", b"a/b").is_lt());
    }

    /// `path kind` of every entry under `root`, sorted; a char 0/0 is a
    /// `whiteout`, an opaque directory `opaque`.
    fn listing(root: &Path) -> Vec<String> {
        let mut out: Vec<String> = snapshot(root)
            .into_keys()
            .map(|rel| {
                let p = root.join(&rel);
                let md = std::fs::symlink_metadata(&p).unwrap();
                let kind = if is_whiteout_dev(&md) {
                    "whiteout"
                } else if md.is_dir() && is_opaque(&p).unwrap() {
                    "opaque"
                } else if md.is_dir() {
                    "dir"
                } else if md.file_type().is_symlink() {
                    "symlink"
                } else {
                    "file"
                };
                format!("{rel} {kind}")
            })
            .collect();
        out.sort();
        out
    }

    /// Two lower layers made by hand, nearest first, and an empty upper.
    struct Chain {
        _t: tempfile::TempDir,
        lowers: Vec<PathBuf>,
        dest: PathBuf,
    }

    impl Chain {
        fn overlay(&self) -> ApplyOptions {
            opts(Whiteouts::Overlay {
                user_xattr: false,
                lowers: self.lowers.clone(),
            })
        }

        fn lowers_listing(&self) -> Vec<Vec<String>> {
            self.lowers.iter().map(|l| listing(l)).collect()
        }
    }

    /// Far: `a`, `d/x`, `w`, `o/y`, `deep/e/f`, `lnk -> d`, `lnk2 -> d`,
    /// `plain`, `hid/z`. Near: whiteouts of `w` and `lnk`, `o` opaque (and empty),
    /// `hid/` opaque with `hid/mine`.
    fn chain() -> Chain {
        let t = tmp();
        let [near, far, dest] =
            <[PathBuf; 3]>::try_from(mkdirs(t.path(), &["near", "far", "dest"])).unwrap();
        for d in ["d", "o", "deep/e", "hid"] {
            std::fs::create_dir_all(far.join(d)).unwrap();
        }
        for f in ["a", "d/x", "w", "o/y", "deep/e/f", "plain", "hid/z"] {
            std::fs::write(far.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("d", far.join("lnk")).unwrap();
        std::os::unix::fs::symlink("d", far.join("lnk2")).unwrap();
        for w in ["w", "lnk"] {
            mknod(&near.join(w), rustix::fs::FileType::CharacterDevice, 0, 0);
        }
        for d in ["o", "hid"] {
            std::fs::create_dir(near.join(d)).unwrap();
            setx(&near.join(d), c"trusted.overlay.opaque", b"y");
        }
        std::fs::write(near.join("hid/mine"), b"mine").unwrap();
        Chain {
            _t: t,
            lowers: vec![near, far],
            dest,
        }
    }

    /// Overlay: a whiteout is made only where a layer below has something
    /// at its path (overlayfs shows one in a directory that merges with
    /// nothing below); no directory is made for one that hides nothing.
    #[test]
    fn overlay_whiteouts_only_hide_what_is_below() {
        need_root!();
        let c = chain();
        let before = c.lowers_listing();
        let data = tar_of(&[
            file(b".wh.a", b""),
            file(b".wh.nothing", b""),
            file(b".wh.w", b""),
            file(b"o/.wh.y", b""),
            file(b"hid/.wh.z", b""),
            file(b"hid/.wh.mine", b""),
            file(b"d/.wh.x", b""),
            file(b"d/.wh.nope", b""),
            dir(b"new/"),
            file(b"new/.wh.z", b""),
            file(b"new/.wh..wh..opq", b""),
            file(b"ghost/.wh.q", b""),
            file(b"ghost2/.wh..wh..opq", b""),
            file(b"deep/e/.wh.f", b""),
        ]);
        apply_vec(&data, &c.dest, &c.overlay()).unwrap();
        assert_eq!(
            listing(&c.dest),
            [
                "a whiteout",
                "d dir",
                "d/x whiteout",
                "deep dir",
                "deep/e dir",
                "deep/e/f whiteout",
                "hid dir",
                "hid/mine whiteout",
                "new dir",
            ]
        );
        assert_eq!(c.lowers_listing(), before, "the lowers are only read");
        // A root layer: nothing below, no whiteout.
        let j = jail();
        let data = tar_of(&[file(b".wh.x", b""), dir(b"a/"), file(b"a/.wh.y", b"")]);
        apply_vec(
            &data,
            &j.dest,
            &opts(Whiteouts::Overlay {
                user_xattr: false,
                lowers: vec![],
            }),
        )
        .unwrap();
        assert_eq!(listing(&j.dest), ["a dir"]);
    }

    /// Overlay: a directory an entry implies, where this layer made a
    /// whiteout, replaces it, opaque (on native the whiteout deleted it and
    /// the entry makes it again); markers under such a whiteout hide
    /// nothing more.
    #[test]
    fn implied_directories_replace_the_layers_whiteouts() {
        need_root!();
        let c = chain();
        let data = tar_of(&[
            file(b".wh.d", b""),
            file(b"d/new", b"new"),
            file(b".wh.a", b""),
            file(b"a/b/c", b"c"),
            file(b".wh.deep", b""),
            file(b"deep/.wh.e", b""),
            file(b"deep/.wh..wh..opq", b""),
        ]);
        apply_vec(&data, &c.dest, &c.overlay()).unwrap();
        assert_eq!(
            listing(&c.dest),
            [
                "a opaque",
                "a/b dir",
                "a/b/c file",
                "d opaque",
                "d/new file",
                "deep whiteout",
            ]
        );
    }

    /// Overlay: a root opaque marker (the kernel ignores the xattr on the
    /// upper's root) whites out every name shown below, but what this layer
    /// made before it; its directories become opaque, and later entries
    /// replace the whiteouts.
    #[test]
    fn root_opaque_marker_whites_out_the_lower_root() {
        need_root!();
        let c = chain();
        let data = tar_of(&[
            dir(b"d/"),
            file(b"d/mine", b"mine"),
            file(b"keepfile", b"k"),
            dir(b"fresh/"),
            file(b"./.wh..wh..opq", b""),
            file(b"a", b"new a"),
            file(b"deep/g", b"g"),
            dir(b"o/"),
            file(b"plain/.wh.zz", b""),
            file(b".wh.hid", b""),
            file(b"d/.wh.x", b""),
        ]);
        apply_vec(&data, &c.dest, &c.overlay()).unwrap();
        assert!(!is_opaque(&c.dest).unwrap(), "the root gets no xattr");
        assert_eq!(
            listing(&c.dest),
            [
                "a file",
                "d opaque",
                "d/mine file",
                "deep opaque",
                "deep/g file",
                "fresh dir",
                "hid whiteout",
                "keepfile file",
                "lnk2 whiteout",
                "o opaque",
                "plain whiteout",
            ]
        );
    }

    /// A whiteout or opaque marker under a path this layer made a
    /// non-directory (umoci: `d -> e`, then `d/.wh.x` for the directory it
    /// replaced) is ignored on both drivers and never followed; a regular
    /// entry through the layer's own symlink is still refused.
    #[test]
    fn whiteouts_under_the_layers_own_non_directories_are_ignored() {
        let layer = tar_of(&[
            symlink(b"d", b"e"),
            file(b"d/.wh.x", b""),
            file(b"d/.wh..wh..opq", b""),
            file(b"d/sub/.wh.y", b""),
            symlink(b"out", b"../sibling"),
            file(b"out/.wh.x", b""),
            file(b"out/.wh..wh..opq", b""),
            file(b"f", b"now a file"),
            file(b"f/.wh.y", b""),
            hardlink(b"h", b"f"),
            file(b"h/.wh.z", b""),
        ]);
        // Native: a copy of the parent, where `d` and `f` are directories.
        let j = jail();
        for dir in ["d", "e", "f"] {
            std::fs::create_dir(j.dest.join(dir)).unwrap();
        }
        for f in ["d/x", "e/x", "e/y", "f/y"] {
            std::fs::write(j.dest.join(f), f).unwrap();
        }
        apply_vec(&layer, &j.dest, &delete()).unwrap();
        assert_eq!(
            listing(&j.dest),
            [
                "d symlink",
                "e dir",
                "e/x file",
                "e/y file",
                "f file",
                "h file",
                "out symlink"
            ]
        );
        j.untouched();
        // Overlay: `deep/e` and `d` are directories below.
        need_root!();
        let c = chain();
        let before = c.lowers_listing();
        let layer = tar_of(&[
            symlink(b"d", b"deep/e"),
            file(b"d/.wh.x", b""),
            file(b"d/.wh.f", b""),
            file(b"d/.wh..wh..opq", b""),
            file(b"deep", b"now a file"),
            file(b"deep/.wh.e", b""),
            file(b"deep/e/.wh.f", b""),
            file(b"deep/e/.wh..wh..opq", b""),
        ]);
        apply_vec(&layer, &c.dest, &c.overlay()).unwrap();
        assert_eq!(listing(&c.dest), ["d symlink", "deep file"]);
        assert_eq!(c.lowers_listing(), before);
        // Still refused: a regular entry through the layer's own symlink.
        let j = jail();
        let data = tar_of(&[symlink(b"out", b"../sibling"), file(b"out/evil", b"")]);
        j.refuse(&data, &delete(), "its parent `out` is a symlink");
        let c = chain();
        let data = tar_of(&[symlink(b"d", b"deep/e"), file(b"d/evil", b"")]);
        match apply_vec(&data, &c.dest, &c.overlay()) {
            Err(LayerError::Invalid(msg)) => assert!(msg.contains("its parent `d` is a symlink")),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Overlay: an entry whose path goes through a symlink or a
    /// non-directory of the layers below is refused as native refuses it
    /// (its full tree has them); one that a nearer layer or this one hides
    /// or replaces first is not.
    #[test]
    fn overlay_refuses_paths_through_lower_non_directories() {
        need_root!();
        let symlink_parent = "its parent `lnk2` is a symlink";
        let refused: [(&[u8], &str); 7] = [
            (b"lnk2/.wh.x", symlink_parent),
            (b"lnk2/.wh..wh..opq", symlink_parent),
            (b"lnk2/f", symlink_parent),
            (
                b"plain/.wh..wh..opq",
                "its parent `plain` is not a directory",
            ),
            (b"plain/x", "its parent `plain` is not a directory"),
            (b"deep/e/f/g", "its parent `deep/e/f` is not a directory"),
            (
                b"deep/e/f/.wh.g",
                "its parent `deep/e/f` is not a directory",
            ),
        ];
        for (name, needle) in refused {
            let c = chain();
            let before = c.lowers_listing();
            match apply_vec(&tar_of(&[file(name, b"")]), &c.dest, &c.overlay()) {
                Err(LayerError::Invalid(msg)) => {
                    assert!(msg.contains(needle), "{}: `{msg}`", show(name))
                }
                other => panic!("{}: expected Invalid, got {other:?}", show(name)),
            }
            assert_eq!(c.lowers_listing(), before);
        }
        let c = chain();
        let data = tar_of(&[
            file(b"lnk/f", b"whited out below"),
            file(b".wh.lnk2", b""),
            file(b"lnk2/f", b"whited out here"),
            dir(b"plain/"),
            file(b"plain/x", b"replaced"),
        ]);
        apply_vec(&data, &c.dest, &c.overlay()).unwrap();
        assert_eq!(
            listing(&c.dest),
            [
                "lnk dir",
                "lnk/f file",
                "lnk2 opaque",
                "lnk2/f file",
                "plain dir",
                "plain/x file",
            ]
        );
    }
}
