//! Whiteouts and opaque markers (`.wh.NAME`, `.wh..wh..opq`) as the
//! extractor applies them: on native, deleting what the layers below have;
//! on overlay, a `c 0,0` whiteout or an opaque directory in the upper, made
//! only where the layers below have something to hide.
//!
//! A second `impl Extractor` block, apart from the entries a layer creates:
//! these methods only remove or hide, and `Extractor::member` calls them for
//! marker entries only.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::store::layer::lowers::Below;
use crate::store::layer::{DIR_FLAGS, Result, Whiteouts, cstr, invalid, io_err, join};

use super::{CREATED, Extractor, HOLDS, Missing, list_dir};

impl Extractor<'_> {
    pub(super) fn whiteout(
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

    pub(super) fn opaque(&mut self, dir: &[&[u8]], rel: &[u8], entry: &str) -> Result<()> {
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
