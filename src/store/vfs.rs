//! The SQLite VFS the index is opened with: SQLite's own (unix), except
//! that a rollback journal that has been written before is opened without
//! `SQLITE_OPEN_CREATE`.
//!
//! Why: SQLite marks a journal opened with the create flag as new, and
//! syncs the journal's directory after the journal's first sync, so that a
//! journal it just made is found after a power loss. Its pager always asks
//! for the create flag, so with the journal kept between transactions
//! (`PERSIST`) every write command synced the store directory once more, a
//! directory whose entry for the journal was made durable by the command
//! that created it: one cache flush in five of a `label` (0.15-0.2 ms here).
//!
//! A journal that is missing or empty is still opened with the create
//! flag, so SQLite syncs its directory exactly as before: that covers a new
//! store, a store switched from WAL, a journal someone deleted, and one
//! whose maker died before writing to it. (A journal is written only by the
//! process holding the write lock, and that process syncs its directory at
//! its first sync, before the database itself is touched.)

use rusqlite::ffi;
use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

/// The name the VFS is registered under.
const NAME: &CStr = c"strata";

type Open = unsafe extern "C" fn(
    *mut ffi::sqlite3_vfs,
    *const c_char,
    *mut ffi::sqlite3_file,
    c_int,
    *mut c_int,
) -> c_int;

/// The default VFS's `xOpen`, which [`open`] calls.
static DEFAULT_OPEN: OnceLock<Open> = OnceLock::new();

/// Registers the VFS (once per process) and returns its name, or `None`
/// when SQLite has no default VFS to build it on (the index then opens
/// with SQLite's own, which only costs the extra directory sync).
pub(crate) fn name() -> Option<&'static CStr> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    REGISTERED.get_or_init(register).then_some(NAME)
}

fn register() -> bool {
    // SAFETY: `sqlite3_vfs_find` initialises SQLite and returns the
    // default VFS, which lives for the whole process. The copy is leaked, so
    // it too outlives every connection; SQLite only reads it.
    unsafe {
        let default = ffi::sqlite3_vfs_find(std::ptr::null());
        let Some(default_open) = default.as_ref().and_then(|vfs| vfs.xOpen) else {
            return false;
        };
        let _ = DEFAULT_OPEN.set(default_open);
        let mut vfs = std::ptr::read(default);
        vfs.zName = NAME.as_ptr();
        vfs.pNext = std::ptr::null_mut();
        vfs.xOpen = Some(open);
        let vfs = Box::leak(Box::new(vfs));
        ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
    }
}

/// `xOpen`: the default one, with the create flag dropped for a rollback
/// journal that has been written before (see the module's comment). If that
/// open fails (the journal went away in between), the default open runs
/// with the flags as asked.
unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // Set before the VFS is registered; a panic here could not unwind
    // through SQLite anyway.
    let Some(&default_open) = DEFAULT_OPEN.get() else {
        return ffi::SQLITE_CANTOPEN;
    };
    let create = ffi::SQLITE_OPEN_MAIN_JOURNAL | ffi::SQLITE_OPEN_CREATE;
    // SAFETY: SQLite passes a NUL-terminated name (or null for temp files).
    if flags & create == create
        && !name.is_null()
        && written_before(unsafe { CStr::from_ptr(name) })
    {
        // SAFETY: the arguments are SQLite's own, passed on unchanged but
        // for one flag; the default xOpen takes any VFS copied from it.
        let rc =
            unsafe { default_open(vfs, name, file, flags & !ffi::SQLITE_OPEN_CREATE, out_flags) };
        if rc == ffi::SQLITE_OK {
            return rc;
        }
    }
    // SAFETY: as above, with SQLite's arguments unchanged.
    unsafe { default_open(vfs, name, file, flags, out_flags) }
}

/// Whether the journal at `path` exists with something in it: then the
/// process that made it synced its directory at its first sync, unless it
/// died between writing and that sync (the window design.md's "Journal"
/// names; the database was not touched yet then).
fn written_before(path: &CStr) -> bool {
    rustix::fs::stat(path)
        .is_ok_and(|st| st.st_size > 0 && rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    fn written(path: &std::path::Path) -> bool {
        written_before(&CString::new(path.as_os_str().as_bytes()).unwrap())
    }

    /// Only a regular file with something in it counts: a missing or empty
    /// journal (new, or its maker died before writing) gets SQLite's own
    /// open, and with it the directory sync.
    #[test]
    fn only_a_written_journal_skips_the_create_flag() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("index.db-journal");
        assert!(!written(&journal), "missing");
        std::fs::write(&journal, b"").unwrap();
        assert!(!written(&journal), "empty");
        std::fs::write(&journal, b"\0").unwrap();
        assert!(written(&journal), "written");
        assert!(!written(dir.path()), "a directory");
    }

    /// A journal that went away is made again (with SQLite's own open): a
    /// write commits and is there after reopening.
    #[test]
    fn a_missing_journal_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let conn = rusqlite::Connection::open_with_flags_and_vfs(
            &path,
            rusqlite::OpenFlags::default(),
            name().expect("registered"),
        )
        .unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = PERSIST; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        let journal = dir.path().join("index.db-journal");
        assert!(written(&journal));
        std::fs::remove_file(&journal).unwrap();
        conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
        assert!(written(&journal), "made again");
        drop(conn);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
