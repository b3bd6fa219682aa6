#!/usr/bin/env python3
"""Workloads of the strata benchmark (standard library only).

`bench/run` calls `harness.py GROUP` once per group (ops, chain, list, files, and
carry when asked for, with a fresh private containerd; diff and apply, which have no
ctr peer, without one) and a fresh strata store, then `harness.py report RESULTS` to
print the table. Every timed figure is a whole-process run (posix_spawn .. waitpid, so
the same fixed harness cost for both tools), strata and ctr alternating run by run and
swapping who goes first (in the per-operation group each timed run follows an untimed
run of the same tool, see BENCH_WASHOUT), with any state a run consumes set up outside
the timed region.

Environment (set by bench/run): STRATA_BIN, BENCH_CTR_BIN, BENCH_CTR_SOCK,
BENCH_STRATA_ROOT, BENCH_WORK, BENCH_RESULTS_TMP, and the BENCH_* sizes.
"""

import io
import json
import math
import os
import random
import re
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_list(name, default):
    raw = os.environ.get(name, default).replace(" ", "")
    return [int(x) for x in raw.split(",") if x]


RUNS = env_int("BENCH_RUNS", 50)
WARMUP = env_int("BENCH_WARMUP", 3)
# Per-operation figures: an untimed run of the same tool before each timed one.
WASHOUT = env_int("BENCH_WASHOUT", 1) != 0
WASHOUT_BASE = 1_000_000  # index of a washout run's keys: never one a timed run uses
CHAIN = env_list("BENCH_CHAIN", "100,500")
CHAIN_REPS = env_int("BENCH_CHAIN_REPS", 3)
LIST = env_list("BENCH_LIST", "1000,10000")
LIST_RUNS = env_int("BENCH_LIST_RUNS", 15)
USAGE_ALL_RUNS = env_int("BENCH_USAGE_ALL_RUNS", 5)
FILES = env_int("BENCH_FILES", 100000)
FILES_RUNS = env_int("BENCH_FILES_RUNS", 10)
FILES_COMMITS = env_int("BENCH_FILES_COMMITS", 3)
JOBS = env_int("BENCH_JOBS", 4)
DIFF_RUNS = env_int("BENCH_DIFF_RUNS", 20)
APPLY_MB = env_int("BENCH_APPLY_MB", 200)
APPLY_FILES = env_int("BENCH_APPLY_FILES", 20000)
APPLY_RUNS = env_int("BENCH_APPLY_RUNS", 5)
SETTLE = os.environ.get("BENCH_SETTLE", "")  # seconds; empty: 360 on ext4 without a journal

# Targets from the performance issue: strata median / peer median must be <= this.
TARGET_OP = 0.125
TARGET_CHAIN = 0.125  # at the largest chain (500)
TARGET_LIST = 0.25  # ls and tree at the largest size (10,000)
TARGET_USAGE_ALL = 0.03  # usage of all at the largest size
TARGET_USAGE_DU = 0.5  # usage of the big active vs du -s
TARGET_BIG_COMMIT = 0.4  # commit of the big active vs ctr
TARGET_APPLY = 1.0  # apply of a large layer vs tar -x (+ sync) of the same archive
# An absolute target (no peer: ctr's diff needs containerd's content store and differ).
TARGET_DIFF_NS = 50e6  # diff of a one-file change on a 100,000-file parent


class BenchError(Exception):
    pass


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ running processes

NULL_FD = os.open(os.devnull, os.O_RDWR)


def timed(argv, errfile, stdin=None):
    """Run argv once with stdin/stdout on /dev/null; return (wall ns, CPU ns).

    stdin: a file to open (read-only) as the child's stdin instead, by the spawn
    itself, so a `cmd < file` costs the same as `cmd file`.
    CPU is the child's user + system time (from wait4); for ctr it is the client's
    only, the daemon's work is not in it."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, stdin, os.O_RDONLY, 0) if stdin
        else (os.POSIX_SPAWN_DUP2, NULL_FD, 0),
        (os.POSIX_SPAWN_DUP2, NULL_FD, 1),
        (os.POSIX_SPAWN_OPEN, 2, errfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
    ]
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status, ru = os.wait4(pid, 0)
    elapsed = time.perf_counter_ns() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        with open(errfile, errors="replace") as f:
            err = f.read().strip()
        raise BenchError(f"`{' '.join(argv)}` exited {rc}: {err}")
    return elapsed, int((ru.ru_utime + ru.ru_stime) * 1e9)


def sh(argv, capture=False):
    """Run an untimed setup command; raise with its stderr if it fails."""
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout if capture else None


def parallel(fn, items, jobs=JOBS):
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        for _ in ex.map(fn, items):
            pass


# ------------------------------------------------------------------ the two tools


class Tool:
    """The command lines both tools share: `base` + the subcommand's words."""

    base = []

    def argv(self, *args):
        return self.base + list(args)

    def prepare(self, key, parent=None):
        return self.argv("prepare", key, *([parent] if parent else []))

    def view(self, key, parent):
        return self.argv("view", key, parent)

    def commit(self, name, key):
        return self.argv("commit", name, key)

    def rm(self, *keys):
        return self.argv("rm", *keys)

    def info(self, key):
        return self.argv("info", key)

    def label(self, key, kv):
        return self.argv("label", key, kv)

    def usage(self, *keys):
        return self.argv("usage", *keys)

    def ls(self):
        return self.argv("ls")

    def tree(self):
        return self.argv("tree")


class Strata(Tool):
    name = "strata"

    def __init__(self, binary, root):
        self.base = [binary, "--root", root]

    def mounts(self, key):
        return self.argv("mounts", key)

    def version(self):
        return self.argv("--version")

    def upperdir(self, key):
        """The directory an active snapshot's writes land in (no mount needed)."""
        mounts = json.loads(sh(self.argv("mounts", key, "-o", "json"), capture=True))
        m = mounts[0]
        if m["type"] == "bind":
            return m["source"]
        for opt in m["options"]:
            if opt.startswith("upperdir="):
                return opt[len("upperdir=") :]
        raise BenchError(f"strata: no upperdir in the mounts of {key}: {m}")


class Ctr(Tool):
    name = "ctr"

    def __init__(self, binary, sock, scratch):
        self.binary = binary
        self.base = [binary, "-a", sock, "snapshots", "--snapshotter", "overlayfs"]
        self.target = os.path.join(scratch, "ctr-mount-target")  # only printed, never mounted

    def mounts(self, key):
        return self.argv("mounts", self.target, key)

    def version(self):
        return [self.binary, "--version"]

    def upperdir(self, key):
        out = sh(self.mounts(key), capture=True)
        m = re.search(r"upperdir=([^,\s]+)", out)
        if m:
            return m.group(1)
        m = re.search(r"mount -t bind (\S+)", out)
        if m:
            return m.group(1)
        raise BenchError(f"ctr: no upperdir in the mounts of {key}: {out!r}")


class Floor:
    """bench/floor.c: the least a process, and a durable prepare, can cost."""

    name = "floor"

    def __init__(self, binary, root):
        self.binary = binary
        self.root = root
        sh([binary, "init", root])

    def version(self):
        return [self.binary]

    def prepare(self, key, parent=None):
        return [self.binary, "prepare", self.root, key]


class Plain:
    """A peer that is just a command line (du -s, /bin/true)."""

    def __init__(self, name):
        self.name = name


def tools():
    work = os.environ["BENCH_WORK"]
    s = Strata(os.environ["STRATA_BIN"], os.environ["BENCH_STRATA_ROOT"])
    c = Ctr(os.environ["BENCH_CTR_BIN"], os.environ["BENCH_CTR_SOCK"], work)
    return s, c


# ------------------------------------------------------------------ measuring and recording


def record(rec):
    with open(os.environ["BENCH_RESULTS_TMP"], "a") as f:
        f.write(json.dumps(rec) + "\n")
    a = statistics.median(rec["a_ns"])
    if rec.get("b"):
        b = statistics.median(rec["b_ns"])
        peer = f"  {rec['b']} {fmt(b)}  ratio {a / b:.3f}"
    else:
        peer = "  (no peer)"
    log(
        f"  {rec['title']}: {rec['a']} {fmt(a)}" + peer
        + (f"  (target <= {rec['target']})" if rec.get("target") else "")
        + (f"  (target <= {fmt(rec['target_ns'])})" if rec.get("target_ns") else "")
    )


def compare(title, contenders, op, runs, warmup=WARMUP, target=None, sync=True, note="",
            target_ns=None, washout=False):
    """Alternate the contenders run by run (rotating who goes first).

    op(contender, i) -> (setup, argv) or (setup, argv, stdin): setup is None or a
    callable run untimed before the timed argv; stdin a file for the command's stdin.
    With one contender there is no peer (b is None): the target is then absolute, in
    ns (target_ns). Returns the samples per contender name.

    washout: before each timed run, the same contender runs the same operation once
    untimed (op(contender, WASHOUT_BASE + i)), so no timed run starts in the wake of
    the other tool's run (see "How it measures" in docs/benchmarks.md).
    """
    errfile = os.path.join(os.environ["BENCH_WORK"], "stderr")
    samples = {c.name: [] for c in contenders}
    cpu = {c.name: [] for c in contenders}

    def prepared(c, i):
        setup, argv, *stdin = op(c, i)
        if setup:
            setup()
        if sync:
            os.sync()  # nobody pays for the previous run's writeback
        return argv, stdin

    for i in range(warmup + runs):
        k = i % len(contenders)
        order = contenders[k:] + contenders[:k]
        for c in order:
            if washout:
                argv, stdin = prepared(c, WASHOUT_BASE + i)
                timed(argv, errfile, *stdin)
            argv, stdin = prepared(c, i)
            ns, cpu_ns = timed(argv, errfile, *stdin)
            if i >= warmup:
                samples[c.name].append(ns)
                cpu[c.name].append(cpu_ns)
    a = contenders[0].name
    b = contenders[1].name if len(contenders) > 1 else None
    record(
        {"title": title, "a": a, "b": b, "a_ns": samples[a], "b_ns": samples.get(b, []),
         "a_cpu_ns": cpu[a], "b_cpu_ns": cpu.get(b, []), "target": target,
         "target_ns": target_ns, "note": note}
    )
    return samples, cpu


# ------------------------------------------------------------------ group: per-operation


def ops_store():
    """Both tools with a committed `base` (one file) and an active on it."""
    s, c = tools()
    sh(s.argv("init", "--driver", "overlay"))
    for t in (s, c):
        sh(t.prepare("base-work"))
        with open(os.path.join(t.upperdir("base-work"), "hello.txt"), "w") as f:
            f.write("hello\n")
        sh(t.commit("base", "base-work"))
        sh(t.prepare("active", "base"))
    return s, c


def group_ops():
    s, c = ops_store()

    def small_active(t, key):
        def setup():
            sh(t.prepare(key, "base"))
            with open(os.path.join(t.upperdir(key), "f.txt"), "w") as f:
                f.write("layer content\n")

        return setup

    def ops_compare(*args, **kwargs):
        return compare(*args, washout=WASHOUT, **kwargs)

    pair = [s, c]
    n = f"{RUNS} runs" + (", each after an untimed one of the same tool" if WASHOUT else "")
    floor_bin = os.environ.get("BENCH_FLOOR_BIN")
    floor = Floor(floor_bin, os.path.join(os.environ["BENCH_WORK"], "floor")) if floor_bin else None
    ops_compare("process start only (`--version`)", pair, lambda t, i: (None, t.version()), RUNS,
                note="no store, no daemon: the floor of a whole-process run")
    if floor:
        ops_compare("  floor: a static C program that only starts", [floor, c],
                    lambda t, i: (None, t.version()), RUNS, note="bench/floor.c, no arguments")
    ops_compare("prepare KEY base", pair, lambda t, i: (None, t.prepare(f"prep-{i}", "base")),
                RUNS, target=TARGET_OP, note=n)
    if floor:
        ops_compare("  floor: only the system calls of a durable prepare", [floor, c],
                    lambda t, i: (None, t.prepare(f"floor-{i}", "base")), RUNS,
                    note="bench/floor.c prepare: no user-space work at all")
    ops_compare("view KEY base", pair, lambda t, i: (None, t.view(f"view-{i}", "base")),
                RUNS, target=TARGET_OP, note=n)
    ops_compare("mounts (active, 1 parent)", pair, lambda t, i: (None, t.mounts("active")),
                RUNS, target=TARGET_OP, note=n)
    ops_compare("commit (1 small file)", pair,
                lambda t, i: (small_active(t, f"cw-{i}"), t.commit(f"cm-{i}", f"cw-{i}")),
                RUNS, target=TARGET_OP, note=n)
    ops_compare("rm (active, 1 small file)", pair,
                lambda t, i: (small_active(t, f"rw-{i}"), t.rm(f"rw-{i}")),
                RUNS, target=TARGET_OP, note=n)
    ops_compare("info (committed)", pair, lambda t, i: (None, t.info("base")),
                RUNS, target=TARGET_OP, note=n)
    ops_compare("label (committed)", pair, lambda t, i: (None, t.label("base", f"bench=v{i}")),
                RUNS, target=TARGET_OP, note=n)
    ops_compare("usage (committed)", pair, lambda t, i: (None, t.usage("base")),
                RUNS, target=TARGET_OP, note=n)


def group_carry():
    """Not a default group: does a timed run depend on which tool ran just before it?

    For a few operations, rounds of: an untimed run of one tool, then that tool's
    operation timed twice in a row (right after the other tool, then right after
    itself), then the other tool's likewise (the tool that opens a round alternates).
    Each row's ratio is a tool's median right after the other tool over its median
    right after itself: what run-by-run alternation adds to that tool's figure, and
    what BENCH_WASHOUT takes away."""
    s, c = ops_store()
    errfile = os.path.join(os.environ["BENCH_WORK"], "stderr")
    ops = [("--version", lambda t, i: t.version()),
           ("info base", lambda t, i: t.info("base")),
           ("usage base", lambda t, i: t.usage("base")),
           ("mounts (active)", lambda t, i: t.mounts("active")),
           ("prepare KEY base", lambda t, i: t.prepare(f"carry-{i}", "base"))]

    def run(t, argv):
        os.sync()
        return timed(argv, errfile)

    for title, op in ops:
        after = {(t.name, w): [] for t in (s, c) for w in ("other", "self")}
        cpu = {k: [] for k in after}
        for i in range(WARMUP + RUNS):
            first, second = (c, s) if i % 2 == 0 else (s, c)
            run(first, op(first, 10 * i))  # untimed: the round opens after `first`
            for n, (t, w) in enumerate(((second, "other"), (second, "self"),
                                        (first, "other"), (first, "self"))):
                ns, cpu_ns = run(t, op(t, 10 * i + 1 + n))
                if i >= WARMUP:
                    after[(t.name, w)].append(ns)
                    cpu[(t.name, w)].append(cpu_ns)
        for t, other in ((s, c), (c, s)):
            record({"title": f"carry-over, {title}: {t.name} right after {other.name}",
                    "a": f"{t.name} after {other.name}", "b": f"{t.name} after {t.name}",
                    "a_ns": after[(t.name, "other")], "b_ns": after[(t.name, "self")],
                    "a_cpu_ns": cpu[(t.name, "other")] if t is s else [],
                    "target": None, "note": f"{RUNS} rounds"})


# ------------------------------------------------------------------ group: chains


def build_chain(t, prefix, depth, errfile):
    """prepare + commit `depth` empty layers.

    Returns (total wall ns, total CPU ns, [(wall, cpu) of each prepare])."""
    total, total_cpu, prepares = 0, 0, []
    parent = None
    for i in range(depth):
        work, name = f"{prefix}-w{i:04d}", f"{prefix}-{i:04d}"
        p, p_cpu = timed(t.prepare(work, parent), errfile)
        c, c_cpu = timed(t.commit(name, work), errfile)
        total += p + c
        total_cpu += p_cpu + c_cpu
        prepares.append((p, p_cpu))
        parent = name
    return total, total_cpu, prepares


def group_chain():
    s, c = tools()
    sh(s.argv("init", "--driver", "overlay"))
    errfile = os.path.join(os.environ["BENCH_WORK"], "stderr")
    pair = [s, c]
    for depth in CHAIN:
        wall = {t.name: [] for t in pair}
        cpu = {t.name: [] for t in pair}
        deep = {t.name: [] for t in pair}
        for rep in range(CHAIN_REPS):
            order = pair if rep % 2 == 0 else pair[::-1]
            for t in order:
                os.sync()
                total, total_cpu, prepares = build_chain(t, f"c{depth}r{rep}", depth, errfile)
                wall[t.name].append(total)
                cpu[t.name].append(total_cpu)
                deep[t.name].extend(prepares[-max(1, depth // 10):])
        target = TARGET_CHAIN if depth == max(CHAIN) else None
        record({"title": f"chain of {depth} layers (prepare+commit each)", "a": "strata",
                "b": "ctr", "a_ns": wall["strata"], "b_ns": wall["ctr"],
                "a_cpu_ns": cpu["strata"], "b_cpu_ns": cpu["ctr"],
                "target": target, "note": f"{CHAIN_REPS} builds each; empty layers"})
        record({"title": f"  prepare at depth > {depth - max(1, depth // 10)}",
                "a": "strata", "b": "ctr",
                "a_ns": [w for w, _ in deep["strata"]], "b_ns": [w for w, _ in deep["ctr"]],
                "a_cpu_ns": [c for _, c in deep["strata"]],
                "b_cpu_ns": [c for _, c in deep["ctr"]],
                "target": None, "note": "from the chain builds above"})


# ------------------------------------------------------------------ group: many snapshots


def population(n):
    """The first n snapshots of the listing workload, as (kind, key, parent) in order.

    One committed root `base`; then groups of 10: a committed `gNNNNN` on base (made
    by prepare + commit), 8 actives and 1 view on it. So the store is about 10%
    committed, 80% active, 10% views, two to three levels deep.
    """
    items = [("committed", "base", None)]
    g = 0
    while len(items) < n:
        gk = f"g{g:05d}"
        items.append(("committed", gk, "base"))
        for j in range(8):
            items.append(("active", f"{gk}-a{j}", gk))
        items.append(("view", f"{gk}-v", gk))
        g += 1
    return items[:n]


def populate(t, items):
    """Create items (a slice of population()) with JOBS parallel clients, a group at a
    time; committed snapshots go before their children."""
    groups, cur = [], []
    for it in items:
        if it[0] == "committed" and cur:
            groups.append(cur)
            cur = []
        cur.append(it)
    if cur:
        groups.append(cur)

    def make(group):
        for kind, key, parent in group:
            if kind == "committed":
                sh(t.prepare(key + "-work", parent))
                sh(t.commit(key, key + "-work"))
            elif kind == "active":
                sh(t.prepare(key, parent))
            else:
                sh(t.view(key, parent))

    # the root must exist before anything is built on it
    first, rest = (groups[0], groups[1:]) if groups and groups[0][0][1] == "base" else ([], groups)
    if first:
        make(first)
    parallel(make, rest)


def group_list():
    s, c = tools()
    sh(s.argv("init", "--driver", "overlay"))
    pair = [s, c]
    done = 0
    for size in sorted(LIST):
        items = population(size)[done:]
        fill = {}
        for t in pair:
            t0 = time.perf_counter_ns()
            populate(t, items)
            fill[t.name] = [time.perf_counter_ns() - t0]
        done = size
        record({"title": f"populate to {size:,} ({JOBS} parallel clients, wall time)",
                "a": "strata", "b": "ctr", "a_ns": fill["strata"], "b_ns": fill["ctr"],
                "target": None, "note": f"{len(items)} snapshots added"})
        big = size == max(LIST)
        compare(f"ls of {size:,}", pair, lambda t, i: (None, t.ls()), LIST_RUNS, warmup=1,
                target=TARGET_LIST if big else None, note=f"{LIST_RUNS} runs")
        compare(f"tree of {size:,}", pair, lambda t, i: (None, t.tree()), LIST_RUNS, warmup=1,
                target=TARGET_LIST if big else None, note=f"{LIST_RUNS} runs")
        compare(f"usage of all {size:,}", pair, lambda t, i: (None, t.usage()), USAGE_ALL_RUNS,
                warmup=1, target=TARGET_USAGE_ALL if big else None,
                note=f"{USAGE_ALL_RUNS} runs")


# ------------------------------------------------------------------ group: 100,000 files


def make_template(path, n):
    """n small files (40-200 bytes) in directories of 1,000 (path may exist, empty)."""
    os.makedirs(path, exist_ok=True)
    for i in range(n):
        d = os.path.join(path, f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.mkdir(d)
        with open(os.path.join(d, f"f{i:06d}"), "w") as f:
            f.write(f"file {i}\n" * (4 + i % 20))


def group_files():
    s, c = tools()
    sh(s.argv("init", "--driver", "overlay"))
    work = os.environ["BENCH_WORK"]
    template = os.path.join(work, "template")
    t0 = time.monotonic()
    make_template(template, FILES)
    pair = [s, c]
    uppers = {}
    for t in pair:
        sh(t.prepare("base-work"))
        sh(t.commit("base", "base-work"))
        for r in range(FILES_COMMITS):
            key = f"big-{r}"
            sh(t.prepare(key, "base"))
            up = t.upperdir(key)
            sh(["cp", "-a", "--", template + "/.", up + "/"])
            uppers[(t.name, r)] = up
    log(f"  made {FILES_COMMITS} x 2 snapshots of {FILES:,} files in {time.monotonic() - t0:.0f} s")
    os.sync()

    du = Plain("du -s")

    def usage_op(t, i):
        if t is du:
            return None, ["/usr/bin/env", "du", "-s", uppers[("strata", 0)]]
        return None, t.usage("big-0")

    samples, cpu = compare(f"usage of an active with {FILES:,} files (vs du -s)", [s, du, c],
                           usage_op, FILES_RUNS, warmup=1, target=TARGET_USAGE_DU,
                           note="warm cache; du -s of the same directory")
    record({"title": f"usage of an active with {FILES:,} files (vs ctr)", "a": "strata",
            "b": "ctr", "a_ns": samples["strata"], "b_ns": samples["ctr"],
            "a_cpu_ns": cpu["strata"], "b_cpu_ns": cpu["ctr"], "target": None,
            "note": "same runs as above"})
    if FILES_COMMITS:
        compare(f"commit of an active with {FILES:,} files", pair,
                lambda t, i: (None, t.commit(f"bigc-{i}", f"big-{i}")),
                FILES_COMMITS, warmup=0, target=TARGET_BIG_COMMIT,
                note=f"{FILES_COMMITS} commits each, warm cache")
        compare(f"usage of that committed snapshot", pair, lambda t, i: (None, t.usage("bigc-0")),
                FILES_RUNS, warmup=1, note="recorded at commit")


# ------------------------------------------------------------------ groups: diff and apply (layers)


def settle_seconds(path):
    """How long after a mass deletion file creation is slow: BENCH_SETTLE, else 360 s
    when path is on ext4 without a journal, else 0.

    Without a journal, ext4's inode allocator will not reuse an inode deleted less
    than 60 s ago, or less than 360 s ago while the inode-table block holding it is
    dirty (RECENTCY_MIN = 60 and RECENTCY_DIRTY = 300 in recently_deleted(),
    fs/ext4/ialloc.c); find_inode_bit() checks every free inode it passes, one
    buffer-cache lookup each, and skips the recent ones. Creating files dirties the
    inode-table blocks it allocates from, so a tree unpacked into groups where many
    files were deleted a few minutes earlier pays the long window: `tar -x` of the
    apply layer took 3.1 s of CPU instead of 0.4 s four minutes after the previous
    run's cleanup, half of it in recently_deleted(). Timed runs that create many files
    therefore never follow a deletion of ours closely: apply and diff run first (apply
    keeps its trees to the end), and otherwise wait (settle())."""
    if SETTLE:
        return float(SETTLE)
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            if len(fields) > 2 and fields[2] == dev and post.split()[:1] == ["ext4"]:
                name = os.path.basename(os.path.realpath(post.split()[1]))
                try:
                    with open(f"/sys/fs/ext4/{name}/journal_task") as j:
                        return 360.0 if j.read().strip() == "<none>" else 0.0
                except OSError:
                    return 0.0
    return 0.0


def settle(path):
    """Sleep until settle_seconds(path) have passed since this harness (or a previous
    run of it) last deleted many files (BENCH_DELETED_AT, seconds since the epoch,
    kept by bench/run)."""
    since = int(os.environ.get("BENCH_DELETED_AT") or 0)
    left = since + settle_seconds(path) - time.time()
    if left > 0:
        log(f"  waiting {left:.0f} s: inodes deleted {time.time() - since:.0f} s ago must age "
            f"out of ext4's recently-deleted window first (BENCH_SETTLE)")
        time.sleep(left)


def strata_only():
    s = Strata(os.environ["STRATA_BIN"], os.environ["BENCH_STRATA_ROOT"])
    sh(s.argv("init", "--driver", "overlay"))
    return s


def group_diff():
    """`strata diff` of a one-file change on top of a FILES-file committed parent.

    No peer: `ctr snapshots diff` exists, but it runs containerd's differ inside the
    daemon and writes the layer into the daemon's content store (a different output,
    and not a snapshot-only operation), so the figure is against an absolute target."""
    s = strata_only()
    work = os.environ["BENCH_WORK"]
    t0 = time.monotonic()
    settle(work)
    sh(s.prepare("big-work"))
    make_template(s.upperdir("big-work"), FILES)  # a root active is a bind of its fs dir
    sh(s.commit("big", "big-work"))
    sh(s.prepare("child", "big"))
    with open(os.path.join(s.upperdir("child"), "changed.txt"), "w") as f:
        f.write("the one change\n")
    log(f"  committed `big` ({FILES:,} files) and `child` with one file in "
        f"{time.monotonic() - t0:.0f} s")
    out = os.path.join(work, "child.tar")

    # check once, untimed, that the layer holds exactly the one change
    sh(s.argv("diff", "child", "--output-file", out))
    with tarfile.open(out) as tf:
        names = tf.getnames()
    if names != ["changed.txt"]:
        raise BenchError(f"diff of child: expected one entry changed.txt, got {names[:10]}")
    size = os.path.getsize(out)
    # a new output file each run (nothing deleted in between, see settle_seconds())
    compare(f"diff of a one-file change on a {FILES:,}-file parent", [s],
            lambda t, i: (None, s.argv("diff", "child", "--output-file",
                                       os.path.join(work, f"child-{i}.tar"))),
            DIFF_RUNS, warmup=WARMUP, target_ns=TARGET_DIFF_NS,
            note=f"{DIFF_RUNS} runs; --output-file, uncompressed, {size} bytes; "
                 "no ctr figure (its diff needs the content store)")


# ------------------------------------------------------------------ group: apply


TEXT_WORDS = ("the of and to in is that for it as with was on be by this are or at from "
              "layer snapshot file directory commit parent overlay mount usage index "
              "static const return struct include define error value void unsigned "
              "0 1 2 16 32 64 128 256 1024 4096 true false null none").split()


def layer_files(n, total, seed=20261122):
    """The deterministic content of the apply layer: [(path, bytes)], n files, ~total bytes.

    Sizes are log-uniform within three classes, then scaled to the total: 85% of the
    files 64 B-16 KiB, 14.5% 16-64 KiB, 0.5% 256 KiB-1 MiB. Half the files are text
    (words; gzip ~3-4x), half random bytes (incompressible), taken from two 8 MiB pools.
    Directories of 100 files, two levels deep."""
    rng = random.Random(seed)
    raw = []
    for _ in range(n):
        u = rng.random()
        lo, hi = (64, 16 << 10) if u < 0.85 else (16 << 10, 64 << 10) if u < 0.995 \
            else (256 << 10, 1 << 20)
        raw.append(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    k = total / sum(raw)
    pool_size = 8 << 20
    binary = rng.randbytes(pool_size)
    words = []
    length = 0
    while length < pool_size:
        w = rng.choice(TEXT_WORDS)
        words.append(w)
        length += len(w) + 1
        if rng.random() < 0.08:
            words.append("\n")
    text = " ".join(words).encode()[:pool_size]
    files = []
    for i, r in enumerate(raw):
        size = min(int(r * k), pool_size)
        pool = text if rng.random() < 0.5 else binary
        off = rng.randrange(pool_size - size + 1)
        d = i // 100
        files.append((f"usr/d{d // 20:02d}/d{d % 20:02d}/f{i:05d}", pool[off:off + size]))
    return files


def write_layer(path, files):
    """A PAX tar of files, directories first, root-owned, fixed mtime."""
    mtime = 1700000000

    def info(name, kind, size=0):
        ti = tarfile.TarInfo(name)
        ti.type, ti.size, ti.mtime = kind, size, mtime
        ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    seen = set()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files:
            parts = name.split("/")[:-1]
            for j in range(1, len(parts) + 1):
                d = "/".join(parts[:j])
                if d not in seen:
                    seen.add(d)
                    tf.addfile(info(d, tarfile.DIRTYPE))
            tf.addfile(info(name, tarfile.REGTYPE, len(data)), io.BytesIO(data))


def warm(path):
    """Read path through, so the archive is in the page cache for every run."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def tree_summary(root):
    """{relative path: (mode, size, uid, gid, mtime)} of everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            out[os.path.relpath(p, root)] = (st.st_mode, size, st.st_uid, st.st_gid,
                                             int(st.st_mtime))
    return out


def group_apply():
    """`strata apply` of a large root layer (from stdin) against `tar -x` of the same
    archive into a fresh empty directory on the same filesystem, alternating, the
    archive read through before every run so it is warm in the page cache for both.

    strata syncs the filesystem (one syncfs) before it commits, so the peer with the
    target is `tar -x` followed at once by `sync -f DIR` (the same syncfs call), timed
    as the sum of the two processes; `tar -x` alone is reported too, from the same runs.
    Run 0 of each format is an untimed warm-up whose two results are compared entry by
    entry. Every run makes a new snapshot / a new empty directory, and nothing is
    deleted until the whole benchmark ends (see settle_seconds()); a deletion by an
    earlier group or run is waited out first. os.sync() runs before every timed
    process."""
    s = strata_only()
    work = os.environ["BENCH_WORK"]
    errfile = os.path.join(work, "stderr")
    tar, sync = shutil.which("tar"), shutil.which("sync")
    t0 = time.monotonic()
    files = layer_files(APPLY_FILES, APPLY_MB << 20)
    plain = os.path.join(work, "layer.tar")
    write_layer(plain, files)
    nbytes = sum(len(d) for _, d in files)
    del files
    gz = plain + ".gz"
    with open(gz, "wb") as f:
        p = subprocess.run(["gzip", "-6", "-n", "-c", plain], stdout=f, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise BenchError(f"gzip exited {p.returncode}: {p.stderr.decode().strip()}")
    mib = 1 << 20
    log(f"  made the layer: {APPLY_FILES:,} files, {nbytes / mib:.0f} MiB of content, "
        f"tar {os.path.getsize(plain) / mib:.0f} MiB, tar.gz {os.path.getsize(gz) / mib:.0f} "
        f"MiB (gzip -6) in {time.monotonic() - t0:.0f} s")
    # Every tree is kept to the end: two formats, 1 + APPLY_RUNS rounds, two tools.
    need = 2 * (1 + APPLY_RUNS) * 2 * os.path.getsize(plain) * 1.2
    free = shutil.disk_usage(work).free
    if free < need:
        raise BenchError(f"the apply group keeps {need / 2**30:.1f} GiB of trees until the end "
                         f"and {work} has {free / 2**30:.1f} GiB free: lower BENCH_APPLY_MB "
                         "or BENCH_APPLY_RUNS")
    settle(work)

    for archive, label, zflag in ((plain, "plain tar", "-xf"), (gz, "tar.gz", "-xzf")):
        t0 = time.monotonic()
        w = {"strata": [], "tar": [], "tar+sync": [], "sync": []}
        cpu = {"strata": [], "tar": []}
        for i in range(1 + APPLY_RUNS):  # run 0: warm-up and check, not recorded
            name, d = f"layer{zflag}-{i}", os.path.join(work, f"x{zflag}-{i}")
            for who in ("strata", "tar") if i % 2 == 0 else ("tar", "strata"):
                warm(archive)
                if who == "strata":
                    os.sync()
                    ns, c = timed(s.argv("apply", name), errfile, stdin=archive)
                    w["strata"].append(ns)
                    cpu["strata"].append(c)
                else:
                    os.mkdir(d)
                    os.sync()
                    ns, c = timed([tar, zflag, archive, "-C", d], errfile)
                    ns2, _ = timed([sync, "-f", d], errfile)
                    w["tar"].append(ns)
                    w["sync"].append(ns2)
                    w["tar+sync"].append(ns + ns2)
                    cpu["tar"].append(c)
            if i == 0:
                sh(s.view("check-v", name))
                a, b = tree_summary(s.upperdir("check-v")), tree_summary(d)
                sh(s.rm("check-v"))
                if a != b:
                    diff = sorted(set(a.items()) ^ set(b.items()))[:5]
                    raise BenchError(f"strata apply and tar {zflag} disagree ({len(a)} vs "
                                     f"{len(b)} entries), e.g. {diff}")
                log(f"  {label}: strata apply and tar {zflag} give the same {len(a):,} entries")
        elapsed = time.monotonic() - t0
        w = {k: v[1:] for k, v in w.items()}
        cpu = {k: v[1:] for k, v in cpu.items()}
        size = os.path.getsize(archive)
        title = f"apply of a {APPLY_MB} MB layer, {APPLY_FILES:,} files, {label}"
        note = (f"{APPLY_RUNS} runs each after 1 warm-up, alternating; archive "
                f"{size / mib:.0f} MiB, warm; root layer from stdin; "
                f"sync -f after tar: median {fmt(statistics.median(w['sync']))}")
        record({"title": f"{title} (vs tar {zflag} && sync)", "a": "strata",
                "b": "tar && sync", "a_ns": w["strata"], "b_ns": w["tar+sync"],
                "a_cpu_ns": cpu["strata"], "b_cpu_ns": cpu["tar"], "target": TARGET_APPLY,
                "note": note})
        record({"title": f"{title} (vs tar {zflag} alone)", "a": "strata", "b": "tar",
                "a_ns": w["strata"], "b_ns": w["tar"], "a_cpu_ns": cpu["strata"],
                "b_cpu_ns": cpu["tar"], "target": None,
                "note": "same runs; tar without the sync"})
        log(f"  {label}: {1 + APPLY_RUNS} rounds in {elapsed:.0f} s; "
            f"median sync -f after tar {fmt(statistics.median(w['sync']))}")


# ------------------------------------------------------------------ report


def fmt(ns):
    if ns >= 10e9:
        return f"{ns / 1e9:.1f} s"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 100e6:
        return f"{ns / 1e6:.0f} ms"
    if ns >= 10e6:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e6:.2f} ms"


def report(path, markdown=None):
    recs = [json.loads(line) for line in open(path) if line.strip()]
    header = ["workload", "strata", "peer", "ratio", "target", "met?", "strata CPU"]
    rows = []
    missed = 0
    for r in recs:
        a = statistics.median(r["a_ns"])
        if r.get("b"):
            b = statistics.median(r["b_ns"])
            ratio = a / b if b else float("inf")
            peer, ratio_s = f"{fmt(b)} ({r['b']})", f"{ratio:.3f}"
        else:
            ratio, peer, ratio_s = None, r.get("peer_note", "—"), "—"
        over = None
        if r.get("target") and ratio is not None:
            over = ratio / r["target"]
            target = f"≤ {r['target']}"
        elif r.get("target_ns"):
            over = a / r["target_ns"]
            target = f"≤ {fmt(r['target_ns'])}"
        else:
            target, met = "—", ""
        if over is not None:
            ok = over <= 1
            missed += not ok
            met = "yes" if ok else f"NO ({over:.2f}x over)" if over < 2 else f"NO ({over:.1f}x over)"
        a_cpu = fmt(statistics.median(r["a_cpu_ns"])) if r.get("a_cpu_ns") else ""
        rows.append([r["title"], fmt(a), peer, ratio_s, target, met, a_cpu])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    text = "\n".join(out)
    print("Medians; ratio = strata / peer (lower is better); peer is ctr unless named;")
    print("strata CPU = median user+system time of the strata process (the rest is waiting:")
    print("fsync and other I/O, or the CPU being busy with other work).")
    if any("floor:" in r["title"] for r in recs):
        print("In `floor:` rows the strata column is bench/floor.c: the same design with no work but its system calls.")
    print(text)
    targets = sum(1 for r in recs if r.get("target") or r.get("target_ns"))
    if targets:
        print(f"\n{targets - missed} of {targets} targets met.")
    if markdown:
        with open(markdown, "w") as f:
            f.write(text + "\n")
    return 1 if missed and os.environ.get("BENCH_STRICT") == "1" else 0


def check_no_tcp(pid):
    """Exit 1 if process pid has a listening TCP socket."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                log(f"containerd {pid} listens on TCP {f[1]}")
                return 1
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    try:
        if cmd == "ops":
            group_ops()
        elif cmd == "chain":
            group_chain()
        elif cmd == "carry":
            group_carry()
        elif cmd == "list":
            group_list()
        elif cmd == "files":
            group_files()
        elif cmd == "diff":
            group_diff()
        elif cmd == "apply":
            group_apply()
        elif cmd == "report":
            md = argv[argv.index("--markdown") + 1] if "--markdown" in argv else None
            return report(argv[2], md)
        elif cmd == "check-no-tcp":
            return check_no_tcp(int(argv[2]))
        else:
            print(f"unknown command {cmd}", file=sys.stderr)
            return 2
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
