//! `toolbox --install [-s] [--force] DIR`: a link per applet in DIR (hard
//! links, or symlinks with `-s`). A file of another name already there is
//! left alone and reported, unless `--force`. It then says where the man
//! pages belong (the binary carries none; packages and scripts/mangen.sh
//! make them).

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
    let pages: Vec<String> = std::iter::once("toolbox")
        .chain(APPLETS.iter().map(|a| a.name))
        .map(|name| format!("{name}.8"))
        .collect();
    println!(
        "toolbox: man pages belong in {}: {} (scripts/mangen.sh makes them)",
        man_dir_for(&dir).display(),
        pages.join(" ")
    );
    status
}

/// Section 8 of the manual beside a binary directory: /sbin and /bin give
/// /usr/share/man/man8, PREFIX/sbin gives PREFIX/share/man/man8.
fn man_dir_for(dir: &Path) -> PathBuf {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    match dir.parent() {
        Some(prefix) if prefix != Path::new("/") => prefix.join("share/man/man8"),
        _ => PathBuf::from("/usr/share/man/man8"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_go_beside_the_binary_directory() {
        assert_eq!(
            man_dir_for(Path::new("/sbin")),
            Path::new("/usr/share/man/man8")
        );
        assert_eq!(
            man_dir_for(Path::new("/usr/sbin")),
            Path::new("/usr/share/man/man8")
        );
        assert_eq!(
            man_dir_for(Path::new("/opt/tb/bin")),
            Path::new("/opt/tb/share/man/man8")
        );
    }
}
