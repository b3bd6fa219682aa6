//! Writing a layer: `write` sorts the change set's items and emits them as a
//! tar stream ([`TarWriter`]: ustar headers, PAX records only where needed),
//! compressed and hashed on the way (the diff_id of the tar, the digest of
//! what is written). The decisions are in the parent module's documentation
//! ("Writing: decisions").

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::changes::{
    Item, left_below, open_file, read_link, refuse_reserved, walk_compare, walk_upper,
    xattrs_listed,
};
use super::reader::Digester;
use super::{
    BLOCK, Changes, Compression, Digests, LayerError, PROGRESS_STEP, Result, XATTR_PAX_PREFIX,
    invalid, io_err, path_order, sha256_string, show,
};

const COPY_BUF: usize = 256 * 1024;

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

pub(super) fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
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

pub(super) fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Splits a long name into ustar prefix and name, if possible.
pub(super) fn ustar_split(path: &[u8]) -> Option<(&[u8], &[u8])> {
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
/// (parents before children, a directory's `.wh.` markers before its other
/// entries; see `path_order`), numeric uid/gid
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
    refuse_reserved(&items)?;

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
        crate::store::interrupt::check().map_err(out_err)?;
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
