//! `toolbox --install [-s] [--force] DIR`: a link per applet in DIR (hard
//! links, or symlinks with `-s`). A file of another name already there is
//! left alone and reported, unless `--force`.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::applets::APPLETS;

const USAGE: &str = "usage: toolbox --install [-s] [--force] DIR";

pub fn main(args: &[OsString]) -> i32 {
    let mut symlink = false;
    let mut force = false;
    let mut dir = None;
    for arg in args {
        match arg.to_str() {
            Some("-s") => symlink = true,
            Some("--force" | "-f") => force = true,
            Some(opt) if opt.starts_with('-') => {
                eprintln!("toolbox: --install: unknown option: {opt}\n{USAGE}");
                return 1;
            }
            _ if dir.is_none() => dir = Some(PathBuf::from(arg)),
            _ => {
                eprintln!("toolbox: --install: one directory only\n{USAGE}");
                return 1;
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("toolbox: --install: no directory given\n{USAGE}");
        return 1;
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("toolbox: --install: cannot find own executable: {e}");
            return 1;
        }
    };
    if !dir.is_dir() {
        eprintln!("toolbox: --install: not a directory: {}", dir.display());
        return 1;
    }
    let mut status = 0;
    for applet in APPLETS {
        let link = dir.join(applet.name);
        if let Err(e) = install_one(&exe, &link, symlink, force) {
            eprintln!("toolbox: --install: {}: {e}", link.display());
            status = 1;
        }
    }
    status
}

fn install_one(exe: &Path, link: &Path, symlink: bool, force: bool) -> Result<(), String> {
    if let Ok(meta) = std::fs::symlink_metadata(link) {
        if !force && !is_toolbox(exe, link, &meta) {
            return Err("exists and is not toolbox; left alone (use --force)".into());
        }
        std::fs::remove_file(link).map_err(|e| format!("cannot replace: {e}"))?;
    }
    let made = if symlink {
        std::os::unix::fs::symlink(exe, link)
    } else {
        std::fs::hard_link(exe, link)
    };
    made.map_err(|e| e.to_string())
}

/// Whether `link` already is this toolbox (a link made by an earlier install).
fn is_toolbox(exe: &Path, link: &Path, meta: &std::fs::Metadata) -> bool {
    let Ok(exe_meta) = std::fs::metadata(exe) else {
        return false;
    };
    let same = |m: &std::fs::Metadata| m.dev() == exe_meta.dev() && m.ino() == exe_meta.ino();
    if meta.file_type().is_symlink() {
        std::fs::metadata(link).map(|m| same(&m)).unwrap_or(false)
    } else {
        same(meta)
    }
}
