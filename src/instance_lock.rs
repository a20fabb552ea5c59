//! One server per database. Two `bulwark run` processes trading the same users would place every
//! order twice, so `run` takes an exclusive lock on `<database>.lock` before it opens anything and
//! holds it until the process ends (the operating system releases it even after `kill -9`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another bulwark server is already running on {database} (lock {lock} held{holder}); \
         two servers on one database would duplicate every order, so this one will not start"
    )]
    Held { database: String, lock: String, holder: String },
    #[error("cannot create the lock file {lock}: {source}")]
    Io {
        lock: String,
        #[source]
        source: std::io::Error,
    },
}

/// Extra attempts (and the pause between them) before a busy lock counts as held.
const ACQUIRE_RETRIES: u32 = 5;
const ACQUIRE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Held for the life of the server; dropping it releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    path: PathBuf,
    /// The locked file; the lock lives as long as this handle.
    _file: File,
}

impl InstanceLock {
    pub fn lock_path(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the lock for `database`, or says who holds it.
    pub fn acquire(database: &Path) -> Result<Self, LockError> {
        let path = Self::lock_path(database);
        let io = |source| LockError::Io { lock: path.display().to_string(), source };
        let mut file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        // `bulwark status` takes the lock for an instant to see whether a server holds it, so a
        // lock that is busy is tried again briefly before it counts as held.
        let mut locked = file.try_lock().is_ok();
        for _ in 0..ACQUIRE_RETRIES {
            if locked {
                break;
            }
            std::thread::sleep(ACQUIRE_RETRY_DELAY);
            locked = file.try_lock().is_ok();
        }
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held {
                database: database.display().to_string(),
                lock: path.display().to_string(),
                holder: if holder.is_empty() { String::new() } else { format!(" by {holder}") },
            });
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "pid {}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { path, _file: file })
    }

    /// Whether some process holds the lock right now (for `bulwark status`). Takes the lock for an
    /// instant when it is free; `acquire` retries briefly, so this never keeps a server from starting.
    pub fn is_held(database: &Path) -> bool {
        let path = Self::lock_path(database);
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file.try_lock().is_err(),
            Err(_) => false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_database_is_refused_until_the_first_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("bulwark.db");
        let first = InstanceLock::acquire(&database).unwrap();
        assert!(InstanceLock::is_held(&database));
        let error = InstanceLock::acquire(&database).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("already running"), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        drop(first);
        assert!(!InstanceLock::is_held(&database));
        assert!(InstanceLock::acquire(&database).is_ok());
    }

    #[test]
    fn different_databases_do_not_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let _a = InstanceLock::acquire(&dir.path().join("a.db")).unwrap();
        assert!(InstanceLock::acquire(&dir.path().join("b.db")).is_ok());
    }
}
