//! Where ipmgmtd keeps its files, all under one root (`/` normally; a temp
//! directory in tests and image builds). The kernel's /proc/sys is never
//! prefixed.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub root: PathBuf,
    /// The volatile directory: socket, locks, caches.
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    /// Held while the daemon runs: one instance per root.
    pub instance_lock: PathBuf,
    pub aobjmap: PathBuf,
    /// Where changes wait while the persistent copy cannot be written.
    pub volatile_db: PathBuf,
    /// Serializes writers of the datastore.
    pub db_lock: PathBuf,
    pub etc_dir: PathBuf,
    pub db: PathBuf,
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

impl Paths {
    pub fn new(root: &Path) -> Paths {
        let run_dir = under(root, "/run/ipadm");
        let etc_dir = under(root, "/etc/ipadm");
        Paths {
            root: root.to_owned(),
            socket: run_dir.join("ipmgmtd.sock"),
            instance_lock: run_dir.join("ipmgmtd.lock"),
            aobjmap: run_dir.join("aobjmap.conf"),
            volatile_db: run_dir.join("ipadm.conf"),
            db_lock: run_dir.join("ipadm.conf.lock"),
            db: etc_dir.join("ipadm.conf"),
            run_dir,
            etc_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_sits_under_the_root() {
        let p = Paths::new(Path::new("/"));
        assert_eq!(p.socket, Path::new("/run/ipadm/ipmgmtd.sock"));
        assert_eq!(p.db, Path::new("/etc/ipadm/ipadm.conf"));
        let p = Paths::new(Path::new("/tmp/r"));
        assert_eq!(p.aobjmap, Path::new("/tmp/r/run/ipadm/aobjmap.conf"));
        assert_eq!(p.volatile_db, Path::new("/tmp/r/run/ipadm/ipadm.conf"));
    }
}
