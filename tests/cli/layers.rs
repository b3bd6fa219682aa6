//! OCI layers: `diff` then `apply` reproduces trees with every file kind on
//! both drivers (and across them), layers made by GNU tar with hand-made
//! whiteouts apply to the tree tar itself unpacks, hostile archives are
//! refused with nothing left behind, and apply reads gzip from a pipeline.

use crate::support::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn every_kind() -> Vec<Op> {
    vec![
        dir("/bin", 0o755),
        dir("/private", 0o700),
        dir("/shared", 0o2775),
        dir("/tmp", 0o1777),
        file("/bin/tool", "#!/bin/sh\necho tool\n", 0o4755),
        file("/empty", "", 0o644),
        file("/private/key", "secret", 0o600),
        chown("/private/key", 1234, 5678),
        symlink("bin/tool", "/tool-link"),
        symlink("/nowhere/dangling", "/dangling"),
        link("/private/key", "/key-hardlink"),
        fifo("/pipe"),
        device("/null-ish", 'c', 1, 3),
        device("/loop-ish", 'b', 7, 200),
        xattr("/bin/tool", "user.origin", "layer 0"),
        xattr("/shared", "user.dir", "d"),
        dir("/long", 0o755),
        file(&format!("/long/{}", "n".repeat(200)), "long name", 0o644),
        symlink(&"t".repeat(150), "/long-target"),
        dir("/d", 0o755),
        file("/d/x", "x", 0o644),
        file("/d/keep", "k", 0o644),
        file("/gone", "g", 0o644),
        mtime("/bin/tool", 1_000_000_000),
    ]
}

fn changes() -> Vec<Op> {
    vec![
        remove_all("/gone"),
        remove_all("/d"),
        dir("/d", 0o755),
        file("/d/new", "new", 0o644),
        file("/bin/tool", "#!/bin/sh\necho v2\n", 0o4755),
        rename("/empty", "/renamed"),
        xattr("/private/key", "user.added", "child"),
        chown("/pipe", 5, 6),
        mtime("/bin/tool", 1_100_000_000),
    ]
}

fn mtime_of(store: &Store, name: &str, path: &str) -> i64 {
    let view = format!("{name}-mt");
    store.strata(&["view", &view, name]).success();
    let m = store.mount(&view);
    let t = fs::symlink_metadata(m.join(path)).unwrap().mtime();
    drop(m);
    store.strata(&["rm", "-f", &view]).success();
    t
}

fn diff_to(store: &Store, key: &str, compression: &str) -> (PathBuf, serde_json::Value) {
    let out = store.scratch(&format!("{key}.tar"));
    let run = store
        .strata(&[
            "diff",
            key,
            "--compression",
            compression,
            "--output-file",
            out.to_str().unwrap(),
            "-o",
            "json",
        ])
        .success();
    (out, run.json())
}

/// `strata ARGS < TAR`: a root layer read from stdin.
fn with_stdin(s: &Store, args: &[&str], tar: &Path) -> Run {
    let input = fs::read(tar).unwrap();
    s.strata_with(
        args,
        With {
            stdin: Some(&input),
            ..Default::default()
        },
    )
}

fn round_trip(from: &str, to: &str) {
    let a = setup!(from);
    a.layer("l0", None, &every_kind());
    a.layer("l1", Some("l0"), &changes());
    let want0 = a.view_tree("l0");
    let want1 = a.view_tree("l1");
    let (tar0, d0) = diff_to(&a, "l0", "gzip");
    let (tar1, d1) = diff_to(&a, "l1", "zstd");
    assert!(d0["digest"].as_str().unwrap().starts_with("sha256:"));
    // `parent` is what the changes are against: KEY's own parent by default.
    assert_eq!(d0["parent"], serde_json::Value::Null, "a root layer");
    assert_eq!(d1["parent"], "l0");
    assert_ne!(
        d1["digest"], d1["diff_id"],
        "zstd digest differs from diff_id"
    );

    let b = setup!(to);
    b.strata(&["apply", "l0", tar0.to_str().unwrap()])
        .fails_with(3, "");
    with_stdin(&b, &["apply", "l0"], &tar0).success();
    let applied = b
        .strata(&["apply", "l1", "l0", tar1.to_str().unwrap(), "-o", "json"])
        .success()
        .json();
    assert_eq!(applied["diff_id"], d1["diff_id"]);
    b.view_tree("l0")
        .assert_eq(&want0, &format!("l0 applied {from} -> {to}"));
    b.view_tree("l1")
        .assert_eq(&want1, &format!("l1 applied {from} -> {to}"));
    assert_eq!(mtime_of(&b, "l0", "bin/tool"), 1_000_000_000);
    assert_eq!(mtime_of(&b, "l1", "bin/tool"), 1_100_000_000);
    let info = b.info("l1");
    assert_eq!(info["kind"], "committed");
    assert_eq!(info["parent"], "l0");
    assert!(info["usage"]["inodes"].as_u64().unwrap() > 0);
    // The same change gives the same bytes, whichever store it is in. (An
    // overlay layer and a native one describe one change differently: the
    // upper directory lists its parent directories and opaque markers, a
    // tree comparison lists only what differs. Both unpack to one tree.)
    if from == to {
        let (_, again) = diff_to(&b, "l1", "zstd");
        assert_eq!(again["diff_id"], d1["diff_id"], "diff of the applied layer");
        assert_eq!(again["digest"], d1["digest"]);
    }
}

fn same_driver(driver: &str) {
    round_trip(driver, driver);
}

#[test]
fn overlay_layers_apply_on_native_and_back() {
    round_trip("overlay", "native");
    round_trip("native", "overlay");
}

fn diff_of_an_active_snapshot_and_against_another_parent(driver: &str) {
    let s = setup!(driver);
    s.layer(
        "base",
        None,
        &[file("/a", "a", 0o644), file("/b", "b", 0o644)],
    );
    s.layer("mid", Some("base"), &[file("/c", "c", 0o644)]);
    s.strata(&["prepare", "work", "mid"]).success();
    let m = s.mount("work");
    fs::write(m.join("d"), "d").unwrap();
    fs::remove_file(m.join("a")).unwrap();
    let (tar, _) = diff_to(&s, "work", "none");
    let list = tar_list(&tar);
    assert_eq!(list, vec![".wh.a", "d"], "only the change against mid");
    // Against base: mid's file too.
    let out = s.scratch("vs-base.tar");
    s.strata(&[
        "diff",
        "work",
        "--parent",
        "base",
        "--output-file",
        out.to_str().unwrap(),
    ])
    .success();
    assert_eq!(tar_list(&out), vec![".wh.a", "c", "d"]);
    // To stdout, the report goes to stderr: in the -o format, also with -q
    // (it is the data), naming what the changes are against.
    let run = s
        .strata(&["-q", "-o", "yaml", "diff", "work", "--parent", "base"])
        .success();
    assert!(run.stderr.contains("parent: base\n"), "{}", run.stderr);
    assert!(run.stderr.contains("diff_id: sha256:"), "{}", run.stderr);
    let run = s.strata(&["-o", "json", "diff", "work"]).success();
    let report: serde_json::Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(report["parent"], "mid", "{}", run.stderr);
    assert_eq!(report["output_file"], serde_json::Value::Null);
    drop(m);
    // A view has no changes of its own.
    s.strata(&["view", "v", "mid"]).success();
    s.fails(
        &["diff", "v", "--output-file", out.to_str().unwrap()],
        "failed_precondition",
    );
    s.fails(
        &["diff", "ghost", "--output-file", out.to_str().unwrap()],
        "not_found",
    );
}

/// Names in a tarball, sorted, without directories and `./`.
fn tar_list(path: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tf").arg(path).output().unwrap();
    assert!(out.status.success());
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .filter(|l| !l.is_empty() && !l.ends_with('/'))
        .collect();
    v.sort();
    v
}

#[test]
fn reproducible_with_source_date_epoch() {
    let s = setup!("overlay");
    s.layer("l", None, &[file("/f", "f", 0o644), dir("/d", 0o755)]);
    let run = |out: &Path| {
        s.strata_with(
            &[
                "diff",
                "l",
                "--compression",
                "gzip",
                "--output-file",
                out.to_str().unwrap(),
            ],
            With {
                env: &[("SOURCE_DATE_EPOCH", "86400")],
                ..Default::default()
            },
        )
        .success();
        fs::read(out).unwrap()
    };
    let first = s.scratch("one.tar.gz");
    let one = run(&first);
    let two = run(&s.scratch("two.tar.gz"));
    assert_eq!(one, two, "same tree, same bytes");
    let verbose = Command::new("tar")
        .args(["--full-time", "--numeric-owner", "-tvzf"])
        .arg(&first)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verbose.stdout);
    assert!(
        text.contains("1970-01-02 00:00:00"),
        "mtimes clamped: {text}"
    );
    assert!(text.contains(" 0/0 "), "numeric owners: {text}");
    // A value strata cannot record is refused, not moved to 2262.
    for (value, says) in [
        ("abc", "is not a number of seconds"),
        ("99999999999", "outside the years 1677 to 2262"),
        ("-99999999999", "outside the years 1677 to 2262"),
    ] {
        let out = s.scratch("refused.tar");
        let run = s.strata_with(
            &["diff", "l", "--output-file", out.to_str().unwrap()],
            With {
                env: &[("SOURCE_DATE_EPOCH", value)],
                ..Default::default()
            },
        );
        assert_eq!(run.code, 6, "{}", run.session());
        assert!(run.stderr.contains(says), "{}", run.session());
        assert!(!out.exists(), "{}", run.session());
    }
}

/// Layers made by GNU tar, with whiteouts made by hand, apply to the tree
/// tar itself unpacks (with the whiteouts then carried out by hand).
fn gnu_tar_layers(driver: &str) {
    let s = setup!(driver);
    let t0 = s.scratch_dir("t0");
    apply(&t0, &every_kind());
    let t1 = s.scratch_dir("t1");
    apply(
        &t1,
        &[
            dir("/d", 0o755),
            dir("/shared", 0o2775),
            file("/d/added", "added", 0o644),
            file("/d/.wh.x", "", 0o644),
            file("/.wh.gone", "", 0o644),
            file("/shared/.wh..wh..opq", "", 0o644),
            file("/shared/fresh", "fresh", 0o644),
        ],
    );
    let l0 = s.scratch("l0.tar");
    let l1 = s.scratch("l1.tar.gz");
    let opts = ["--numeric-owner", "--xattrs", "--xattrs-include=*"];
    tar_dir(&t0, &l0, &opts);
    tar_dir(&t1, &l1, &[&opts[..], &["--gzip"]].concat());
    with_stdin(&s, &["apply", "l0"], &l0).success();
    s.strata(&["apply", "l1", "l0", l1.to_str().unwrap()])
        .success();
    // What tar unpacks, with the whiteouts carried out by hand.
    let e = s.scratch_dir("expected");
    for l in [&l0, &l1] {
        let ok = Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(l)
            .arg("-C")
            .arg(&e)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    for p in ["d/.wh.x", "d/x", ".wh.gone", "gone", "shared/.wh..wh..opq"] {
        let _ = fs::remove_file(e.join(p));
    }
    fs::remove_dir_all(e.join("shared")).unwrap();
    // The opaque directory is l1's own entry: its metadata, not l0's xattr.
    apply(
        &e,
        &[
            dir("/shared", 0o2775),
            file("/shared/fresh", "fresh", 0o644),
        ],
    );
    s.view_tree("l1")
        .assert_eq(&Tree::read(&e), "GNU tar layers");
}

/// Runs a Python script in the mounted `key`; its stdout.
/// [`python_in`] a view of committed `key`, made for it and removed after.
fn python_in_view(store: &Store, key: &str, script: &str) -> String {
    let view = format!("{key}-view");
    store.strata(&["view", &view, key]).success();
    let seen = python_in(store, &view, script);
    store.strata(&["rm", &view]).success();
    seen
}

fn python_in(store: &Store, key: &str, script: &str) -> String {
    let m = store.mount(key);
    let out = Command::new("python3")
        .args(["-c", script])
        .current_dir(&m.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Python that goes 30 directories of 200 bytes deep (6 KB, past PATH_MAX)
/// and then runs `then`.
fn deep(then: &str) -> String {
    format!(
        "import os\nfor i in range(30):\n    os.makedirs('d' * 200, exist_ok=True)\n    os.chdir('d' * 200)\n{then}\n"
    )
}

/// A tree nested past PATH_MAX (4096 bytes): `usage` and `commit` measure
/// it, and `diff`, `export` and `import` carry it (the walk reaches a long
/// path through its directory); the layers unpack to the same tree.
fn paths_longer_than_path_max(driver: &str) {
    let s = setup!(driver);
    s.strata(&["prepare", "deep"]).success();
    python_in(
        &s,
        "deep",
        &deep("open('f', 'w').write('x')\nos.chmod('f', 0o644)"),
    );
    let usage = s.strata(&["usage", "--json", "deep"]).success().json();
    assert_eq!(usage[0]["inodes"], 32, "the root, 30 directories, the file");
    s.strata(&["commit", "c", "deep"]).success();
    assert_eq!(s.info("c")["usage"]["inodes"], 32);
    // A change deep down, on top.
    s.strata(&["prepare", "deeper", "c"]).success();
    python_in(
        &s,
        "deeper",
        &deep("open('g', 'w').write('y')\nos.chmod('f', 0o600)"),
    );
    s.strata(&["commit", "c2", "deeper"]).success();
    // What a view of a committed snapshot shows deep down.
    let read = |key: &str| {
        python_in_view(
            &s,
            key,
            &deep(
                "print(open('f').read(), oct(os.stat('f').st_mode & 0o777), os.path.exists('g') and open('g').read())",
            ),
        )
    };
    assert_eq!(read("c2"), "x 0o600 y\n");

    let (tar, _) = diff_to(&s, "c", "gzip");
    let (tar2, _) = diff_to(&s, "c2", "zstd");
    with_stdin(&s, &["apply", "again"], &tar).success();
    assert_eq!(read("again"), "x 0o644 False\n");
    s.strata(&["apply", "again2", "again", tar2.to_str().unwrap()])
        .success();
    assert_eq!(read("again2"), "x 0o600 y\n");

    let layout = s.scratch("layout");
    // The digests stand in one column, whatever the verb (audit: `wrote`
    // and `exists` lines did not line up); import's lines the same.
    let column = |run: Run, verbs: &[&str]| {
        let lines: Vec<&str> = run.stdout.lines().collect();
        for line in &lines[..lines.len() - 1] {
            assert!(
                verbs
                    .iter()
                    .any(|v| line.starts_with(&format!("{v:<7} sha256:"))),
                "{}",
                run.session()
            );
        }
    };
    for verb in ["wrote", "exists"] {
        column(
            s.strata(&["export", "c2", layout.to_str().unwrap()])
                .success(),
            &[verb],
        );
    }
    column(
        s.strata(&["import", layout.to_str().unwrap(), "twice"])
            .success(),
        &["exists", "fetched"],
    );
    s.strata(&["rm", "twice"]).success();
    s.strata(&[
        "import",
        &format!("{}:latest", layout.display()),
        "imported",
    ])
    .success();
    assert_eq!(read("imported"), "x 0o600 y\n");
}

/// A layer 3,000 directories deep (6 KB paths, one name at a time: what
/// costs its depth squared if each level is reached from the root), with a
/// file halfway that a child layer's whiteout removes and a file at the
/// bottom next to which it adds one: the views show them, `usage` counts
/// them, and `diff` carries both layers to the same trees again.
fn deep_layers(driver: &str) {
    const DEPTH: usize = 3000;
    let s = setup!(driver);
    let half = "a/".repeat(DEPTH / 2);
    let all = "a/".repeat(DEPTH);
    let base = s.scratch("deep-base.tar");
    python_tar(
        &base,
        &format!(
            "f({:?}, b'x')\nf({:?}, b'm')",
            format!("{all}f"),
            format!("{half}m")
        ),
    );
    let child = s.scratch("deep-child.tar");
    python_tar(
        &child,
        &format!(
            "f({:?}, b'')\nf({:?}, b'y')",
            format!("{half}.wh.m"),
            format!("{all}g")
        ),
    );
    let root_layer = |name: &str, tar: &Path| {
        with_stdin(&s, &["apply", name], tar).success();
    };
    root_layer("base", &base);
    s.strata(&["apply", "child", "base", child.to_str().unwrap()])
        .success();
    assert_eq!(s.info("base")["usage"]["inodes"], DEPTH + 3);
    let read = |key: &str| {
        python_in_view(
            &s,
            key,
            &format!(
                "import os\nfor i in range({h}): os.chdir('a')\nm = os.path.exists('m')\nfor i in range({h}): os.chdir('a')\nprint(m, open('f').read(), os.path.exists('g') and open('g').read())",
                h = DEPTH / 2
            ),
        )
    };
    assert_eq!(read("base"), "True x False\n");
    assert_eq!(read("child"), "False x y\n");
    let (base_tar, _) = diff_to(&s, "base", "gzip");
    let (child_tar, _) = diff_to(&s, "child", "zstd");
    root_layer("base2", &base_tar);
    s.strata(&["apply", "child2", "base2", child_tar.to_str().unwrap()])
        .success();
    assert_eq!(read("base2"), "True x False\n");
    assert_eq!(read("child2"), "False x y\n");
}

/// Typeflag NUL (the old "regular file") with a name ending in `/` is a
/// directory, as Go's archive/tar (containerd) reads it.
fn old_style_directory_entries(driver: &str) {
    let s = setup!(driver);
    let tar = s.scratch("old.tar");
    python_tar(
        &tar,
        "f('vdir/', b'', type=tarfile.AREGTYPE)\nf('vdir/f', b'x')",
    );
    with_stdin(&s, &["apply", "old"], &tar).success();
    s.strata(&["view", "old-view", "old"]).success();
    let seen = python_in(
        &s,
        "old-view",
        "import os\nprint(os.path.isdir('vdir'), open('vdir/f').read())",
    );
    assert_eq!(seen, "True x\n");
}

/// Sparse files as GNU tar writes them with `-S`, in all four of its ways
/// (old GNU headers, with extension blocks past four runs of data; PAX
/// 0.0, 0.1 and 1.0), apply byte for byte, and keep their holes: the
/// applied file takes about the space of its data, not of its size.
fn gnu_sparse_files(driver: &str) {
    let s = setup!(driver);
    let src = s.scratch_dir("sparse");
    let write_at = |name: &str, size: u64, runs: &[(u64, &[u8])]| {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(src.join(name)).unwrap();
        f.set_len(size).unwrap();
        for (at, data) in runs {
            f.write_all_at(data, *at).unwrap();
        }
    };
    let block = vec![b'd'; 4096];
    // Data at the start and in the middle, a hole at the end.
    write_at("a", 8 << 20, &[(0, &block), (3 << 20, &[b'm'; 8192])]);
    // 40 runs: more than the 4 an old GNU header holds.
    let runs: Vec<(u64, &[u8])> = (0..40u64)
        .map(|i| ((i * 2 + 1) << 17, &block[..]))
        .collect();
    write_at("many", 12 << 20, &runs);
    // Only a hole.
    write_at("empty", 5 << 20, &[]);
    let blocks = |p: &Path| fs::metadata(p).unwrap().blocks();
    assert!(
        blocks(&src.join("a")) <= 64,
        "the scratch area keeps no holes"
    );
    let expected = python_hashes(&src);
    for (i, format) in ["gnu", "0.0", "0.1", "1.0"].iter().enumerate() {
        let tar = s.scratch("sparse.tar");
        let args: Vec<String> = match *format {
            "gnu" => vec!["-S".into(), "--format=gnu".into()],
            v => vec![
                "-S".into(),
                "--format=posix".into(),
                format!("--sparse-version={v}"),
            ],
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tar_dir(&src, &tar, &args);
        let name = format!("l{i}");
        let before = s.snapshot_dirs();
        with_stdin(&s, &["apply", &name], &tar).success();
        let id = s.snapshot_dirs().into_iter().find(|d| !before.contains(d));
        let seen = python_in_view(&s, &name, &hashes_script());
        assert_eq!(seen, expected, "{format} on {driver}");
        // The applied files, in the snapshot's own directory.
        let fs_dir = s.root.join("snapshots").join(id.unwrap()).join("fs");
        let used: Vec<u64> = ["a", "many", "empty"]
            .iter()
            .map(|f| blocks(&fs_dir.join(f)))
            .collect();
        // 12 KiB, 160 KiB and nothing of data (a few blocks of slack each).
        assert!(
            used[0] <= 24 + 8 && used[1] <= 320 + 64 && used[2] <= 8,
            "{format} on {driver}: 512-byte blocks used {used:?}"
        );
    }
}

/// `name size sha256` of each file in the current directory, sorted.
fn hashes_script() -> String {
    "import hashlib, os\nfor n in sorted(os.listdir('.')):\n    d = open(n, 'rb').read()\n    print(n, len(d), hashlib.sha256(d).hexdigest())\n".to_string()
}

fn python_hashes(dir: &Path) -> String {
    let out = Command::new("python3")
        .args(["-c", &hashes_script()])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

both_drivers!(
    same_driver,
    diff_of_an_active_snapshot_and_against_another_parent,
    gnu_tar_layers,
    paths_longer_than_path_max,
    deep_layers,
    old_style_directory_entries,
    blank_numeric_fields_are_zero,
    gnu_sparse_files,
    a_stopped_build_leaves_nothing,
    a_socket_over_a_lower_entry_deletes_it,
    implied_directories_keep_their_times,
    links_made_or_broken_between_equal_files
);

/// Files alike in content and metadata that a change hard-links together,
/// or whose link it breaks, are in the layer, on both drivers, and its
/// apply gives the same links (audit: the native layer was empty, so the
/// link was lost, or kept where it was broken).
fn links_made_or_broken_between_equal_files(driver: &str) {
    use std::os::unix::fs::MetadataExt;
    let s = setup!(driver);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
    s.strata(&["prepare", "w"]).success();
    let m = s.mount("w");
    for name in ["a", "b", "c"] {
        fs::write(m.join(name), "same\n").unwrap();
    }
    fs::hard_link(m.join("c"), m.join("d")).unwrap();
    for name in ["a", "b", "c"] {
        fs::File::options()
            .write(true)
            .open(m.join(name))
            .unwrap()
            .set_modified(at)
            .unwrap();
    }
    s.unmount(&m);
    s.strata(&["commit", "base", "w"]).success();
    s.strata(&["prepare", "w", "base"]).success();
    let m = s.mount("w");
    // a and b linked; d a copy of c, no longer its link.
    fs::remove_file(m.join("b")).unwrap();
    fs::hard_link(m.join("a"), m.join("b")).unwrap();
    fs::remove_file(m.join("d")).unwrap();
    fs::copy(m.join("c"), m.join("d")).unwrap();
    fs::File::options()
        .write(true)
        .open(m.join("d"))
        .unwrap()
        .set_modified(at)
        .unwrap();
    s.unmount(&m);
    s.strata(&["commit", "top", "w"]).success();
    let tar = s.scratch("top.tar");
    s.strata(&["diff", "top", "--output-file", tar.to_str().unwrap()])
        .success();
    s.strata(&["apply", "again", "base", tar.to_str().unwrap()])
        .success();
    s.strata(&["view", "v", "again"]).success();
    let v = s.mount("v");
    let ino = |n: &str| fs::symlink_metadata(v.join(n)).unwrap().ino();
    assert_eq!(
        ino("a"),
        ino("b"),
        "a and b are not linked: {:?}",
        tar_list(&tar)
    );
    assert_ne!(
        ino("c"),
        ino("d"),
        "c and d are still linked: {:?}",
        tar_list(&tar)
    );
    s.unmount(&v);
}

/// A layer that names `d/s/new` without entries for `d` and `d/s` leaves
/// `d`'s times as they were, on both drivers, as overlayfs's copy-up does;
/// `d/s`, where the entry is made, gets the time of the apply on both
/// (audit: on overlay `d` took the time of the apply).
fn implied_directories_keep_their_times(driver: &str) {
    use std::os::unix::fs::MetadataExt;
    let s = setup!(driver);
    let l1 = s.scratch("l1.tar");
    let l2 = s.scratch("l2.tar");
    python_tar(
        &l1,
        "for d in ['d', 'd/s', 'e', 'e/x', 'e/x/y']:\n    f(d, b'', type=tarfile.DIRTYPE, mode=0o755, mtime=1600000000)\nf('d/s/f', mtime=1600000000)",
    );
    python_tar(&l2, "f('d/s/.wh.f', b'')\nf('e/x/y/new', mtime=1600000000)");
    s.strata_with(
        &["apply", "l1"],
        With {
            stdin: Some(&fs::read(&l1).unwrap()),
            ..Default::default()
        },
    )
    .success();
    s.strata(&["apply", "l2", "l1", l2.to_str().unwrap()])
        .success();
    s.strata(&["view", "v", "l2"]).success();
    let m = s.mount("v");
    let mtime = |p: &str| fs::metadata(m.join(p)).unwrap().mtime();
    for kept in ["d", "e", "e/x"] {
        assert_eq!(mtime(kept), 1600000000, "{kept}");
    }
    for changed in ["d/s", "e/x/y"] {
        assert_ne!(mtime(changed), 1600000000, "{changed}");
    }
    s.unmount(&m);
}

/// A socket in place of a lower file or directory is that entry's deletion
/// in the layer, on both drivers alike (audit: on overlay the layer was
/// empty, and the deleted files came back in its image). Sockets are never
/// in a layer themselves.
fn a_socket_over_a_lower_entry_deletes_it(driver: &str) {
    let s = setup!(driver);
    s.layer(
        "l1",
        None,
        &[
            dir("/run", 0o755),
            file("/run/app", "secret\n", 0o644),
            file("/f", "f\n", 0o644),
        ],
    );
    s.strata(&["prepare", "w", "l1"]).success();
    let m = s.mount("w");
    fs::remove_dir_all(m.join("run")).unwrap();
    fs::remove_file(m.join("f")).unwrap();
    let sockets =
        ["run", "f", "new"].map(|n| std::os::unix::net::UnixListener::bind(m.join(n)).unwrap());
    // Bound sockets hold the mount busy; the socket files stay.
    drop(sockets);
    s.unmount(&m);
    s.strata(&["commit", "l2", "w"]).success();
    let tar = s.scratch("l2.tar");
    s.strata(&["diff", "l2", "--output-file", tar.to_str().unwrap()])
        .success();
    let listed = tar_list(&tar);
    for gone in [".wh.run", ".wh.f"] {
        assert!(listed.contains(&gone.to_string()), "{listed:?}");
    }
    assert!(
        !listed.iter().any(|n| n == "run" || n == "f" || n == "new"),
        "{listed:?}"
    );
    s.strata(&["apply", "l2b", "l1", tar.to_str().unwrap()])
        .success();
    let tree = s.view_tree("l2b");
    let names: Vec<&String> = tree.entries.keys().collect();
    assert!(
        !names
            .iter()
            .any(|n| n.trim_start_matches('/').starts_with("run")
                || n.trim_start_matches('/') == "f"),
        "the deleted entries came back: {names:?}"
    );
}

/// Ctrl-C or SIGTERM in the middle of a command that builds something
/// deletes what it had made and ends the process by that signal (audit: an
/// `apply` stopped so left its `new-*` directory, which `check` reported
/// until `prune`; a stopped `diff` left its temporary output file).
fn a_stopped_build_leaves_nothing(driver: &str) {
    use std::os::unix::process::ExitStatusExt;
    let s = setup!(driver);
    s.layer("base", None, &[file("/f", "f\n", 0o644)]);
    let tar = s.scratch("base.tar");
    let tar = tar.to_str().unwrap();
    s.strata(&["diff", "base", "--output-file", tar]).success();
    let outdir = s.scratch_dir("out");
    let out = outdir.join("layer.tar");
    let out = out.to_str().unwrap();
    let mut cases = vec![
        (
            vec!["apply", "lay", "base", tar],
            "create:staging-made",
            libc::SIGINT,
        ),
        (
            vec!["diff", "base", "--output-file", out],
            "diff:read",
            libc::SIGTERM,
        ),
    ];
    // Only the native driver copies the parent's tree: on overlay a
    // prepare has no step left to stop at.
    if driver == "native" {
        cases.push((
            vec!["prepare", "act", "base"],
            "create:staging-made",
            libc::SIGINT,
        ));
    }
    for (args, at, signal) in cases {
        let stopped = Paused::start(&s, &args, at).signal(signal);
        assert_eq!(
            stopped.status.signal(),
            Some(signal),
            "{args:?}: {stopped:?}"
        );
        assert!(stopped.stdout.is_empty(), "{args:?}: {stopped:?}");
        // Consistent without a `prune`: nothing was left behind.
        s.strata(&["check"]).success();
        assert_eq!(s.names(&[]), vec!["base".to_string()], "{args:?}");
        assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0, "{args:?}");
    }
    // A layer from a pipe whose writer sends nothing: the wait for input
    // stops too, at once (review: a caught SIGTERM waited for the writer).
    let fifo = fifo_in(&s);
    let mut cmd = command(&s.root, &["apply", "lay", "base", fifo.to_str().unwrap()]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    terminated_at_once(child, "input");
    drop(writer);
    s.strata(&["check"]).success();
    assert_eq!(s.names(&[]), vec!["base".to_string()]);
    // Waiting for the index another process holds: the wait stops too
    // (review: it went on up to the 30 s timeout).
    let holder = Paused::start(&s, &["prepare", "held"], "create:row-inserted");
    let child = command(&s.root, &["apply", "lay", "base", tar])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    terminated_at_once(child, "the index");
    assert!(holder.resume().status.success());
    s.strata(&["check"]).success();
    assert_eq!(s.names(&[]), vec!["base".to_string(), "held".to_string()]);
    s.strata(&["rm", "held"]).success();
    // Not stopped, the same commands work.
    s.strata(&["apply", "lay", "base", tar]).success();
    s.strata(&["diff", "base", "--output-file", out]).success();
}

/// An overlay `diff --parent` that would mount more layers than overlayfs
/// stacks is `unsupported` before anything is mounted, naming the snapshot
/// (audit: `internal`, "Invalid argument (os error 22)").
#[test]
fn diff_against_another_parent_past_the_overlay_limit_is_unsupported() {
    let s = setup!("overlay");
    chain_by_sql(&s, 502);
    let out = s.scratch("d.tar");
    let o = out.to_str().unwrap();
    for (key, base, deep) in [("l501", "l499", "l501"), ("l1", "l501", "l501")] {
        s.strata(&["diff", key, "--parent", base, "--output-file", o])
            .fails_with(
                7,
                &format!("`{deep}` has 502 layers to mount, more than the 500"),
            );
        assert!(!out.exists());
    }
    // Within the limit it works.
    s.strata(&["diff", "l499", "--parent", "l497", "--output-file", o])
        .success();
}

/// A zstd frame that asks for a window past the decoder's 128 MiB (as
/// `zstd --long` writes for a big layer) is refused as that, not called
/// corrupt (audit). The frame is written by hand: its header asks for a
/// 256 MiB window, then one raw block holds an empty tar.
#[test]
fn zstd_with_a_long_window_is_named() {
    let s = Store::uninitialized("native");
    s.strata(&["init", "--driver", "native"]).success();
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 18 << 3];
    let block = (1024u32 << 3) | 1;
    frame.extend_from_slice(&block.to_le_bytes()[..3]);
    frame.extend_from_slice(&[0u8; 1024]);
    s.strata_with(
        &["apply", "x"],
        With {
            stdin: Some(&frame),
            ..Default::default()
        },
    )
    .fails_with(6, "needs a window larger than the 128 MiB strata decodes");
    // The same frame with a 1 MiB window is an empty layer.
    frame[5] = 10 << 3;
    s.strata_with(
        &["apply", "x"],
        With {
            stdin: Some(&frame),
            ..Default::default()
        },
    )
    .success();
}

/// A `diff` writing into a FIFO that no one reads stops at a caught SIGTERM
/// (review: it waited for the reader, so `timeout` or a service stop needed
/// SIGKILL).
#[test]
fn diff_into_a_stalled_fifo_stops_at_sigterm() {
    use std::os::unix::fs::OpenOptionsExt;
    let s = setup!("native");
    s.layer("base", None, &[file("/big", &"x".repeat(4 << 20), 0o644)]);
    let fifo = fifo_in(&s);
    // A reader that never reads, so the writer's open does not wait.
    let reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let child = command(
        &s.root,
        &["diff", "base", "--output-file", fifo.to_str().unwrap()],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    terminated_at_once(child, "the reader");
    drop(reader);
}

/// A new FIFO in `s`'s scratch area.
fn fifo_in(s: &Store) -> PathBuf {
    let fifo = s.scratch("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    fifo
}

/// Sends SIGTERM to `child` (a strata blocked waiting for `what`) half a
/// second after it started, and asserts it ends by that signal within 5 s.
/// Waited for at most 10 s, then killed: a regression fails, not hangs.
fn terminated_at_once(mut child: std::process::Child, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    while child.try_wait().unwrap().is_none() && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let waited = started.elapsed();
    let _ = child.kill();
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(stopped.status.signal(), Some(libc::SIGTERM), "{stopped:?}");
    assert!(
        waited < std::time::Duration::from_secs(5),
        "it waited {waited:?} for {what}"
    );
}

/// A tarball written by Python's tarfile, which writes whatever it is told.
fn python_tar(out: &Path, body: &str) {
    let script = format!(
        "import tarfile, io\nt = tarfile.open({:?}, 'w', format=tarfile.GNU_FORMAT)\ndef f(name, data=b'x', **kw):\n    i = tarfile.TarInfo(name); i.size = len(data)\n    for k, v in kw.items(): setattr(i, k, v)\n    t.addfile(i, io.BytesIO(data))\n{body}\nt.close()\n",
        out.to_str().unwrap()
    );
    let ok = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap()
        .success();
    assert!(ok, "python3 tarfile failed:\n{script}");
}

/// `--output-file` onto a device or a FIFO writes to it and leaves it what it is (a
/// rename would put a regular file there: `--output-file /dev/null` as root once left
/// /dev/null a plain file). A device node like /dev/null, made in the scratch area.
#[test]
fn diff_to_a_device_or_a_fifo() {
    let s = setup!("native");
    s.layer("base", None, &[file("f", "x\n", 0o644)]);
    let null = s.scratch("null");
    let made = Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success());
    s.strata(&["diff", "base", "--output-file", null.to_str().unwrap()])
        .success();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(&null)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let fifo = s.scratch("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).unwrap())
    };
    s.strata(&["diff", "base", "--output-file", fifo.to_str().unwrap()])
        .success();
    let layer = reader.join().unwrap();
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    let listed = s.scratch("listed.tar");
    fs::write(&listed, &layer).unwrap();
    assert_eq!(tar_list(&listed), ["f"]);
}

/// `diff --output-file F` killed (SIGKILL) with the whole layer written, just before
/// it is put in place, leaves F's directory as it was: F untouched and no temporary
/// beside it (`.F.partial-PID` used to stay forever), since the layer is written
/// unnamed. A normal run then replaces F, with mode 0666 less the umask as before.
#[test]
fn diff_killed_before_its_rename_leaves_no_temporary() {
    let s = setup!("native");
    s.layer("base", None, &[file("f", "x\n", 0o644)]);
    let dir = s.scratch_dir("out");
    let out = dir.join("layer.tar");
    fs::write(&out, "old").unwrap();
    let args = ["diff", "base", "--output-file", out.to_str().unwrap()];
    let killed = s.killed_at(&args, "diff:written");
    let names = || Tree::read(&dir).entries.into_keys().collect::<Vec<_>>();
    assert_eq!(names(), ["layer.tar"], "{}", killed.session());
    assert_eq!(fs::read_to_string(&out).unwrap(), "old");
    s.strata(&args).success();
    assert_eq!(names(), ["layer.tar"]);
    assert_eq!(tar_list(&out), ["f"]);
    let mode = fs::metadata(&out).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o666 & !umask(), "{mode:o}");
}

/// An active mounted by hand with `metacopy=on,redirect_dir=on` (strata's own mounts
/// never are): a chown'd file's data and a renamed directory's content stay in the
/// parent, so its upper directory is not its change. `diff` refuses it
/// (`failed_precondition`, no output file) instead of writing zeros and an empty
/// directory; the mounted tree was right all along.
#[test]
fn diff_refuses_an_upper_left_by_metacopy_or_redirects() {
    let s = setup!("overlay");
    s.layer(
        "base",
        None,
        &[
            file("f", "important data\n", 0o644),
            dir("dir", 0o755),
            file("dir/q", "q\n", 0o644),
        ],
    );
    for (key, option, change) in [
        ("meta", "metacopy=on", "chown 5:5 f"),
        ("moved", "redirect_dir=on", "mv dir renamed"),
    ] {
        s.strata(&["prepare", key, "base"]).success();
        let mounts = s.strata(&["mounts", "--json", key]).success().json();
        let mut options: Vec<&str> = mounts[0]["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        options.push(option);
        let target = s.scratch_dir("by-hand");
        let guard = MountGuard::new(&target);
        let mounted = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options.join(",")])
            .arg(&target)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount -o {}", options.join(","));
        let changed = Command::new("sh")
            .args(["-c", change])
            .current_dir(&target)
            .status()
            .unwrap();
        assert!(changed.success(), "{change}");
        drop(guard);
        s.strata(&["commit", &format!("{key}-c"), key]).success();
        let out = s.scratch("layer.tar");
        let run = s.fails(
            &[
                "diff",
                &format!("{key}-c"),
                "--output-file",
                out.to_str().unwrap(),
            ],
            "failed_precondition",
        );
        assert!(run.stderr.contains(option), "{}", run.session());
        assert!(!out.exists(), "a refused diff left {}", out.display());
    }
}

#[test]
fn hostile_layers_are_refused_with_nothing_left() {
    for driver in ["overlay", "native"] {
        let s = setup!(driver);
        s.layer("base", None, &[file("/f", "f", 0o644)]);
        let outside = s.scratch_dir("outside");
        let cases: Vec<(&str, String)> = vec![
            ("dotdot", "f('../evil')".into()),
            ("nested-dotdot", "f('a/../../evil')".into()),
            (
                "through-symlink",
                format!(
                    "f('s', b'', type=tarfile.SYMTYPE, linkname={:?})\nf('s/evil')",
                    outside.to_str().unwrap()
                ),
            ),
            (
                "relative-symlink",
                "f('up', b'', type=tarfile.SYMTYPE, linkname='../../../..')\nf('up/tmp/evil')"
                    .into(),
            ),
            (
                "hardlink-out",
                "f('h', b'', type=tarfile.LNKTYPE, linkname='../../etc/passwd')".into(),
            ),
            (
                "hardlink-later",
                "f('h', b'', type=tarfile.LNKTYPE, linkname='later')\nf('later')".into(),
            ),
        ];
        for (name, body) in cases {
            let tar = s.scratch(&format!("{name}.tar"));
            python_tar(&tar, &body);
            let dirs = s.snapshot_dirs();
            let run = s.fails(&["apply", name, "base", tar.to_str().unwrap()], "invalid");
            assert!(
                run.stderr.contains(name)
                    || run.stderr.contains("evil")
                    || run.stderr.contains("h"),
                "{}",
                run.session()
            );
            assert!(
                !s.names(&[]).contains(&name.to_string()),
                "{driver} {name}: committed"
            );
            assert_eq!(s.snapshot_dirs(), dirs, "{driver} {name}: left a directory");
            assert_eq!(
                fs::read_dir(&outside).unwrap().count(),
                0,
                "{driver} {name}: wrote outside"
            );
            assert!(!s.tmp().join("evil").exists() && !Path::new("/tmp/evil").exists());
        }
        // Truncated, corrupt, and a bomb.
        let good = s.scratch("good.tar");
        python_tar(&good, "f('a', b'y' * 100000)\nf('b', b'z' * 100000)");
        let bytes = fs::read(&good).unwrap();
        let cut = s.scratch("cut.tar");
        fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
        s.fails(&["apply", "cut", "base", cut.to_str().unwrap()], "invalid");
        let bad_gz = s.scratch("bad.tar.gz");
        let mut gz = Command::new("gzip")
            .arg("-c")
            .arg(&good)
            .output()
            .unwrap()
            .stdout;
        let mid = gz.len() / 2;
        for b in &mut gz[mid..mid + 64] {
            *b ^= 0x5a;
        }
        fs::write(&bad_gz, gz).unwrap();
        s.fails(
            &["apply", "badgz", "base", bad_gz.to_str().unwrap()],
            "invalid",
        );
        let bomb = s.scratch("bomb.tar");
        python_tar(&bomb, "f('zeros', bytes(10 * 1024 * 1024))");
        let bomb_gz = s.scratch("bomb.tar.gz");
        let gz = Command::new("gzip")
            .arg("-c")
            .arg(&bomb)
            .output()
            .unwrap()
            .stdout;
        fs::write(&bomb_gz, gz).unwrap();
        s.fails(
            &[
                "apply",
                "bomb",
                "base",
                "--max-size",
                "1M",
                bomb_gz.to_str().unwrap(),
            ],
            "invalid",
        );
        assert_eq!(s.names(&[]), vec!["base"]);
        s.strata(&["check"]).success();
    }
}

#[test]
fn devices_need_privilege() {
    if !require_root_and_overlay() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("dev.tar");
    python_tar(
        &tar,
        "f('null', b'', type=tarfile.CHRTYPE, devmajor=1, devminor=3)",
    );
    let script = format!(
        "{bin} --root {root} init --driver native >/dev/null && {bin} --root {root} apply d < {tar}; echo \"rc=$?\"",
        bin = BIN,
        root = tmp.path().join("store").display(),
        tar = tar.display()
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c", &script])
        .env(CONFIG_VAR, no_config(&tmp.path().join("store")))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("rc=6"), "{stdout}\n{stderr}");
    assert!(stderr.contains("null"), "names the entry: {stderr}");
}

#[test]
fn apply_reads_gzip_from_a_pipeline() {
    let s = setup!("overlay");
    let t = s.scratch_dir("tree");
    apply(&t, &[file("/hello", "from a pipe", 0o644)]);
    let line = format!(
        "tar -C {} -cf - . | gzip | {} --root {} apply piped",
        t.display(),
        BIN,
        s.root.display()
    );
    let sh = |line: &str| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(line).env(CONFIG_VAR, no_config(&s.root));
        run_ok(&mut cmd, &format!("the pipeline {line}"));
    };
    sh(&line);
    assert_eq!(
        s.view_tree("piped").content("hello").as_deref(),
        Some("from a pipe")
    );
    // And a layer can be piped from one store into another.
    let other = setup!("native");
    let line = format!(
        "{bin} --root {a} diff piped | {bin} --root {b} apply copy",
        bin = BIN,
        a = s.root.display(),
        b = other.root.display()
    );
    sh(&line);
    assert_eq!(
        other.view_tree("copy").content("hello").as_deref(),
        Some("from a pipe")
    );
}

/// A layer: its name, its parent, and the body of a `python_tar` script.
type Layer<'a> = (&'a str, Option<&'a str>, &'a str);

/// Applies `layers` in order to a store of `driver`; the last one may fail.
fn apply_layers(s: &Store, layers: &[Layer<'_>]) -> Run {
    let mut last = None;
    for (name, parent, body) in layers {
        let tar = s.scratch(&format!("{name}.tar"));
        python_tar(&tar, body);
        let run = match parent {
            Some(p) => s.strata(&["-o", "json", "apply", name, p, tar.to_str().unwrap()]),
            None => with_stdin(s, &["-o", "json", "apply", name], &tar),
        };
        last = Some(run);
    }
    last.expect("at least one layer")
}

/// Applies `layers` on a store of each driver and returns the tree of the
/// last one seen through a mount, after checking both drivers show the same
/// (kinds, modes, owners, contents, xattrs); None when mounts cannot be
/// tested here.
fn same_tree_on_both(layers: &[Layer<'_>]) -> Option<Tree> {
    let mut trees = Vec::new();
    for driver in ["overlay", "native"] {
        let s = Store::setup(driver)?;
        apply_layers(&s, layers).success();
        trees.push(s.view_tree(layers[layers.len() - 1].0));
    }
    let native = trees.pop()?;
    let overlay = trees.pop()?;
    overlay.assert_eq(&native, "the overlay view (want the native one)");
    Some(native)
}

fn paths(tree: &Tree) -> Vec<&str> {
    tree.entries.keys().map(String::as_str).collect()
}

/// Whiteouts for what no layer below has hide nothing and show nothing: in
/// a root layer, in a directory new in the layer, for a missing name, under
/// a missing directory (which is not created).
#[test]
fn whiteouts_of_nothing_show_nothing() {
    let dir = "type=tarfile.DIRTYPE, mode=0o755";
    let root_body = format!(
        "f('.wh.x', b'')\nf('a/', b'', {dir})\nf('a/.wh.y', b'')\nf('a/z')\nf('ghost/.wh.q', b'')"
    );
    let Some(tree) = same_tree_on_both(&[("root", None, &root_body)]) else {
        return;
    };
    assert_eq!(paths(&tree), ["a", "a/z"]);

    let base = format!("f('d/', b'', {dir})\nf('d/x')\nf('keep')");
    let top = format!(
        "f('.wh.nothing', b'')\nf('new/', b'', {dir})\nf('new/.wh.z', b'')\nf('new/f')\n\
         f('d/.wh.absent', b'')\nf('d/.wh.x', b'')\nf('ghost/.wh.q', b'')\n\
         f('ghost2/.wh..wh..opq', b'')"
    );
    let tree = same_tree_on_both(&[("base", None, &base), ("top", Some("base"), &top)]).unwrap();
    assert_eq!(paths(&tree), ["d", "keep", "new", "new/f"]);
}

/// A whiteout hides only what the layers below have (OCI image spec): a
/// directory the layer made or filled before its whiteout keeps the layer's
/// own entries and loses what was below, on both drivers; a file the layer
/// made stays. A directory, then a file, then a directory again at one path
/// (also after a whiteout) shows nothing of the layers below; a whiteout of
/// the layer's own file over a directory it filled is ignored.
#[test]
fn whiteouts_keep_what_the_layer_itself_made() {
    let dir = "type=tarfile.DIRTYPE, mode=0o755";
    let base = format!(
        "f('s/', b'', {dir})\nf('s/old')\nf('t/', b'', {dir})\nf('t/old')\n\
         f('u/', b'', {dir})\nf('u/old')\nf('u/new/', b'', {dir})\nf('u/new/old')\n\
         f('v/', b'', {dir})\nf('v/old')\nf('w/', b'', {dir})\nf('w/old')\nf('k/a/c')"
    );
    let top = format!(
        "f('s/out')\nf('.wh.s', b'')\nf('t/', b'', {dir})\nf('.wh.t', b'')\n\
         f('u/new/f')\nf('.wh.u', b'')\nf('x')\nf('.wh.x', b'')\n\
         f('v/', b'', {dir})\nf('v')\nf('v/', b'', {dir})\n\
         f('.wh.w', b'')\nf('w')\nf('w/', b'', {dir})\n\
         f('k/a/.wh.c', b'')\nf('k')\nf('.wh.k', b'')"
    );
    let Some(tree) = same_tree_on_both(&[("base", None, &base), ("top", Some("base"), &top)])
    else {
        return;
    };
    assert_eq!(
        paths(&tree),
        [
            "k", "s", "s/out", "t", "u", "u/new", "u/new/f", "v", "w", "x"
        ]
    );
}

/// Whiteouts the layer made inside a directory that it then whites out or
/// makes opaque go with what they hid: overlayfs would list them (names
/// `lstat` cannot find) in a directory that no longer merges, and keep the
/// directories made only to hold them.
#[test]
fn whiteouts_under_a_later_whiteout_or_opaque_marker_go() {
    let base = "f('p/q/r')\nf('m/n')\nf('m/o')\nf('r1/z')";
    let first = "f('p/q/.wh.r', b'')\nf('.wh.p', b'')\nf('m/x')\nf('m/.wh.n', b'')\n\
                 f('m/.wh..wh..opq', b'')";
    let Some(tree) = same_tree_on_both(&[("base", None, base), ("top", Some("base"), first)])
    else {
        return;
    };
    assert_eq!(paths(&tree), ["m", "m/x", "r1", "r1/z"]);
    // An opaque marker, then a whiteout of its directory.
    let base2 = "f('d/e/f')";
    let top2 = "f('d/e/.wh..wh..opq', b'')\nf('d/.wh.e', b'')";
    let tree = same_tree_on_both(&[("base", None, base2), ("top", Some("base"), top2)]).unwrap();
    assert_eq!(paths(&tree), ["d"]);
    let root = "f('r1/.wh.z', b'')\nf('m/.wh.n', b'')\nf('.wh..wh..opq', b'')\nf('new')";
    let tree = same_tree_on_both(&[("base", None, base), ("top", Some("base"), root)]).unwrap();
    assert_eq!(paths(&tree), ["new"]);
    // The root marker makes the layer's own `m/` opaque: the directory
    // made only for `m/.wh.n` goes with it.
    let root = "f('m/n/.wh.z', b'')\nf('m/', b'', type=tarfile.DIRTYPE)\nf('.wh..wh..opq', b'')";
    let base3 = "f('m/n/z')\nf('m/o')";
    let tree = same_tree_on_both(&[("base", None, base3), ("top", Some("base"), root)]).unwrap();
    assert_eq!(paths(&tree), ["m"]);
}

/// A directory of the layers below that a layer implies (an entry inside
/// it, or a whiteout in it) but does not list keeps its owner, mode and
/// xattrs on overlay, as on native, where the full tree has it: not a
/// `0755` root-owned stand-in.
#[test]
fn implied_directories_keep_the_lower_directory_s_metadata() {
    let base = concat!(
        "t.format = tarfile.PAX_FORMAT\n",
        "f('home/', b'', type=tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000, ",
        "pax_headers={'SCHILY.xattr.user.who': 'me'})\n",
        "f('home/old')\n",
        "f('srv/', b'', type=tarfile.DIRTYPE, mode=0o750, uid=7, gid=8)\n",
        "f('srv/x')\n",
        "f('etc/', b'', type=tarfile.DIRTYPE, pax_headers={'SCHILY.xattr.user.old': '1'})",
    );
    // `etc/` listed after its child: the entry's xattrs replace the lower's.
    let top = concat!(
        "f('home/.bashrc')\n",
        "f('srv/.wh.x', b'')\n",
        "f('etc/f')\n",
        "f('etc/', b'', type=tarfile.DIRTYPE)",
    );
    let Some(tree) = same_tree_on_both(&[("base", None, base), ("top", Some("base"), top)]) else {
        return;
    };
    assert_eq!(
        paths(&tree),
        ["etc", "etc/f", "home", "home/.bashrc", "home/old", "srv"]
    );
    assert!(tree.entries["etc"].xattrs.is_empty());
    let home = &tree.entries["home"];
    assert_eq!(
        (home.mode & 0o7777, home.uid, home.gid),
        (0o700, 1000, 1000)
    );
    assert_eq!(
        home.xattrs.get("user.who").map(Vec::as_slice),
        Some(&b"me"[..])
    );
    let srv = &tree.entries["srv"];
    assert_eq!((srv.mode & 0o7777, srv.uid, srv.gid), (0o750, 7, 8));

    // Listed, a directory over a setgid one below starts as that one until
    // its entry's metadata is set at the end: what is made in it meanwhile
    // gets the group, on overlay as on native.
    let base = "f('g/', b'', type=tarfile.DIRTYPE, mode=0o2755, gid=1000)";
    let top = "f('g/', b'', type=tarfile.DIRTYPE, mode=0o750, gid=1000)\nf('g/sub/f')";
    let setgid = same_tree_on_both(&[("base", None, base), ("top", Some("base"), top)]).unwrap();
    assert_eq!(paths(&setgid), ["g", "g/sub", "g/sub/f"]);
    assert_eq!(setgid.entries["g/sub"].gid, 1000);
    assert_eq!(setgid.entries["g"].mode & 0o7777, 0o750);
}

/// A directory that an entry implies, where the same layer whited out what
/// was below, is made again empty; markers under such a whiteout hide
/// nothing more.
#[test]
fn implied_directories_replace_the_layers_own_whiteouts() {
    let dir = "type=tarfile.DIRTYPE, mode=0o755";
    let base = format!("f('d/', b'', {dir})\nf('d/x')\nf('e')\nf('g/', b'', {dir})\nf('g/y')");
    let top = "f('.wh.d', b'')\nf('d/new')\nf('.wh.e', b'')\nf('e/deep/f')\n\
               f('.wh.g', b'')\nf('g/.wh.y', b'')\nf('g/.wh..wh..opq', b'')";
    let Some(tree) = same_tree_on_both(&[("base", None, &base), ("top", Some("base"), top)]) else {
        return;
    };
    assert_eq!(paths(&tree), ["d", "d/new", "e", "e/deep", "e/deep/f"]);
}

/// An opaque marker for the root hides everything the layers below have
/// (overlayfs ignores the opaque xattr on an upper's root), except what the
/// layer made before it, whose directories lose their lower content; later
/// entries take names back.
#[test]
fn root_opaque_marker_hides_the_whole_parent() {
    let dir = "type=tarfile.DIRTYPE, mode=0o755";
    let base = format!(
        "f('a', b'old a')\nf('d/', b'', {dir})\nf('d/x')\nf('e/', b'', {dir})\nf('e/y')\n\
         f('lnk', b'', type=tarfile.SYMTYPE, linkname='d')\nf('gone')"
    );
    let mid = "f('.wh.gone', b'')\nf('m')";
    let top = format!(
        "f('d/', b'', {dir})\nf('d/mine')\nf('keep')\nf('./.wh..wh..opq', b'')\n\
         f('a', b'new a')\nf('e/z')\nf('lnk/', b'', {dir})\nf('.wh.m', b'')"
    );
    let Some(tree) = same_tree_on_both(&[
        ("base", None, &base),
        ("mid", Some("base"), mid),
        ("top", Some("mid"), &top),
    ]) else {
        return;
    };
    assert_eq!(
        paths(&tree),
        ["a", "d", "d/mine", "e", "e/z", "keep", "lnk"]
    );
    assert_eq!(tree.content("a").as_deref(), Some("new a"));
}

/// An entry whose path goes through a symlink or a non-directory of a layer
/// below is refused alike on both drivers (`invalid`, same message, nothing
/// left); once the layer itself replaces or whites out that entry, the path
/// is fine on both.
#[test]
fn paths_through_lower_symlinks_and_files_are_refused_on_both() {
    let dir = "type=tarfile.DIRTYPE, mode=0o755";
    let base = format!(
        "f('d/', b'', {dir})\nf('d/x')\nf('lnk', b'', type=tarfile.SYMTYPE, linkname='d')\n\
         f('file')\nf('s/', b'', {dir})\nf('s/out', b'', type=tarfile.SYMTYPE, linkname='/etc')"
    );
    let cases = [
        "f('lnk/.wh.x', b'')".to_string(),
        "f('lnk/new')".into(),
        format!("f('lnk/sub/', b'', {dir})"),
        "f('file/.wh..wh..opq', b'')".into(),
        "f('file/x')".into(),
        "f('s/out/.wh.passwd', b'')".into(),
        "f('s/out/evil')".into(),
        "f('s/out/.wh..wh..opq', b'')".into(),
        // The layer's own file or symlink in a parent position (whiteouts
        // under them are ignored: whiteouts_under_the_layers_own_...).
        "f('mine/b')\nf('mine')\nf('mine/c')".into(),
        "f('own', b'', type=tarfile.SYMTYPE, linkname='d')\nf('own/c')".into(),
    ];
    let (Some(overlay), Some(native)) = (Store::setup("overlay"), Store::setup("native")) else {
        return;
    };
    for s in [&overlay, &native] {
        apply_layers(s, &[("base", None, &base)]).success();
    }
    for (i, body) in cases.iter().enumerate() {
        let name = format!("bad{i}");
        let mut messages = Vec::new();
        for s in [&overlay, &native] {
            let dirs = s.snapshot_dirs();
            let run = apply_layers(s, &[(&name, Some("base"), body)]).fails_json("invalid");
            assert_eq!(
                s.snapshot_dirs(),
                dirs,
                "{}: {body} left a directory",
                s.driver
            );
            let err: serde_json::Value = serde_json::from_str(run.stderr.trim()).unwrap();
            messages.push(err["error"]["message"].as_str().unwrap().to_string());
        }
        assert_eq!(messages[0], messages[1], "{body}: overlay vs native");
        assert!(messages[0].contains("its parent"), "{}", messages[0]);
        assert!(!Path::new("/etc/evil").exists());
    }
    for s in [&overlay, &native] {
        assert_eq!(s.names(&[]), ["base"]);
    }
    let fine = format!(
        "f('lnk/', b'', {dir})\nf('lnk/new')\nf('.wh.file', b'')\nf('file/x')\n\
         f('.wh.s', b'')\nf('s/out/in')"
    );
    let tree = same_tree_on_both(&[("base", None, &base), ("fine", Some("base"), &fine)]).unwrap();
    assert_eq!(
        paths(&tree),
        [
            "d", "d/x", "file", "file/x", "lnk", "lnk/new", "s", "s/out", "s/out/in"
        ]
    );
}

/// The message of a refused `apply` (`-o json`), checked to be `kind`.
fn refused(run: Run, kind: &str) -> String {
    let run = run.fails_json(kind);
    let err: serde_json::Value = serde_json::from_str(run.stderr.trim()).unwrap();
    err["error"]["message"].as_str().unwrap().to_string()
}

/// An xattr in the layer that the kernel refuses (EINVAL for a malformed
/// `security.capability`, E2BIG for a value over 64 KiB) is `invalid`,
/// naming the entry and the xattr, not an internal error naming the staging
/// directory; nothing is left.
#[test]
fn xattrs_the_kernel_refuses_are_invalid() {
    for driver in ["overlay", "native"] {
        let s = setup!(driver);
        s.layer("base", None, &[file("/f", "f", 0o644)]);
        for (name, attr, value) in [
            (
                "cap",
                "security.capability",
                r"'\x01\x00\x00\x02\x00\x20\x00\x00'",
            ),
            ("big", "user.big", "'A' * 70000"),
        ] {
            let tar = s.scratch(&format!("{name}.tar"));
            python_tar(
                &tar,
                &format!(
                    "t.format = tarfile.PAX_FORMAT\n\
                     f('d/f', b'', pax_headers={{'SCHILY.xattr.{attr}': {value}}})"
                ),
            );
            let dirs = s.snapshot_dirs();
            let msg = refused(
                s.strata(&["-o", "json", "apply", name, "base", tar.to_str().unwrap()]),
                "invalid",
            );
            assert!(
                msg.contains("entry `d/f`") && msg.contains(attr),
                "{driver}: {msg}"
            );
            assert!(!msg.contains(s.root.to_str().unwrap()), "{driver}: {msg}");
            assert_eq!(s.snapshot_dirs(), dirs, "{driver} {name}: left a directory");
        }
        assert_eq!(s.names(&[]), ["base"]);
    }
}

/// A zstd layer that begins with a skippable frame (as containerd and moby
/// detect it) is read as zstd: same diff_id as without the frame.
#[test]
fn zstd_layer_after_a_skippable_frame() {
    let s = setup!("native");
    s.layer("base", None, &[file("/hello", "hi\n", 0o644)]);
    let (zst, made) = diff_to(&s, "base", "zstd");
    let mut data = b"\x50\x2a\x4d\x18\x08\x00\x00\x00skipskip".to_vec();
    data.extend(fs::read(&zst).unwrap());
    let skip = s.scratch("skip.tar.zst");
    fs::write(&skip, &data).unwrap();
    let applied = with_stdin(&s, &["apply", "copy", "-o", "json"], &skip)
        .success()
        .json();
    assert_eq!(applied["diff_id"], made["diff_id"]);
    assert_eq!(
        s.view_tree("copy").content("hello").as_deref(),
        Some("hi\n")
    );
}

/// A device entry whose devmajor field is all NULs (a ustar header, as some
/// writers leave it) is device 0,N, as GNU tar, Go and Python read it; the
/// tar crate's own reading refused it with its raw text.
#[test]
fn blank_device_number_field_is_zero() {
    for driver in ["overlay", "native"] {
        let s = setup!(driver);
        let tar = s.scratch("dev.tar");
        let script = format!(
            "import tarfile\n\
             i = tarfile.TarInfo('c13'); i.type = tarfile.CHRTYPE; i.devmajor = 0; i.devminor = 3\n\
             h = bytearray(i.tobuf(format=tarfile.USTAR_FORMAT)); h[329:337] = b'\\0' * 8\n\
             h[148:156] = b' ' * 8; h[148:156] = b'%06o\\0 ' % sum(h)\n\
             open({:?}, 'wb').write(bytes(h) + b'\\0' * 1024)\n",
            tar.to_str().unwrap()
        );
        run_ok(Command::new("python3").args(["-c", &script]), "python3");
        with_stdin(&s, &["apply", "dev"], &tar).success();
        let tree = s.view_tree("dev");
        let e = &tree.entries["c13"];
        assert_eq!(e.kind, "char-device", "{driver}");
        assert_eq!(e.rdev, libc::makedev(0, 3), "{driver}");
    }
}

/// Refusals say where and what: garbage after a gzip stream is after the
/// last entry (not "at the start of the layer"), an over-long symlink target
/// is the target's fault (not a name component's), and a hardlink whose
/// target's directory became a symlink names the target's parent.
#[test]
fn refusals_say_where_and_what() {
    let s = setup!("native");
    s.layer("base", None, &[file("/f", "f", 0o644)]);
    let tar = s.scratch("hello.tar");
    python_tar(&tar, "f('hello', b'hi')");
    let gz = s.scratch("g.tar.gz");
    let mut data = Command::new("gzip")
        .arg("-c")
        .arg(&tar)
        .output()
        .unwrap()
        .stdout;
    data.extend_from_slice(b"GARBAGE");
    fs::write(&gz, data).unwrap();
    let long = s.scratch("ls.tar");
    python_tar(
        &long,
        "f('ls', b'', type=tarfile.SYMTYPE, linkname='x' * 5000)",
    );
    let hl = s.scratch("hl.tar");
    python_tar(
        &hl,
        "f('d', b'', type=tarfile.DIRTYPE)\nf('d/f', b'')\n\
         f('d', b'', type=tarfile.SYMTYPE, linkname='/etc')\n\
         f('hl', b'', type=tarfile.LNKTYPE, linkname='d/f')",
    );
    for (name, path, want) in [
        (
            "g",
            &gz,
            "(after the end-of-archive block, after entry `hello`)",
        ),
        ("s", &long, "entry `ls`: its symlink target is too long"),
        (
            "h",
            &hl,
            "entry `hl`: hardlink target `d/f`: its parent `d` is a symlink",
        ),
    ] {
        let msg = refused(
            s.strata(&["-o", "json", "apply", name, "base", path.to_str().unwrap()]),
            "invalid",
        );
        assert!(msg.contains(want), "{msg}");
    }
    assert_eq!(s.names(&[]), ["base"]);
}

/// umoci writes a directory replaced by a symlink or a file as the new entry
/// followed by whiteouts of the old directory's children (`d -> e`, then
/// `d/.wh.x`). Nothing is left to delete under what the layer already made
/// a non-directory: such whiteouts (and opaque markers) are ignored on both
/// drivers, and never followed: the symlink's target directory keeps its
/// files.
#[test]
fn whiteouts_under_the_layers_own_non_directories_are_ignored() {
    let dir = "type=tarfile.DIRTYPE, mode=0o755";
    let base = format!(
        "f('d/', b'', {dir})\nf('d/x', b'old x')\nf('d/sub/y')\nf('e/', b'', {dir})\n\
         f('e/x', b'kept x')\nf('e/sub/y', b'kept y')\nf('g/', b'', {dir})\nf('g/z')"
    );
    let top = "f('d', b'', type=tarfile.SYMTYPE, linkname='e')\nf('d/.wh.x', b'')\n\
               f('d/.wh.sub', b'')\nf('d/sub/.wh.y', b'')\nf('d/.wh..wh..opq', b'')\n\
               f('g', b'now a file')\nf('g/.wh.z', b'')";
    let Some(tree) = same_tree_on_both(&[("base", None, &base), ("top", Some("base"), top)]) else {
        return;
    };
    assert_eq!(paths(&tree), ["d", "e", "e/sub", "e/sub/y", "e/x", "g"]);
    assert_eq!(tree.entries["d"].kind, "symlink");
    assert_eq!(tree.content("d").as_deref(), Some("e"));
    assert_eq!(tree.content("e/x").as_deref(), Some("kept x"));
    assert_eq!(tree.content("e/sub/y").as_deref(), Some("kept y"));
    assert_eq!(tree.content("g").as_deref(), Some("now a file"));
}

/// A ustar header whose uid, gid, mode and mtime fields are all NULs (and an
/// empty file's size field) is read as 0 there, as GNU tar, Go and Python
/// read it; the tar crate's own reading refused it with its raw text. A
/// field of only spaces (GNU tar refuses it) is invalid, named in one line.
fn blank_numeric_fields_are_zero(driver: &str) {
    let s = setup!(driver);
    let layer = |fields: &str, fill: &str| {
        let tar = s.scratch("blank.tar");
        let script = format!(
            "import tarfile\n\
             def h(name, data, fields):\n\
             \x20   i = tarfile.TarInfo(name); i.size = len(data); i.mode = 0o644\n\
             \x20   i.uid, i.gid, i.mtime = 5, 6, 1000000000\n\
             \x20   b = bytearray(i.tobuf(format=tarfile.USTAR_FORMAT))\n\
             \x20   for a, z in fields: b[a:z] = {fill} * (z - a)\n\
             \x20   b[148:156] = b' ' * 8; b[148:156] = b'%06o\\0 ' % sum(b)\n\
             \x20   return bytes(b) + data + b'\\0' * (-len(data) % 512)\n\
             open({:?}, 'wb').write(h('f', b'hi', {fields}) + h('e', b'', [(124, 136)]) + b'\\0' * 1024)\n",
            tar.to_str().unwrap()
        );
        run_ok(Command::new("python3").args(["-c", &script]), "python3");
        tar
    };
    let all = "[(100, 108), (108, 116), (116, 124), (136, 148)]";
    with_stdin(&s, &["apply", "blank"], &layer(all, "b'\\0'")).success();
    let tree = s.view_tree("blank");
    let f = &tree.entries["f"];
    assert_eq!(
        (f.kind, f.mode, f.uid, f.gid, &f.data[..]),
        ("file", 0, 0, 0, &b"hi"[..])
    );
    let e = &tree.entries["e"];
    assert_eq!((e.kind, e.mode, e.uid, e.gid), ("file", 0o644, 5, 6));
    assert!(e.data.is_empty());
    assert_eq!(mtime_of(&s, "blank", "f"), 0);
    assert_eq!(mtime_of(&s, "blank", "e"), 1_000_000_000);
    with_stdin(&s, &["apply", "spaces"], &layer("[(108, 116)]", "b' '"))
        .fails_with(6, "entry `f`: its uid field is not a number\n");
}

/// Files a snapshot holds under names OCI layers keep for deletions (`.wh.NAME`,
/// `.wh..wh..opq`, written through a mount) cannot go into a layer: every reader,
/// strata included, takes them for whiteouts (audit: `diff` wrote them with exit 0, and
/// applying that layer deleted `f` and `d/x` while the `.wh.` files vanished). `diff`
/// (against the parent, and `--parent P`, which compares trees on both drivers) and
/// `export` refuse them as `invalid`, naming the path, with nothing written: no output
/// file, no tarball on stdout, no layout. The deletion of such a file cannot be written
/// either (its `.wh..wh.NAME` is aufs metadata that readers skip). Real deletions are
/// still whiteouts: an overlay upper's char 0/0 device becomes `.wh.f`.
#[test]
fn names_kept_for_whiteouts_cannot_go_into_a_layer() {
    for driver in ["overlay", "native"] {
        let s = setup!(driver);
        s.layer(
            "base",
            None,
            &[
                file("/f", "f\n", 0o644),
                dir("/d", 0o755),
                file("/d/x", "x\n", 0o644),
            ],
        );
        s.layer("other", None, &[file("/o", "o\n", 0o644)]);
        let cases = [
            (
                "both",
                vec![
                    file("/.wh.f", "secret\n", 0o644),
                    file("/d/.wh.x", "keep\n", 0o644),
                ],
                ".wh.f",
            ),
            ("nested", vec![file("/d/.wh.x", "keep\n", 0o644)], "d/.wh.x"),
            (
                "opq",
                vec![file("/d/.wh..wh..opq", "", 0o644)],
                "d/.wh..wh..opq",
            ),
            (
                "dir",
                vec![dir("/.wh.dir", 0o755), file("/.wh.dir/y", "y\n", 0o644)],
                ".wh.dir",
            ),
            ("link", vec![symlink("../f", "/d/.wh.l")], "d/.wh.l"),
        ];
        for (name, ops, _) in &cases {
            s.layer(name, Some("base"), ops);
        }
        // Deleting such a file: char 0/0 `.wh.f` in an overlay upper, a name gone from
        // the tree on native.
        s.layer("unwrite", Some("both"), &[remove_all("/.wh.f")]);
        let mut refusals: Vec<(&str, &str, Option<&str>)> = cases
            .iter()
            .map(|(name, _, path)| (*name, *path, None))
            .collect();
        refusals.push(("both", ".wh.f", Some("other")));
        refusals.push(("unwrite", ".wh.f", None));
        let layout = s.scratch_dir("layout");
        s.strata(&["export", "base", layout.to_str().unwrap()])
            .success();
        let index = fs::read(layout.join("index.json")).unwrap();
        let blobs = Tree::read(&layout.join("blobs"));
        for (name, path, parent) in refusals {
            let what = format!("{driver} {name} (--parent {parent:?})");
            let want = format!("`{path}` cannot go into a layer");
            let out = s.scratch("wh.tar");
            let mut args = vec!["diff", name, "--output-file", out.to_str().unwrap()];
            if let Some(p) = parent {
                args.extend(["--parent", p]);
            }
            let run = s.strata(&args).fails_with(exit_code("invalid"), &want);
            assert_eq!(
                run.stderr.matches("error:").count(),
                1,
                "{what}: {}",
                run.session()
            );
            assert!(!out.exists(), "{what}: a refused diff left its output file");
            args.truncate(2);
            let run = s.fails(&args, "invalid");
            assert!(run.stdout.is_empty(), "{what}: {}", run.session());
            if parent.is_some() {
                continue;
            }
            // export: into a new directory (removed again) and an existing layout
            // (left as it was).
            let fresh = s.scratch("fresh-layout");
            let run = s.fails(&["export", name, fresh.to_str().unwrap()], "invalid");
            assert!(run.stderr.contains(&want), "{what}: {}", run.session());
            assert!(!fresh.exists(), "{what}: a refused export left a layout");
            s.fails(&["export", name, layout.to_str().unwrap()], "invalid");
            assert_eq!(
                fs::read(layout.join("index.json")).unwrap(),
                index,
                "{what}"
            );
            Tree::read(&layout.join("blobs")).assert_eq(&blobs, &what);
        }
        // The hint fits the snapshot: a committed one cannot be renamed in, an
        // active one can.
        let run = s
            .strata(&["diff", "both"])
            .fails_with(exit_code("invalid"), "");
        assert!(
            run.stderr
                .contains("hint: a committed snapshot cannot change"),
            "{driver}: {}",
            run.session()
        );
        s.strata(&["prepare", "act", "base"]).success();
        let m = s.mount("act");
        apply(&m.path, &[file("/.wh.f", "secret\n", 0o644)]);
        s.unmount(&m);
        let run = s
            .strata(&["diff", "act"])
            .fails_with(exit_code("invalid"), "");
        assert!(
            run.stderr
                .contains("hint: rename it in the active snapshot before committing it"),
            "{driver}: {}",
            run.session()
        );
        s.strata(&["rm", "act"]).success();
        // A real deletion is a whiteout, as before.
        s.layer("deleted", Some("base"), &[remove_all("/f")]);
        let (tar, _) = diff_to(&s, "deleted", "none");
        assert_eq!(tar_list(&tar), [".wh.f"], "{driver}");
        s.strata(&["check"]).success();
    }
}

/// A character device 0/0 made through a native snapshot's mount (on overlay, where
/// it is the whiteout, `mknod` of one is refused) cannot go into a layer: it is
/// overlayfs's whiteout, which every reader, strata's `apply` too, refuses or takes
/// for a deletion. `diff` and `export` refuse it as `invalid`, naming it, with nothing
/// written (audit: `diff` wrote it, exit 0, and `apply` of that layer was `invalid`).
/// Other devices go, as before.
#[test]
fn a_whiteout_device_in_a_native_tree_cannot_go_into_a_layer() {
    let s = setup!("native");
    s.layer("base", None, &[file("/f", "f\n", 0o644)]);
    s.layer(
        "dev",
        Some("base"),
        &[
            dir("/d", 0o755),
            device("/d/wh", 'c', 0, 0),
            device("/null", 'c', 1, 3),
        ],
    );
    let want = "`d/wh` cannot go into a layer: a character device 0/0 is an overlay whiteout";
    let out = s.scratch("dev.tar");
    s.strata(&["diff", "dev", "--output-file", out.to_str().unwrap()])
        .fails_with(exit_code("invalid"), want)
        .fails_with(
            exit_code("invalid"),
            "make the change again without that device",
        );
    assert!(!out.exists(), "a refused diff left its output file");
    let fresh = s.scratch("layout");
    let run = s.fails(&["export", "dev", fresh.to_str().unwrap()], "invalid");
    assert!(run.stderr.contains(want), "{}", run.session());
    assert!(!fresh.exists(), "a refused export left a layout");
    // In an active: the hint says what to do there.
    s.strata(&["prepare", "act", "base"]).success();
    let m = s.mount("act");
    apply(&m.path, &[device("/wh", 'c', 0, 0)]);
    s.unmount(&m);
    s.strata(&["diff", "act"])
        .fails_with(exit_code("invalid"), "`wh` cannot go into a layer")
        .fails_with(
            exit_code("invalid"),
            "hint: remove it in the active snapshot",
        );
    // Without it, the other device goes, and comes back.
    s.layer("other", Some("base"), &[device("/null", 'c', 1, 3)]);
    let (tar, _) = diff_to(&s, "other", "none");
    with_stdin(&s, &["apply", "again", "base"], &tar).success();
    s.strata(&["check"]).success();
}

/// A POSIX ACL xattr with Linux's header but 8 zeros for its ids (UTF-8 as it is, so
/// Python's tarfile writes it byte for byte): owner rw, group r, others r.
const GOOD_ACL: &str = r"'\x02\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x04\x00\x04\x00\x00\x00\x00\x00\x20\x00\x04\x00\x00\x00\x00\x00'";

/// An xattr no Linux file can have is a malformed layer: `invalid`, naming the entry and
/// the xattr (audit: a POSIX ACL of another version, or a namespace Linux does not have,
/// failed with EOPNOTSUPP and was `unsupported`, naming the staging directory). So are
/// an ACL whose length is not a header and whole entries, a default ACL on a
/// non-directory (EACCES, `internal` before) and an ACL on a symlink. An xattr Linux
/// has but the file system cannot hold (`system.foo`, EOPNOTSUPP) stays `unsupported`,
/// naming the entry too. Well-formed ACLs apply. After each refusal the store is as
/// it was and `check` finds nothing.
#[test]
fn malformed_xattrs_are_invalid_naming_the_entry() {
    for driver in ["overlay", "native"] {
        let s = setup!(driver);
        s.layer("base", None, &[file("/f", "f", 0o644)]);
        let on_file = |attr: &str, value: &str| {
            format!("f('d/f', b'', pax_headers={{'SCHILY.xattr.{attr}': {value}}})")
        };
        let cases = [
            (
                "acl-version",
                "system.posix_acl_access",
                on_file("system.posix_acl_access", r"'\x03\x00\x00\x00'"),
                "invalid",
            ),
            (
                "acl-length",
                "system.posix_acl_access",
                on_file(
                    "system.posix_acl_access",
                    r"'\x02\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00'",
                ),
                "invalid",
            ),
            ("namespace", "foo.bar", on_file("foo.bar", "'x'"), "invalid"),
            (
                "default-on-a-file",
                "system.posix_acl_default",
                on_file("system.posix_acl_default", GOOD_ACL),
                "invalid",
            ),
            (
                "acl-on-a-symlink",
                "system.posix_acl_access",
                format!(
                    "f('d/f', b'', type=tarfile.SYMTYPE, linkname='x', \
                     pax_headers={{'SCHILY.xattr.system.posix_acl_access': {GOOD_ACL}}})"
                ),
                "invalid",
            ),
            (
                "unstorable",
                "system.foo",
                on_file("system.foo", "'x'"),
                "unsupported",
            ),
        ];
        for (name, attr, body, kind) in cases {
            let what = format!("{driver} {name}");
            let tar = s.scratch(&format!("{name}.tar"));
            python_tar(&tar, &format!("t.format = tarfile.PAX_FORMAT\n{body}"));
            let dirs = s.snapshot_dirs();
            let msg = refused(
                s.strata(&["-o", "json", "apply", name, "base", tar.to_str().unwrap()]),
                kind,
            );
            assert!(
                msg.contains("entry `d/f`") && msg.contains(&format!("`{attr}`")),
                "{what}: {msg}"
            );
            assert!(!msg.contains(s.root.to_str().unwrap()), "{what}: {msg}");
            assert_eq!(s.snapshot_dirs(), dirs, "{what}: left a directory");
            // A root layer from stdin too.
            let run = with_stdin(&s, &["-o", "json", "apply", name], &tar);
            assert!(refused(run, kind).contains("entry `d/f`"), "{what}");
            assert_eq!(s.names(&[]), ["base"], "{what}");
            s.strata(&["check"]).success();
        }
        let tar = s.scratch("good.tar");
        python_tar(
            &tar,
            &format!(
                "t.format = tarfile.PAX_FORMAT\n\
                 f('d/', b'', type=tarfile.DIRTYPE, mode=0o755, pax_headers={{\
                 'SCHILY.xattr.system.posix_acl_access': {GOOD_ACL}, \
                 'SCHILY.xattr.system.posix_acl_default': {GOOD_ACL}}})\n\
                 f('d/f', b'', mode=0o644, pax_headers={{\
                 'SCHILY.xattr.system.posix_acl_access': {GOOD_ACL}}})"
            ),
        );
        s.strata(&["apply", "good", "base", tar.to_str().unwrap()])
            .success();
        s.strata(&["check"]).success();
    }
}

/// The trees `diff --parent` mounts to compare are mounted in a mount namespace of
/// the process's own: never in the store for anyone else to see, and gone with the
/// process however it ends (audit: Ctrl-C left both overlays mounted in the store,
/// and `rm` of a snapshot under them was refused). The layer is the same.
#[test]
fn diff_against_another_parent_leaves_no_mount() {
    let s = setup!("overlay");
    s.layer("base", None, &[file("/f", "f\n", 0o644)]);
    s.layer("k", Some("base"), &[file("/k", "k\n", 0o644)]);
    s.layer("y", Some("base"), &[file("/y", "y\n", 0o644)]);
    let ours = || -> Vec<String> {
        let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = s.root.to_str().unwrap().to_string();
        table
            .lines()
            .filter(|l| l.contains(&root))
            .map(String::from)
            .collect()
    };
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    // Against its own parent nothing is mounted: no namespace of its own.
    let plain = Paused::start(&s, &["diff", "y", "--parent", "base"], "diff:read");
    assert_eq!(ns(&plain.pid().to_string()), ns("self"));
    assert!(plain.resume().status.success());
    let paused = Paused::start(&s, &["diff", "y", "--parent", "k"], "diff:merged");
    assert_ne!(ns(&paused.pid().to_string()), ns("self"));
    assert_eq!(
        ours(),
        Vec::<String>::new(),
        "the scratch mounts are seen outside"
    );
    let out = paused.signal(libc::SIGINT);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(ours(), Vec::<String>::new(), "a mount outlived the diff");
    s.strata(&["prune"]).success();
    s.strata(&["check"]).success();
    s.strata(&["rm", "k"]).success();
    // And a diff that ends normally gives the same layer as ever.
    s.layer("k2", Some("base"), &[file("/k", "k\n", 0o644)]);
    let tar = s.scratch("y.tar");
    s.strata(&[
        "diff",
        "y",
        "--parent",
        "k2",
        "--output-file",
        tar.to_str().unwrap(),
    ])
    .success();
    assert_eq!(tar_list(&tar), [".wh.k", "y"]);
    assert_eq!(ours(), Vec::<String>::new());
    // Without the privilege to mount, `unsupported` as `strata mount` says it
    // (review: the new mount API's EPERM came out `internal`).
    if require(&["setpriv"]) {
        let out = Command::new("setpriv")
            .args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"])
            .arg(BIN)
            .env_clear()
            .env(CONFIG_VAR, no_config(&s.root))
            .arg("--root")
            .arg(&s.root)
            .args(["diff", "y", "--parent", "k2", "-o", "json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{stderr}");
        assert!(stderr.contains("needs mount privilege"), "{stderr}");
    }
}

/// In a chroot whose root is no mount point (so the private namespace's mounts
/// cannot all be made private), `diff --parent` still works where it runs: it
/// never leaves the chroot (review: going back to the first namespace reset its
/// root and working directory, and it made a store at the host's path).
#[test]
fn diff_against_another_parent_works_in_a_chroot() {
    if !require_root_and_overlay() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("chroot");
    for dir in ["bin", "proc", "tmp"] {
        fs::create_dir_all(c.join(dir)).unwrap();
    }
    fs::copy(BIN, c.join("bin/strata")).unwrap();
    let proc_guard = MountGuard::new(&c.join("proc"));
    sh_ok(
        &format!("mount -t proc proc {}/proc", c.display()),
        "proc in the chroot",
    );
    // Made on the host only by the bug this test is for: left by a failed run.
    let host_store = std::path::Path::new("/st-strata-chroot-test");
    let _ = fs::remove_dir_all(host_store);
    // The chroot has no shell: each command is a chroot of its own.
    let run = |args: &[&str]| {
        let out = Command::new("chroot")
            .arg(&c)
            .arg("/bin/strata")
            .args(["--root", "/st-strata-chroot-test", "-q"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("STRATA_CONFIG", "/nonexistent")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        out
    };
    run(&["init", "--driver", "overlay"]);
    run(&["prepare", "a"]);
    fs::write(c.join("st-strata-chroot-test/snapshots/1/fs/a"), "a").unwrap();
    run(&["commit", "base", "a"]);
    run(&["prepare", "b", "base"]);
    fs::write(c.join("st-strata-chroot-test/snapshots/2/fs/m"), "m").unwrap();
    run(&["commit", "mid", "b"]);
    run(&["prepare", "c", "mid"]);
    fs::write(c.join("st-strata-chroot-test/snapshots/3/fs/x"), "x").unwrap();
    let to = ["--output-file", "/tmp/o.tar"];
    run(&[&["diff", "c", "--parent", "base"][..], &to].concat());
    assert_eq!(tar_list(&c.join("tmp/o.tar")), ["m", "x"]);
    assert!(!host_store.exists(), "a store was made outside the chroot");
    drop(proc_guard);
}
