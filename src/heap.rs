//! strata's `malloc`: the memory allocator of the static musl binary, for
//! Rust, SQLite, zstd and aws-lc alike. They all call `malloc`, and a static
//! program that defines it replaces musl's (which musl supports; its own
//! internal allocations keep using its private allocator).
//!
//! Why strata has its own: a command lives about a millisecond, so what an
//! allocator costs to start and to touch its first pages is most of what it
//! costs (docs/benchmarks.md, "Process start"). musl's maps and unmaps as it
//! goes (37 `mmap` and 13 `munmap` calls in one `info`); mimalloc maps and
//! clears a segment in every process; glibc's start probes the CPU with
//! `cpuid` dozens of times, and each is a trap to the hypervisor on the VMs
//! strata is measured on. This one starts with nothing to do, makes no system
//! call for a short command, and packs what it hands out densely.
//!
//! How it works: a block has a 16-byte header right before it, holding its
//! size class and how far it sits from the start of its slot (0 unless it was
//! aligned beyond 16 bytes). There are 28 size classes, two per power of two
//! from 16 bytes to 256 KiB. Each thread keeps a free list per class, and a
//! region it carves new slots from; regions come from one arena: a static
//! 8 MiB first (no system call), then chunks of 64 MiB mapped as needed.
//! A block freed on another thread joins that thread's list. Blocks above
//! 256 KiB are mappings of their own, unmapped when freed.
//!
//! What it does not do: memory of small blocks goes back to the lists, never
//! to the system, and the lists of a thread that ends are lost. A command's
//! footprint is its peak, which suits a program that exits when its one job
//! is done; strata's long commands (apply, usage, pull) allocate the same
//! sizes over and over and reuse them.
//!
//! The functions below are exported under the C names only on musl; elsewhere
//! (a glibc build, see .cargo/config.toml) they are plain functions, which the
//! unit tests call on every target.

use std::cell::Cell;
use std::ptr::null_mut;
use std::sync::Mutex;

/// Bytes before every block: its class (or [`LARGE`]) and its offset.
const HEADER: usize = 16;
/// The class tag of a block that is a mapping of its own.
const LARGE: usize = usize::MAX;
/// Size classes: 16, 32, 48, 64, 96, 128, 192, ..., 192 Ki, 256 Ki.
const CLASSES: usize = 28;
/// The largest block served from a class.
const MAX_SMALL: usize = 256 << 10;
/// What a thread takes from the arena at a time for its small slots.
const REGION: usize = 64 << 10;
/// Slots at least this big are taken from the arena one at a time.
const ALONE: usize = REGION / 4;
/// The arena's later chunks.
const CHUNK: usize = 64 << 20;
/// The arena's first chunk, in the program's zero-filled data: it costs no
/// system call, and pages only as it is touched.
const FIRST: usize = 8 << 20;
const PAGE: usize = 4096;
/// How much of the first chunk is made present at once: about what a short
/// command touches (`info` ~160 KiB, most of it SQLite's and clap's).
const PREFAULT: usize = 192 << 10;

#[repr(C, align(4096))]
struct FirstChunk([u8; FIRST]);

static mut FIRST_CHUNK: FirstChunk = FirstChunk([0; FIRST]);

/// The part of the current chunk not handed out yet.
struct Arena {
    next: usize,
    end: usize,
    first_used: bool,
}

static ARENA: Mutex<Arena> = Mutex::new(Arena {
    next: 0,
    end: 0,
    first_used: false,
});

/// One thread's free lists and the rest of its region. No destructor, so
/// reading it never fails, even while the thread's other locals are dropped.
struct Cache {
    free: [Cell<*mut u8>; CLASSES],
    next: Cell<usize>,
    end: Cell<usize>,
}

thread_local! {
    static CACHE: Cache = const {
        Cache {
            free: [const { Cell::new(null_mut()) }; CLASSES],
            next: Cell::new(0),
            end: Cell::new(0),
        }
    };
}

/// The class whose blocks hold `size` bytes; `size` at most [`MAX_SMALL`].
fn class_of(size: usize) -> usize {
    if size <= 16 {
        return 0;
    }
    if size <= 32 {
        return 1;
    }
    // 2^p >= size > 2^(p-1): class 2p-10 holds 1.5 * 2^(p-1), 2p-9 holds 2^p.
    let p = (usize::BITS - (size - 1).leading_zeros()) as usize;
    if size <= 3 << (p - 2) {
        2 * p - 10
    } else {
        2 * p - 9
    }
}

/// The size of class `class`'s blocks.
fn class_size(class: usize) -> usize {
    match class {
        0 => 16,
        c if !c.is_multiple_of(2) => 1 << (c / 2 + 5),
        c => 3 << (c / 2 + 3),
    }
}

fn set_errno(code: std::ffi::c_int) {
    // SAFETY: errno is this thread's own int.
    unsafe { *libc::__errno_location() = code };
}

fn set_enomem() {
    set_errno(libc::ENOMEM);
}

/// A large block's mapping: where it starts and its length (kept in its
/// first word).
///
/// # Safety
/// `p` must be a live large block, `offset` the one in its header.
unsafe fn mapping(p: *mut u8, offset: usize) -> (*mut u8, usize) {
    let base = p.wrapping_sub(offset);
    // SAFETY: the caller's promise: the mapping starts `offset` before `p`.
    (base, unsafe { base.cast::<usize>().read() })
}

/// Maps `len` bytes of fresh zeroed memory, or null.
fn map(len: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        null_mut()
    } else {
        p.cast()
    }
}

/// Makes the start of the first chunk present with one system call. Each
/// page would otherwise cost a page fault when first touched; on this
/// project's VM that halves a short command's faults (`info` 100 -> 51) and
/// takes 1-6% off its time (docs/benchmarks.md). Only advice: a kernel
/// before 5.14 refuses it, and the pages then fault in as before.
fn prefault(start: *mut u8) {
    // SAFETY: advice on memory this program owns; nothing is changed.
    unsafe { libc::madvise(start.cast(), PREFAULT, libc::MADV_POPULATE_WRITE) };
}

/// `len` bytes (a multiple of 16) from the arena, or null.
fn carve(len: usize) -> *mut u8 {
    let mut arena = ARENA.lock().unwrap_or_else(|e| e.into_inner());
    if arena.end - arena.next < len {
        let (start, size) = if !arena.first_used && len <= FIRST {
            arena.first_used = true;
            let start = (&raw mut FIRST_CHUNK).cast::<u8>();
            prefault(start);
            (start, FIRST)
        } else {
            let size = len.max(CHUNK);
            (map(size), size)
        };
        if start.is_null() {
            return null_mut();
        }
        // What is left of the old chunk (less than `len`) stays unused.
        arena.next = start as usize;
        arena.end = start as usize + size;
    }
    let p = arena.next;
    arena.next += len;
    p as *mut u8
}

/// A slot of class `class` (header included), or null.
fn slot(class: usize) -> *mut u8 {
    let stride = HEADER + class_size(class);
    if stride >= ALONE {
        return carve(stride);
    }
    CACHE.with(|cache| {
        if cache.end.get() - cache.next.get() < stride {
            let region = carve(REGION);
            if region.is_null() {
                return null_mut();
            }
            cache.next.set(region as usize);
            cache.end.set(region as usize + REGION);
        }
        let p = cache.next.get();
        cache.next.set(p + stride);
        p as *mut u8
    })
}

/// Writes `p`'s header.
///
/// # Safety
/// `p - 16 .. p` must be memory of the block.
unsafe fn set_header(p: *mut u8, class: usize, offset: usize) {
    // SAFETY: the caller's promise; `p` is 16-aligned.
    unsafe {
        let h = p.sub(HEADER).cast::<usize>();
        h.write(class);
        h.add(1).write(offset);
    }
}

/// `p`'s class and offset.
///
/// # Safety
/// `p` must be a live block of this allocator.
unsafe fn header(p: *mut u8) -> (usize, usize) {
    // SAFETY: the caller's promise.
    unsafe {
        let h = p.sub(HEADER).cast::<usize>();
        (h.read(), h.add(1).read())
    }
}

/// `size` bytes aligned to `align` (a power of two), or null.
fn allocate(size: usize, align: usize) -> *mut u8 {
    let align = align.max(16);
    // Room to move the block up to its alignment, inside the slot.
    let Some(need) = size.max(1).checked_add(align - 16) else {
        set_enomem();
        return null_mut();
    };
    if need > MAX_SMALL {
        return allocate_large(size, align);
    }
    let class = class_of(need);
    let reused = CACHE.with(|cache| {
        let head = cache.free[class].get();
        if !head.is_null() {
            // SAFETY: a free block's first word links to the next one.
            cache.free[class].set(unsafe { head.cast::<*mut u8>().read() });
        }
        head
    });
    let block = if reused.is_null() {
        let s = slot(class);
        if s.is_null() {
            set_enomem();
            return null_mut();
        }
        s.wrapping_add(HEADER)
    } else {
        reused
    };
    let p = (block as usize).next_multiple_of(align) as *mut u8;
    // SAFETY: `p` is in the slot, 16 bytes or more past its start.
    unsafe { set_header(p, class, p as usize - block as usize) };
    p
}

/// A mapping of its own: its length in the first word, the block's header
/// right before the block.
fn allocate_large(size: usize, align: usize) -> *mut u8 {
    let start = HEADER + 16;
    let Some(len) = size
        .checked_add(start + align)
        .and_then(|n| n.checked_next_multiple_of(PAGE))
    else {
        set_enomem();
        return null_mut();
    };
    let base = map(len);
    if base.is_null() {
        set_enomem();
        return null_mut();
    }
    let p = (base as usize + start).next_multiple_of(align) as *mut u8;
    // SAFETY: the mapping is `len` bytes; `p` leaves room for both.
    unsafe {
        base.cast::<usize>().write(len);
        set_header(p, LARGE, p as usize - base as usize);
    }
    p
}

/// The bytes usable at `p`.
///
/// # Safety
/// `p` must be a live block of this allocator.
unsafe fn usable(p: *mut u8) -> usize {
    // SAFETY: the caller's promise.
    let (class, offset) = unsafe { header(p) };
    if class == LARGE {
        // SAFETY: a large block, its header's offset.
        (unsafe { mapping(p, offset) }).1 - offset
    } else {
        class_size(class) - offset
    }
}

/// # Safety
/// As C's `malloc`.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn malloc(size: usize) -> *mut u8 {
    allocate(size, 16)
}

/// # Safety
/// As C's `calloc`.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut u8 {
    let Some(total) = count.checked_mul(size) else {
        set_enomem();
        return null_mut();
    };
    let p = allocate(total, 16);
    // A block of its own is a fresh mapping, zero already; a small one may
    // be reused.
    // SAFETY: `p` is a live block with `total` usable bytes.
    if !p.is_null() && unsafe { header(p) }.0 != LARGE {
        unsafe { p.write_bytes(0, total) };
    }
    p
}

/// # Safety
/// As C's `free`.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn free(p: *mut u8) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` is a live block (the caller's promise).
    let (class, offset) = unsafe { header(p) };
    if class == LARGE {
        // SAFETY: a large block, its header's offset; the mapping is its own.
        unsafe {
            let (base, len) = mapping(p, offset);
            libc::munmap(base.cast(), len);
        }
        return;
    }
    let block = p.wrapping_sub(offset);
    CACHE.with(|cache| {
        // SAFETY: the block is ours again; its first word links the list.
        unsafe { block.cast::<*mut u8>().write(cache.free[class].get()) };
        cache.free[class].set(block);
    });
}

/// # Safety
/// As C's `realloc`.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        return allocate(size, 16);
    }
    // SAFETY: `p` is a live block (the caller's promise).
    let have = unsafe { usable(p) };
    // Fits, and does not keep more than twice what is asked for.
    if size <= have && size.saturating_mul(2) >= have.min(MAX_SMALL) {
        return p;
    }
    if size > MAX_SMALL {
        // SAFETY: `p` is a live block (the caller's promise).
        if let Some(q) = unsafe { remap(p, size) } {
            return q;
        }
    }
    let q = allocate(size, 16);
    if !q.is_null() {
        // SAFETY: both blocks hold at least the bytes copied; they are apart.
        unsafe {
            q.copy_from_nonoverlapping(p, have.min(size));
            free(p);
        }
    }
    q
}

/// A block of its own moved to a mapping of `size` bytes by the kernel,
/// which moves its pages rather than copying them (a `Vec` that keeps
/// growing would otherwise fault in every page of every copy); `None` when
/// `p` is not such a block or the kernel says no.
///
/// # Safety
/// `p` must be a live block of this allocator.
unsafe fn remap(p: *mut u8, size: usize) -> Option<*mut u8> {
    // SAFETY: the caller's promise.
    let (class, offset) = unsafe { header(p) };
    // Within a page the offset keeps the block's alignment; a block aligned
    // beyond a page is copied instead.
    if class != LARGE || offset >= PAGE {
        return None;
    }
    // SAFETY: a large block, its header's offset.
    let (base, old) = unsafe { mapping(p, offset) };
    let len = size.checked_add(offset)?.checked_next_multiple_of(PAGE)?;
    // SAFETY: the block's own mapping, moved whole; nothing else points
    // into it but `p`, which the caller gives up.
    let moved = unsafe { libc::mremap(base.cast(), old, len, libc::MREMAP_MAYMOVE) };
    if moved == libc::MAP_FAILED {
        return None;
    }
    let base = moved.cast::<u8>();
    // SAFETY: the new mapping is `len` bytes, its header moved with it.
    unsafe { base.cast::<usize>().write(len) };
    Some(base.wrapping_add(offset))
}

/// # Safety
/// As C's `aligned_alloc`.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    allocate(size, align)
}

/// # Safety
/// As C's `memalign`.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut u8 {
    // SAFETY: the same contract.
    unsafe { aligned_alloc(align, size) }
}

/// # Safety
/// As C's `posix_memalign`.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut u8,
    align: usize,
    size: usize,
) -> std::ffi::c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<usize>()) {
        return libc::EINVAL;
    }
    let p = allocate(size, align);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: `out` is writable (the caller's promise).
    unsafe { out.write(p) };
    0
}

/// # Safety
/// As C's `malloc_usable_size`.
#[cfg_attr(target_env = "musl", unsafe(no_mangle))]
pub unsafe extern "C" fn malloc_usable_size(p: *mut u8) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live block (the caller's promise).
    unsafe { usable(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_gets_the_smallest_class_that_holds_it() {
        for size in 1..=MAX_SMALL {
            let c = class_of(size);
            assert!(c < CLASSES, "{size}");
            assert!(class_size(c) >= size, "{size} in {}", class_size(c));
            assert!(c == 0 || class_size(c - 1) < size, "{size}");
            assert_eq!(class_size(c) % 16, 0);
        }
        assert_eq!(class_size(CLASSES - 1), MAX_SMALL);
    }

    /// Fills a block with a pattern that names it, and checks it later.
    fn fill(p: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
        }
    }

    fn holds(p: *mut u8, len: usize, seed: u8) -> bool {
        (0..len).all(|i| unsafe { p.add(i).read() } == seed.wrapping_add(i as u8))
    }

    #[test]
    fn blocks_are_aligned_apart_and_keep_their_contents() {
        let sizes = [
            0,
            1,
            15,
            16,
            17,
            100,
            4376,
            70_000,
            MAX_SMALL,
            MAX_SMALL + 1,
            3 << 20,
        ];
        let mut blocks = Vec::new();
        for (n, &size) in sizes.iter().enumerate() {
            for align in [16, 32, 128, 4096, 65536] {
                let p = unsafe { aligned_alloc(align, size) };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                assert!(unsafe { malloc_usable_size(p) } >= size);
                fill(p, size, n as u8);
                blocks.push((p, size, n as u8));
            }
        }
        for &(p, size, seed) in &blocks {
            assert!(holds(p, size, seed), "block of {size} overwritten");
        }
        for (p, _, _) in blocks {
            unsafe { free(p) };
        }
    }

    #[test]
    fn a_freed_block_is_reused_and_calloc_clears_it() {
        let p = unsafe { malloc(200) };
        fill(p, 200, 7);
        unsafe { free(p) };
        let q = unsafe { calloc(20, 10) };
        assert_eq!(q, p, "the same class, the same thread: reused");
        assert!((0..200).all(|i| unsafe { q.add(i).read() } == 0));
        unsafe { free(q) };
        assert!(unsafe { calloc(usize::MAX, 2) }.is_null());
        assert!(unsafe { malloc(usize::MAX - 8) }.is_null());
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_mappings() {
        let mut p = unsafe { malloc(10) };
        fill(p, 10, 3);
        let mut len = 10;
        for size in [11, 100, 5000, 300_000, 5 << 20, 400_000, 9 << 20, 40, 1] {
            p = unsafe { realloc(p, size) };
            assert!(!p.is_null());
            assert!(unsafe { malloc_usable_size(p) } >= size);
            let kept = len.min(size);
            assert!(holds(p, kept, 3), "realloc to {size}");
            fill(p, size, 3);
            len = size;
        }
        unsafe { free(p) };
        let mut out = null_mut();
        assert_eq!(unsafe { posix_memalign(&mut out, 24, 8) }, libc::EINVAL);
        assert_eq!(unsafe { posix_memalign(&mut out, 256, 8) }, 0);
        assert_eq!(out as usize % 256, 0);
        unsafe { free(out) };
    }

    /// Random mallocs, reallocs and frees (a fixed xorshift sequence) of
    /// every size range, each live block checked whole before it goes.
    #[test]
    fn random_sequences_keep_every_live_block_intact() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
        for step in 0..5_000u32 {
            let r = next();
            let size = match r % 10 {
                0..=6 => (r >> 8) as usize % 512,
                7 | 8 => (r >> 8) as usize % 40_000,
                _ => (r >> 8) as usize % 600_000,
            };
            let seed = step as u8;
            match (r >> 40) % 3 {
                0 if !live.is_empty() => {
                    let (p, len, old) = live.swap_remove((r >> 20) as usize % live.len());
                    assert!(holds(p, len, old), "step {step}: block of {len} changed");
                    unsafe { free(p) };
                }
                1 if !live.is_empty() => {
                    let i = (r >> 20) as usize % live.len();
                    let (p, len, old) = live[i];
                    let q = unsafe { realloc(p, size) };
                    assert!(
                        holds(q, len.min(size), old),
                        "step {step}: realloc lost data"
                    );
                    fill(q, size, seed);
                    live[i] = (q, size, seed);
                }
                _ => {
                    let p = unsafe { malloc(size) };
                    fill(p, size, seed);
                    live.push((p, size, seed));
                }
            }
        }
        for (p, len, seed) in live {
            assert!(holds(p, len, seed));
            unsafe { free(p) };
        }
    }

    #[test]
    fn threads_allocate_and_free_each_others_blocks() {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, usize, u8)>();
        let makers: Vec<_> = (0..4u8)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..5000usize {
                        let size = (i * 37 + t as usize * 11) % 3000 + 1;
                        let p = unsafe { malloc(size) };
                        fill(p, size, t);
                        tx.send((p as usize, size, t)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let freer = std::thread::spawn(move || {
            for (p, size, seed) in rx {
                assert!(holds(p as *mut u8, size, seed));
                unsafe { free(p as *mut u8) };
            }
        });
        for m in makers {
            m.join().unwrap();
        }
        freer.join().unwrap();
    }
}
