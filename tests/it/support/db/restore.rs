//! Restoring a snapshot copy: its image attached to a fresh loop device and mounted, and an
//! fsck that says whether the copy is clean.

use super::*;

/// An image file (a snapshot copy) attached read-write to a fresh loop device and mounted;
/// unmounted and detached on drop. The copy is ours, so recovery may write to it.
pub struct Attached {
    pub device: String,
    pub mount_point: PathBuf,
    image: PathBuf,
}

impl Attached {
    pub fn new(image: &Path, mount_point: &Path) -> Attached {
        let image = std::fs::canonicalize(image).unwrap();
        let device = sh("losetup", &["-f", "--show", image.to_str().unwrap()])
            .trim()
            .to_string();
        let a = Attached {
            device,
            mount_point: mount_point.to_path_buf(),
            image,
        };
        std::fs::create_dir_all(mount_point).unwrap();
        sh("mount", &[&a.device, mount_point.to_str().unwrap()]);
        a
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|s| {
                s.lines()
                    .any(|l| l.split(' ').nth(4) == self.mount_point.to_str())
            })
            .unwrap_or(false);
        if mounted {
            let _ = Command::new("umount").arg(&self.mount_point).status();
        }
        crate::support::detach_loop(&self.device, &self.image);
    }
}

/// `e2fsck -fn` of an ext4 image: Ok if clean (no journal to recover, no errors).
pub fn e2fsck_clean(image: &Path) -> Result<(), String> {
    let (ok, out, err) = run(Command::new("e2fsck").arg("-fn").arg(image));
    if ok {
        Ok(())
    } else {
        Err(format!("{out}\n{err}"))
    }
}
