//! `/etc/modules` and `modules.dep`: which kernel modules to load, in which
//! order. Parsing and ordering are pure; loading is one `finit_module` each.
//!
//! `/etc/modules` (Debian's format): one module a line, optionally followed
//! by its parameters (`nbd nbds_max=4`); `#` starts a comment. Names match
//! with `-` and `_` taken as the same, as the kernel does.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::service::io_text;

/// linux/module.h: the file is compressed and the kernel should unpack it
/// (Linux 6.4+; older kernels refuse it with EINVAL).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;
/// Deepest dependency chain followed; a deeper one is a broken modules.dep.
const MAX_DEPTH: usize = 64;

/// One line of `/etc/modules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub params: String,
}

pub fn parse_list(text: &str) -> Vec<Request> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("").trim();
            let (name, params) = match line.split_once(char::is_whitespace) {
                Some((name, params)) => (name, params.trim()),
                None => (line, ""),
            };
            (!name.is_empty()).then(|| Request {
                name: canonical(name),
                params: params.to_owned(),
            })
        })
        .collect()
}

/// A module's name as the kernel knows it: `nbd` for
/// `kernel/drivers/block/nbd.ko`, `-` folded into `_`.
pub fn canonical(name_or_path: &str) -> String {
    let base = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let base = [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(base);
    let base = base.strip_suffix(".ko").unwrap_or(base);
    base.replace('-', "_")
}

/// modules.dep: for each module, its file and its dependencies' files
/// (paths relative to the modules directory, or absolute).
#[derive(Debug, Default)]
pub struct DepMap {
    modules: HashMap<String, (String, Vec<String>)>,
}

impl DepMap {
    pub fn parse(text: &str) -> DepMap {
        let mut modules = HashMap::new();
        for line in text.lines() {
            let Some((file, deps)) = line.split_once(':') else {
                continue;
            };
            let file = file.trim();
            if file.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            modules.insert(canonical(file), (file.to_owned(), deps));
        }
        DepMap { modules }
    }

    /// The files to load for `name`, dependencies first, each once.
    pub fn load_order(&self, name: &str) -> Result<Vec<String>, String> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        self.visit(&canonical(name), &mut seen, &mut order, 0)?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "dependency chain through {name} is deeper than {MAX_DEPTH}"
            ));
        }
        if !seen.insert(name.to_owned()) {
            // Loaded already, or a cycle: modules.dep of a real kernel has none.
            return Ok(());
        }
        let (file, deps) = self
            .modules
            .get(name)
            .ok_or_else(|| format!("module {name} not found in modules.dep"))?;
        for dep in deps {
            self.visit(&canonical(dep), seen, order, depth + 1)?;
        }
        order.push(file.clone());
        Ok(())
    }
}

/// Whether modules.builtin lists `name` (it is part of the kernel image).
pub fn is_builtin(builtin_list: &str, name: &str) -> bool {
    let name = canonical(name);
    builtin_list
        .lines()
        .any(|line| canonical(line.trim()) == name)
}

/// How loading one module went.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Inserted,
    AlreadyThere,
}

/// Inserts the module in `file` with `params` through finit_module(2).
pub fn insert(file: &Path, params: &str) -> Result<Loaded, String> {
    let module = std::fs::File::open(file)
        .map_err(|e| format!("cannot open {}: {}", file.display(), io_text(&e)))?;
    let params = CString::new(params)
        .map_err(|_| format!("{}: parameters contain a NUL byte", file.display()))?;
    let compressed = [".xz", ".zst", ".gz"]
        .iter()
        .any(|ext| file.to_string_lossy().ends_with(ext));
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: finit_module reads the open descriptor and a NUL-terminated
    // string that both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            module.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(Loaded::Inserted);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(Loaded::AlreadyThere),
        _ => Err(format!("cannot load {}: {}", file.display(), io_text(&e))),
    }
}

/// A modules.dep path made absolute under the modules directory.
pub fn module_path(dir: &Path, file: &str) -> PathBuf {
    if file.starts_with('/') {
        PathBuf::from(file)
    } else {
        dir.join(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/block/nbd.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/foo/a-b.ko.xz:
";

    #[test]
    fn dependencies_come_first_and_each_file_once() {
        let map = DepMap::parse(DEP);
        assert_eq!(
            map.load_order("nbd").unwrap(),
            ["kernel/drivers/block/nbd.ko"]
        );
        let order = map.load_order("virtio_net").unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/net/virtio_net.ko",
            ]
        );
        assert_eq!(
            map.load_order("bridge").unwrap(),
            [
                "kernel/net/llc/llc.ko",
                "kernel/net/802/stp.ko",
                "kernel/net/bridge/bridge.ko"
            ]
        );
    }

    #[test]
    fn names_fold_dashes_and_compression_suffixes() {
        let map = DepMap::parse(DEP);
        assert_eq!(
            map.load_order("a_b").unwrap(),
            ["kernel/drivers/foo/a-b.ko.xz"]
        );
        assert_eq!(map.load_order("a-b").unwrap().len(), 1);
        assert_eq!(canonical("virtio-net"), "virtio_net");
        assert_eq!(
            map.load_order("nope").unwrap_err(),
            "module nope not found in modules.dep"
        );
    }

    #[test]
    fn cycles_and_garbage_do_not_hang_or_panic() {
        let map = DepMap::parse("a.ko: b.ko\nb.ko: a.ko\n\n:::\nno colon here\n");
        assert_eq!(map.load_order("a").unwrap(), ["b.ko", "a.ko"]);
        let mut chain = String::new();
        for i in 0..100 {
            chain.push_str(&format!("m{i}.ko: m{}.ko\n", i + 1));
        }
        assert!(DepMap::parse(&chain)
            .load_order("m0")
            .unwrap_err()
            .contains("deeper"));
    }

    #[test]
    fn module_list_takes_parameters_and_comments() {
        assert_eq!(
            parse_list("# boot modules\nnbd nbds_max=4  max_part=8\n\n virtio-pci # NIC\n"),
            [
                Request {
                    name: "nbd".into(),
                    params: "nbds_max=4  max_part=8".into()
                },
                Request {
                    name: "virtio_pci".into(),
                    params: String::new()
                },
            ]
        );
    }

    #[test]
    fn builtin_modules_are_recognised() {
        let list = "kernel/net/packet/af_packet.ko\nkernel/fs/ext4/ext4.ko\n";
        assert!(is_builtin(list, "af_packet"));
        assert!(!is_builtin(list, "nbd"));
    }
}
