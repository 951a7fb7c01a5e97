//! The datastore on disk: loaded (and upgraded) at start, written
//! crash-safely under the writers' lock after every change. When /etc
//! cannot be written (a read-only root at early boot), changes go to a copy
//! under /run and are written back once /etc takes them, as ipmgmtd does.

use super::files::{self, FileLock};
use crate::ipmgmtd::datastore::{Datastore, VERSION};
use crate::ipmgmtd::model::Error;
use crate::ipmgmtd::paths::Paths;

const MODE: u32 = 0o644;

pub struct Store {
    paths: Paths,
    /// The newest contents sit in the /run copy, not yet in /etc.
    pending_writeback: bool,
}

/// What a load found worth telling.
pub struct LoadOutcome {
    pub db: Datastore,
    pub notes: Vec<String>,
}

/// Errors that mean "this file system will not take it now" (ENOENT: the
/// directory could not be created on it).
fn is_unwritable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::ENOENT)
    )
}

impl Store {
    pub fn new(paths: &Paths) -> Store {
        Store {
            paths: paths.clone(),
            pending_writeback: false,
        }
    }

    pub fn pending_writeback(&self) -> bool {
        self.pending_writeback
    }

    /// Loads the datastore: the /run copy if one waits to be written back,
    /// else /etc's. Unparsable lines are reported (and kept); an older
    /// version is upgraded on disk.
    pub fn load(&mut self) -> Result<LoadOutcome, String> {
        files::remove_leftover(&self.paths.db);
        files::remove_leftover(&self.paths.volatile_db);
        let mut notes = Vec::new();
        let volatile = files::read_optional(&self.paths.volatile_db)
            .map_err(|e| format!("cannot read {}: {e}", self.paths.volatile_db.display()))?;
        let (source, bytes) = match volatile {
            Some(bytes) => {
                self.pending_writeback = true;
                notes.push(format!(
                    "using {}: its changes have not reached {} yet",
                    self.paths.volatile_db.display(),
                    self.paths.db.display()
                ));
                (&self.paths.volatile_db, Some(bytes))
            }
            None => (
                &self.paths.db,
                files::read_optional(&self.paths.db)
                    .map_err(|e| format!("cannot read {}: {e}", self.paths.db.display()))?,
            ),
        };
        let source = source.clone();
        let Some(bytes) = bytes else {
            return Ok(LoadOutcome {
                db: Datastore::default(),
                notes,
            });
        };
        let loaded = Datastore::parse(&bytes).map_err(|e| format!("{}: {e}", source.display()))?;
        for bad in &loaded.bad_lines {
            notes.push(format!(
                "{} line {}: {}: kept as it is: {}",
                source.display(),
                bad.number,
                bad.reason,
                bad.text
            ));
        }
        if loaded.version < VERSION && !bytes.is_empty() {
            notes.push(format!(
                "{}: upgrading from version {} to {VERSION}",
                source.display(),
                loaded.version
            ));
            if let Some(warning) = self.save(&loaded.store).map_err(|e| e.to_string())? {
                notes.push(warning);
            }
        }
        Ok(LoadOutcome {
            db: loaded.store,
            notes,
        })
    }

    /// Writes the datastore. Returns a warning when it had to go to the
    /// /run copy instead of /etc.
    pub fn save(&mut self, db: &Datastore) -> Result<Option<String>, Error> {
        let _lock = FileLock::acquire(&self.paths.db_lock, true).map_err(|e| Error::io(&e))?;
        let bytes = db.serialize();
        match files::write_atomic(&self.paths.db, &bytes, MODE) {
            Ok(()) => {
                if self.pending_writeback {
                    self.pending_writeback = false;
                    let _ = std::fs::remove_file(&self.paths.volatile_db);
                    tracing::warn!("{} written back", self.paths.db.display());
                }
                Ok(None)
            }
            Err(e) if is_unwritable(&e) => {
                files::write_atomic(&self.paths.volatile_db, &bytes, MODE)
                    .map_err(|e| Error::io(&e))?;
                let first = !self.pending_writeback;
                self.pending_writeback = true;
                let warning = format!(
                    "cannot write {}: {}; changes kept in {} until it can be written",
                    self.paths.db.display(),
                    crate::service::io_text(&e),
                    self.paths.volatile_db.display()
                );
                if first {
                    tracing::warn!("{warning}");
                }
                Ok(Some(warning))
            }
            Err(e) => Err(Error::io(&e)),
        }
    }

    /// Tries to write a pending /run copy back to /etc; true once done.
    pub fn retry_writeback(&mut self, db: &Datastore) -> bool {
        if !self.pending_writeback {
            return true;
        }
        matches!(self.save(db), Ok(None))
    }
}
