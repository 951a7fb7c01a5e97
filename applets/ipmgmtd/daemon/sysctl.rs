//! /proc/sys, the kernel's tunables, read and written for the calling
//! process's network namespace.

use std::io::Write;
use std::path::PathBuf;

use crate::ipmgmtd::model::{Error, Status};

fn path_of(rel: &str) -> Result<PathBuf, Error> {
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::with(
            Status::InvalidArg,
            format!("sysctl path '{rel}'"),
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// The value, trimmed of its newline.
pub fn read(rel: &str) -> Result<String, Error> {
    let path = path_of(rel)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim_end_matches('\n').to_owned()),
        Err(e) => Err(Error::io(&e)),
    }
}

pub fn write(rel: &str, value: &str) -> Result<(), Error> {
    let path = path_of(rel)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&e))?;
    file.write_all(format!("{value}\n").as_bytes())
        .map_err(|e| Error::io(&e))
}

pub fn ipv6_conf(ifname: &str, leaf: &str) -> String {
    format!("net/ipv6/conf/{ifname}/{leaf}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape_proc_sys() {
        assert!(path_of("net/ipv4/ip_forward").is_ok());
        for bad in [
            "../etc/passwd",
            "net/../../x",
            "/abs",
            "net//x",
            "net/./x",
            "",
        ] {
            assert!(path_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_trim_the_newline() {
        let v = read("kernel/ostype").unwrap();
        assert_eq!(v, "Linux");
    }
}
