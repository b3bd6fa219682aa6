//! A mount target, resolved and checked before anything is created for it.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A mount target that may not exist yet: the path it will have (symlinks
/// in the existing part resolved), and the directories to create for it.
pub struct TargetPath {
    /// Absolute, through the existing ancestor's real path.
    pub path: PathBuf,
    existing: PathBuf,
    /// Names below `existing`, nearest to it last.
    missing: Vec<OsString>,
}

/// Directories [`TargetPath::create`] made, to remove if the mount fails.
#[must_use]
pub struct Made(Vec<PathBuf>);

impl TargetPath {
    /// Resolves `target` without creating anything: a symlink on the way
    /// (even one into the store) is followed before the target is judged.
    pub fn resolve(target: &Path) -> io::Result<TargetPath> {
        let mut existing = std::path::absolute(target)?;
        let mut missing = Vec::new();
        loop {
            match fs::metadata(&existing) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // A symlink to nowhere: making its name a directory is
                    // impossible, and making the place it names would be a
                    // guess at what the user meant.
                    if let Ok(dest) = fs::read_link(&existing) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "{} is a symbolic link to {}, which does not exist",
                                existing.display(),
                                dest.display()
                            ),
                        ));
                    }
                    // A missing directory followed by `..` has no name to
                    // create; `/` always exists.
                    let Some(name) = existing.file_name() else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "`..` follows a directory that does not exist",
                        ));
                    };
                    missing.push(name.to_owned());
                    existing.pop();
                }
                Err(e) => return Err(e),
            }
        }
        let mut path = existing.canonicalize()?;
        path.extend(missing.iter().rev());
        Ok(TargetPath {
            path,
            existing,
            missing,
        })
    }

    /// Creates the missing directories, one by one.
    pub fn create(&self) -> io::Result<Made> {
        let mut dir = self.existing.clone();
        let mut made = Made(Vec::new());
        for name in self.missing.iter().rev() {
            dir.push(name);
            match fs::create_dir(&dir) {
                Ok(()) => made.0.push(dir.clone()),
                // Another process made it meanwhile: it is not ours to remove.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => {
                    made.undo();
                    return Err(e);
                }
            }
        }
        Ok(made)
    }
}

impl Made {
    /// Removes the directories made, deepest first, while they are empty.
    pub fn undo(self) {
        for dir in self.0.iter().rev() {
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_through_a_symlink_is_judged_where_it_leads() {
        let tmp = std::env::temp_dir().join(format!("strata-target-{}", std::process::id()));
        let real = tmp.join("real");
        fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.join("link")).unwrap();
        let resolved = TargetPath::resolve(&tmp.join("link/a/b")).unwrap();
        assert_eq!(resolved.path, real.canonicalize().unwrap().join("a/b"));
        assert!(!real.join("a").exists(), "resolving creates nothing");
        let made = resolved.create().unwrap();
        assert!(real.join("a/b").is_dir());
        made.undo();
        assert!(!real.join("a").exists(), "undo removes what create made");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_dangling_symlink_on_the_way_is_refused_by_name() {
        let tmp = std::env::temp_dir().join(format!("strata-dangling-{}", std::process::id()));
        fs::create_dir_all(&tmp).unwrap();
        std::os::unix::fs::symlink(tmp.join("nowhere"), tmp.join("link")).unwrap();
        for target in [tmp.join("link"), tmp.join("link/a")] {
            let e = TargetPath::resolve(&target).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            let link = tmp.join("link");
            let nowhere = tmp.join("nowhere");
            let expected = format!(
                "{} is a symbolic link to {}, which does not exist",
                link.display(),
                nowhere.display()
            );
            assert_eq!(e.to_string(), expected);
        }
        assert!(!tmp.join("nowhere").exists(), "nothing is made");
        fs::remove_dir_all(&tmp).unwrap();
    }
}
