//! Opening a backing file: its name resolved against the image's own
//! directory, its format from the header extension or probed, opened
//! read-only as a raw or qcow2 backend.

use std::path::{Path, PathBuf};

use super::super::raw::{self, RawFile};
use super::super::Backend;
use super::{is_qcow2, OpenOptions, Qcow2};
use crate::service::io_text;

/// Where a backing name points: absolute as is, relative to the directory
/// of the image naming it (as qemu resolves it).
pub fn resolve(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        return name.to_path_buf();
    }
    image.parent().unwrap_or(Path::new(".")).join(name)
}

/// Opens the backing file `name` of `image`: the backend and its size.
pub fn open(
    image: &Path,
    name: &str,
    format: Option<&str>,
    opts: &OpenOptions,
    depth: u32,
) -> Result<(Box<dyn Backend>, u64), String> {
    if name.starts_with("json:") || name.contains("://") {
        return Err(format!(
            "{}: backing file '{name}' is not a plain file name (protocols are not supported)",
            image.display()
        ));
    }
    let path = resolve(image, name);
    let shown = path.display();
    let file = raw::open_file(&path, false).map_err(|e| {
        format!(
            "{}: cannot open backing file {shown}: {}",
            image.display(),
            io_text(&e)
        )
    })?;
    let format = match format {
        Some(f) => f.to_owned(),
        None if is_qcow2(&file) => "qcow2".into(),
        None => "raw".into(),
    };
    let read_only = OpenOptions {
        writable: false,
        snapshot: None,
        discard: false,
        ..opts.clone()
    };
    match format.as_str() {
        "raw" => {
            let size = raw::file_size(&file)
                .map_err(|e| format!("cannot size {shown}: {}", io_text(&e)))?;
            let mut cache = read_only.cache;
            cache.direct = false;
            let backend = RawFile::new(file, &path, 0, size, cache, false, false)
                .map_err(|e| format!("cannot open {shown}: {}", io_text(&e)))?;
            Ok((Box::new(backend), size))
        }
        "qcow2" => {
            drop(file);
            let backend = Qcow2::open_at_depth(&path, &read_only, depth + 1)?;
            let size = backend.size;
            Ok((Box::new(backend), size))
        }
        other => Err(format!(
            "{}: backing file {shown} has format '{other}', which is not supported",
            image.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_resolve_against_the_image_directory() {
        assert_eq!(
            resolve(Path::new("/srv/vm/top.qcow2"), "base.qcow2"),
            PathBuf::from("/srv/vm/base.qcow2")
        );
        assert_eq!(
            resolve(Path::new("/srv/vm/top.qcow2"), "../img/base.raw"),
            PathBuf::from("/srv/vm/../img/base.raw")
        );
        assert_eq!(
            resolve(Path::new("/srv/vm/top.qcow2"), "/abs/base"),
            PathBuf::from("/abs/base")
        );
    }
}
