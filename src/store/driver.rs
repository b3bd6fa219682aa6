//! Drivers: how a snapshot's directory is built and which mounts expose it.
//! Mounts are plain data computed from the chain; performing them is
//! `mount.rs`'s job.

use super::copy::copy_tree;
use super::index::SnapshotKind;
use super::layout::make_root_dir;
use super::mount::{self, Mount};
use std::io;
use std::path::{Path, PathBuf};

/// The kernel's limit on overlay lower layers.
pub const OVERLAY_MAX_LOWER: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// An active snapshot is an empty upper directory over its parent chain.
    Overlay,
    /// An active snapshot is a full copy of its parent; mounts are binds.
    Native,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Overlay => "overlay",
            Driver::Native => "native",
        }
    }

    pub fn parse(text: &str) -> Option<Driver> {
        match text {
            "overlay" => Some(Driver::Overlay),
            "native" => Some(Driver::Native),
            _ => None,
        }
    }

    /// Fills a staging directory for a new snapshot of `kind` whose parent's
    /// tree is `parent_fs`.
    pub fn build(self, dir: &Path, kind: SnapshotKind, parent_fs: Option<&Path>) -> io::Result<()> {
        let fs = dir.join("fs");
        // On overlay an active's or an applied layer's root is the merged
        // tree's: it carries the parent root's xattrs, as the native
        // driver's copy does.
        let xattrs = self == Driver::Overlay && kind != SnapshotKind::View;
        make_root_dir(&fs, parent_fs, xattrs)?;
        match (self, kind) {
            (Driver::Overlay, SnapshotKind::Active) => {
                std::fs::create_dir(dir.join("work"))?;
            }
            // A committed snapshot is built only by apply, on a copy of its
            // parent when layers are whole trees.
            (Driver::Native, SnapshotKind::Active | SnapshotKind::Committed) => {
                if let Some(parent_fs) = parent_fs {
                    copy_tree(parent_fs, &fs)?;
                }
            }
            // A view needs no tree of its own: it mounts its parents.
            _ => {}
        }
        Ok(())
    }

    /// How many lower layers a snapshot with a chain of `depth` parents
    /// needs, and whether this driver can mount that many.
    pub fn check_depth(self, depth: usize) -> Result<(), String> {
        if self == Driver::Overlay && depth > OVERLAY_MAX_LOWER {
            return Err(format!(
                "its parent chain has {depth} layers, more than the {OVERLAY_MAX_LOWER} lower layers overlayfs can stack"
            ));
        }
        Ok(())
    }

    /// The mounts of a snapshot of `kind` living in `dir`, whose parents'
    /// trees are `chain` (nearest first).
    pub fn mounts(
        self,
        kind: SnapshotKind,
        dir: &Path,
        chain: &[PathBuf],
        extra: &[String],
    ) -> Vec<Mount> {
        let fs = dir.join("fs");
        let overlay = self == Driver::Overlay;
        match kind {
            SnapshotKind::Committed => Vec::new(),
            SnapshotKind::Active if !overlay || chain.is_empty() => vec![bind(&fs, false)],
            // A committed parent never changes, so a view of one layer (or
            // any view on native, where each layer is whole) is the parent's
            // own tree, read-only.
            SnapshotKind::View if !overlay || chain.len() <= 1 => {
                vec![bind(chain.first().unwrap_or(&fs), true)]
            }
            kind => {
                let mut options = overlay_base_options(extra);
                if kind == SnapshotKind::Active {
                    options.push(mount::overlay_path_option("workdir", &dir.join("work")));
                    options.push(mount::overlay_path_option("upperdir", &fs));
                }
                options.push(mount::lowerdir_option(chain));
                vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }]
            }
        }
    }
}

/// `index=off` where the kernel has that parameter (as containerd does, so
/// a layer can be mounted in several overlays at once), `userxattr` inside a
/// user namespace, then the configured extras; a configured `index=` wins.
/// Where the kernel turns `metacopy` or `redirect_dir` on by default, they
/// are turned off: with them a changed file's data or a renamed directory's
/// content stays in the lower layer, and a snapshot's upper directory is no
/// longer its change (`diff` reads it as one; see [`crate::config`], which
/// refuses them as extras).
fn overlay_base_options(extra: &[String]) -> Vec<String> {
    let mut options = Vec::new();
    if mount::overlay_has_index_param() && !extra.iter().any(|o| o.starts_with("index=")) {
        options.push("index=off".to_string());
    }
    for feature in ["metacopy", "redirect_dir"] {
        if mount::overlay_param_on(feature) {
            options.push(format!("{feature}=off"));
        }
    }
    if mount::in_user_namespace() && !extra.iter().any(|o| o == "userxattr") {
        options.push("userxattr".to_string());
    }
    options.extend(extra.iter().cloned());
    options
}

fn bind(source: &Path, read_only: bool) -> Mount {
    Mount {
        kind: "bind".into(),
        source: source.display().to_string(),
        options: vec!["rbind".into(), if read_only { "ro" } else { "rw" }.into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_paths_are_escaped_as_mount2_takes_them() {
        let chain = [
            PathBuf::from("/s/2/fs"),
            PathBuf::from(r"/odd:dir,with\back/1/fs"),
        ];
        let mounts = Driver::Overlay.mounts(
            SnapshotKind::Active,
            Path::new(r"/odd:dir,with\back/3"),
            &chain,
            &[],
        );
        let options = &mounts[0].options;
        let n = options.len();
        assert_eq!(
            options[n - 3..],
            [
                r"workdir=/odd\:dir\,with\\back/3/work",
                r"upperdir=/odd\:dir\,with\\back/3/fs",
                r"lowerdir=/s/2/fs:/odd\:dir\,with\\back/1/fs",
            ]
        );
        // Ordinary paths are written as they are.
        let plain = [PathBuf::from("/s/2/fs"), PathBuf::from("/s/1/fs")];
        let view = Driver::Overlay.mounts(SnapshotKind::View, Path::new("/s/9"), &plain, &[]);
        assert_eq!(view[0].options.last().unwrap(), "lowerdir=/s/2/fs:/s/1/fs");
        assert_eq!(mount::lowerdir_option::<PathBuf>(&[]), "lowerdir=");
    }
}
