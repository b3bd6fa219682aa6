//! Tests of the layer module: round trips through `write` and `apply`,
//! archives built by hand (GNU and PAX extensions, sparse files, hostile
//! names, corrupt data), both whiteout drivers, and the helpers of each part.
//! Most cover several parts at once, so they stay one module.

use super::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::Command;

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps, XattrFlags};

use super::changes::{is_opaque, is_whiteout_dev, same_content, sorted_names, xattrs_of};
use super::reader::{CHUNK, parse_pax, parse_pax_time};
use super::writer::{pax_record, set_field, ustar_split};

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
    let [lower, upper, work, merged, upper2, work2, merged2] = <[PathBuf; 7]>::try_from(mkdirs(
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
    let n =
        rustix::fs::lgetxattr(upper2.join("dir"), c"trusted.overlay.opaque", &mut v[..]).unwrap();
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
    let n = rustix::fs::lgetxattr(upper3.join("dir"), c"user.overlay.opaque", &mut v[..]).unwrap();
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
    // A negative size in base-256 (all ones: -1) is named as such, not as
    // an archive ending 2^64 bytes early.
    jail().refuse(
        &with(b"", &[(size.clone(), 0xff)]),
        &delete(),
        "entry `f`: its size field is negative",
    );
    // 2^64 and more, and a first byte GNU tar does not take for base-256:
    // refused, not read from the last 8 bytes alone (it was read as 0).
    for fields in [
        [(size.clone(), 0), (124..125, 0x80), (127..128, 1)],
        [(size.clone(), 0), (124..125, 0xc0), (135..136, 1)],
    ] {
        let data = with(b"", &fields);
        jail().refuse(
            &data,
            &delete(),
            "entry `f`: its size field is out of range",
        );
    }
    // Base-256 zero is a size.
    let zero = with(b"", &[(size.clone(), 0), (124..125, 0x80)]);
    let j = jail();
    apply_vec(&zero, &j.dest, &delete()).unwrap();
    assert_eq!(std::fs::metadata(j.dest.join("f")).unwrap().len(), 0);
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
    let n = rustix::fs::lgetxattr(j.dest.join("x"), c"user.overlay.opaque", &mut v[..]).unwrap();
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
    assert!(path_order(b"a", b"a").is_eq());
    assert!(path_order(b"d/.wh.y", b"d/-x").is_lt());
    assert!(path_order(b"d/.wh..wh..opq", b"d/.wh.a").is_lt());
    assert!(path_order(b"d/-x", b"d/.wh.y/z").is_gt());
    assert!(path_order(b"d", b"d/.wh.y").is_lt());
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
