//! Reading a layer: [`apply`] and the tar parser. The input is read (and
//! inflated) ahead on a second thread and hashed on a third; the
//! uncompressed tar is parsed here, block by block, into [`Member`]s with
//! their extension headers (GNU long names, PAX records, GNU sparse maps)
//! folded in, which [`unpack`] hands to the extractor one at a time.
//!
//! Apart from the extractor: this side knows the tar format and nothing of
//! the tree being written; the extractor knows the tree and only sees whole
//! members. The decisions are in the parent module's documentation
//! ("Reading: decisions").

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rustix::fs::Timespec;
use sha2::{Digest, Sha256};

use super::extract::Extractor;
use super::{
    ApplyOptions, BLOCK, Compression, Digests, LayerError, PROGRESS_STEP, Pairs, Result,
    XATTR_PAX_PREFIX, invalid, io_err, sha256_string, show, sparse,
};

const MAX_LONG_NAME: u64 = 1 << 20;
const MAX_PAX: u64 = 16 << 20;

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

pub(super) const CHUNK: usize = 1 << 20;

/// Bytes on their way to a [`Hashing`], handed over a chunk at a time (for
/// data that passes through buffers we do not own).
pub(super) struct Digester {
    hashing: Hashing,
    pending: Vec<u8>,
}

impl Digester {
    pub(super) fn new() -> Digester {
        Digester {
            hashing: Hashing::new(),
            pending: Vec::with_capacity(2 * CHUNK),
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= CHUNK {
            let mut next = self.hashing.buffer(0);
            next.reserve(2 * CHUNK);
            let full = std::mem::replace(&mut self.pending, next);
            self.hashing.feed(full);
        }
    }

    pub(super) fn finish(mut self) -> Sha256 {
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
pub(super) fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    match read_until_error(input, buf) {
        (len, None) => Ok(len),
        (_, Some(e)) => Err(e),
    }
}

/// The uncompressed tar stream, read in chunks: hashed (diff_id), counted
/// and limited.
pub(super) struct Stream {
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
    pub(super) fn fill(&mut self) -> Result<&[u8]> {
        if self.pos == self.chunk.len() && !self.ended {
            let used = std::mem::take(&mut self.chunk);
            if !used.is_empty() {
                self.hashing.feed(used);
            }
            self.pos = 0;
            crate::store::interrupt::check().map_err(|e| LayerError::Io {
                what: "stopped reading the layer".into(),
                source: e,
            })?;
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

    pub(super) fn consume(&mut self, n: usize) {
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
        } else if self.compression == Compression::Zstd
            && e.to_string().contains("requires too much memory")
        {
            // Valid data, beyond the decoder's window limit: not "corrupt"
            // (audit). The zstd tool refuses it too without `--long`.
            invalid(
                "the zstd data needs a window larger than the 128 MiB strata decodes \
                 (it was written with `zstd --long` or a level above 19 with a long window): \
                 recompress it without --long"
                    .to_string(),
            )
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
    pub(super) fn skip(&mut self, mut n: u64) -> Result<()> {
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

    pub(super) fn skip_padding(&mut self, size: u64) -> Result<()> {
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
pub(super) struct Member {
    pub(super) header: tar::Header,
    pub(super) path: Vec<u8>,
    pub(super) link: Vec<u8>,
    pub(super) size: u64,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: Timespec,
    pub(super) atime: Option<Timespec>,
    pub(super) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Where the data goes in a GNU sparse file (`size` is then the bytes
    /// of data archived, the map taken out).
    pub(super) sparse: Option<sparse::Sparse>,
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
pub(super) fn parse_pax(data: &[u8]) -> std::result::Result<Pairs, String> {
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
pub(super) fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
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
        // GNU base-256 (a first byte with the high bit set) is 0x80 for a
        // positive number and 0xff for a negative one, as GNU tar reads it.
        // The tar crate reads any such field's last 8 bytes: a negative
        // size as one near 2^64, bytes 1 to 3 not at all (review).
        let raw = &header.as_old().size;
        if raw[0] == 0xff {
            return Err(invalid(format!(
                "entry `{hname}`: its size field is negative"
            )));
        }
        if raw[0] & 0x80 != 0 && (raw[0] != 0x80 || raw[1..4] != [0, 0, 0]) {
            return Err(invalid(format!(
                "entry `{hname}`: its size field is out of range"
            )));
        }
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
pub(super) fn header_device(h: &tar::Header) -> std::result::Result<(u32, u32), &'static str> {
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
pub(super) fn header_number<T: Default>(
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
pub(super) fn not_a_number(name: &str, field: &str) -> LayerError {
    invalid(format!("entry `{name}`: its {field} field is not a number"))
}

/// Adds `ctx` to an Invalid message.
pub(super) fn context(e: LayerError, ctx: &str) -> LayerError {
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
