//! A file written whole, then put in place by a rename, so that its final
//! name holds the old file or the new one, never part of one (`diff
//! --output-file`, an OCI layout's blobs, `oci-layout` and `index.json`).
//!
//! The file is written unnamed (`O_TMPFILE`) and given a temporary name
//! only once written, just before the rename: a process killed (SIGKILL, a
//! power cut) while writing leaves nothing behind, where a file written
//! under a temporary name would stay forever. Only a kill between that
//! link and the rename leaves a temporary (`.tmpXXXXXX`). Where the
//! filesystem or kernel lacks `O_TMPFILE`, or `/proc` is not mounted (the
//! link goes through `/proc/self/fd`), the file is written under a
//! temporary name from the start instead.

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A file being written in a directory, not yet under its final name.
/// Dropped before [`NewFile::persist`], it leaves nothing behind.
pub struct NewFile {
    file: File,
    dir: PathBuf,
    /// The name it is written under when it could not be made unnamed;
    /// removed again on drop.
    named: Option<::tempfile::TempPath>,
}

impl NewFile {
    /// A new empty file in `dir`, with mode `mode` less the umask (as
    /// `open(2)` with `O_CREAT` gives it).
    pub fn create_in(dir: &Path, mode: u32) -> io::Result<NewFile> {
        match unnamed(dir, mode) {
            Some(file) => Ok(NewFile {
                file,
                dir: dir.to_path_buf(),
                named: None,
            }),
            None => NewFile::named_in(dir, mode),
        }
    }

    /// The fallback: a file under a fresh temporary name in `dir`.
    fn named_in(dir: &Path, mode: u32) -> io::Result<NewFile> {
        use std::os::unix::fs::PermissionsExt;
        let (file, path) = ::tempfile::Builder::new()
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(without_temp_name)?
            .into_parts();
        Ok(NewFile {
            file,
            dir: dir.to_path_buf(),
            named: Some(path),
        })
    }

    pub fn as_file(&self) -> &File {
        &self.file
    }

    pub fn as_file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Puts the file at `path`, which must be in the directory it was
    /// created in, replacing whatever file is there (rename(2)). Syncs
    /// nothing: a caller that wants the data durable syncs the file first.
    /// On failure nothing is left under a temporary name.
    pub fn persist(self, path: &Path) -> io::Result<()> {
        let temp = match self.named {
            Some(temp) => temp,
            None => link(&self.file, &self.dir)?,
        };
        // On failure the error's TempPath is dropped, which removes it.
        temp.persist(path).map_err(|e| e.error)
    }
}

/// An unnamed file in `dir`, when `O_TMPFILE` works there and the file can
/// be linked through `/proc/self/fd` (checked now, before anything is
/// written into a file that could then never be named). Any failure means
/// the named fallback: a real one (no such directory, no permission, no
/// space) happens again there and is reported from there.
fn unnamed(dir: &Path, mode: u32) -> Option<File> {
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(mode)).ok()?;
    let own = rustix::fs::fstat(&fd).ok()?;
    // /proc missing, or the /proc of another pid namespace, shows another
    // file (or none) at our descriptor's number.
    let seen = rustix::fs::stat(proc_path(fd.as_raw_fd())).ok()?;
    (seen.st_dev == own.st_dev && seen.st_ino == own.st_ino).then(|| File::from(fd))
}

/// `e` without the name of the temporary file tempfile adds to it: the
/// user named another file, which the caller's message names (audit:
/// `diff --output-file /missing/dir/l.tar` said `at path
/// "/missing/dir/.tmpZIT11Z"`). tempfile keeps the system's error only as
/// text, so the usual ones are told by their kind.
fn without_temp_name(e: io::Error) -> io::Error {
    use io::ErrorKind as K;
    let errno = match e.kind() {
        _ if e.raw_os_error().is_some() => return e,
        K::NotFound => libc::ENOENT,
        K::PermissionDenied => libc::EACCES,
        K::NotADirectory => libc::ENOTDIR,
        K::ReadOnlyFilesystem => libc::EROFS,
        K::StorageFull => libc::ENOSPC,
        K::QuotaExceeded => libc::EDQUOT,
        _ => return e,
    };
    io::Error::from_raw_os_error(errno)
}

fn proc_path(fd: std::os::fd::RawFd) -> String {
    format!("/proc/self/fd/{fd}")
}

/// Gives unnamed `file` a fresh temporary name in `dir` (retrying while the
/// random name is taken), removed again if the TempPath is dropped.
fn link(file: &File, dir: &Path) -> io::Result<::tempfile::TempPath> {
    let from = proc_path(file.as_raw_fd());
    let linked = ::tempfile::Builder::new().make_in(dir, |temp| {
        rustix::fs::linkat(CWD, from.as_str(), CWD, temp, AtFlags::SYMLINK_FOLLOW)
            .map_err(io::Error::from)
    })?;
    Ok(linked.into_temp_path())
}

#[cfg(test)]
mod tests {
    use super::NewFile;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The process's umask, read without changing it (tests run in threads).
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .unwrap();
        u32::from_str_radix(line.trim(), 8).unwrap()
    }

    /// Each way a NewFile is made: unnamed (here, where it works) and named.
    const BOTH: [fn(&Path, u32) -> std::io::Result<NewFile>; 2] =
        [NewFile::create_in, NewFile::named_in];

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn unnamed_until_persisted_then_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        std::fs::write(&dest, "old").unwrap();
        let mut f = NewFile::create_in(tmp.path(), 0o666).unwrap();
        assert!(f.named.is_none(), "O_TMPFILE and /proc work here");
        f.as_file_mut().write_all(b"new").unwrap();
        assert_eq!(names(tmp.path()), ["out"], "nothing named while written");
        f.persist(&dest).unwrap();
        assert_eq!(names(tmp.path()), ["out"]);
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
        assert_eq!(mode(&dest), 0o666 & !umask());
    }

    /// Without O_TMPFILE: the same, through a named temporary.
    #[test]
    fn named_fallback_persists_with_the_same_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        std::fs::write(&dest, "old").unwrap();
        let mut f = NewFile::named_in(tmp.path(), 0o666).unwrap();
        f.as_file_mut().write_all(b"new").unwrap();
        assert_eq!(names(tmp.path()).len(), 2);
        f.persist(&dest).unwrap();
        assert_eq!(names(tmp.path()), ["out"]);
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
        assert_eq!(mode(&dest), 0o666 & !umask());
    }

    #[test]
    fn dropped_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        for make in BOTH {
            let f = make(tmp.path(), 0o644).unwrap();
            f.as_file().write_all(b"x").unwrap();
            drop(f);
            assert!(names(tmp.path()).is_empty());
        }
    }

    /// A failed rename (a directory at the final name) removes the
    /// temporary name the file was given.
    #[test]
    fn failed_persist_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("d");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("x"), "x").unwrap();
        for make in BOTH {
            let f = make(tmp.path(), 0o644).unwrap();
            assert!(f.persist(&dest).is_err());
            assert_eq!(names(tmp.path()), ["d"]);
        }
    }

    /// A missing directory is said as the system says it, without the
    /// temporary name tempfile tried (the user named another file).
    #[test]
    fn a_missing_directory_names_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        for make in BOTH {
            let e = make(&missing, 0o644).err().expect("no directory");
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
            assert!(!e.to_string().contains(".tmp"), "{e}");
        }
    }
}
