//! Which server is which. Every `bulwark run` has an instance id, written with its database path
//! (and its URL) to `<data_dir>/bulwark.instance` and answered on `/health`. The command line
//! (`status`, `why`, `report`) trusts a server's answer only when it serves the database the
//! command was pointed at, and the instance recorded for it: a port taken by another bulwark (or a
//! stale URL) must never make one server's users look like another's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file beside the database that names the server running on it.
pub const INSTANCE_FILE: &str = "bulwark.instance";

/// One running server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceIdentity {
    /// Random, new at every start.
    pub id: String,
    /// The database it serves, as an absolute path.
    pub database: String,
    /// Where its HTTP API answers (`None`: the API is off).
    pub url: Option<String>,
    pub pid: u32,
}

impl InstanceIdentity {
    /// A new identity for a server on `database`.
    pub fn new(database: &Path, url: Option<String>) -> Self {
        use rand::Rng as _;
        let id = format!("{:016x}", rand::rng().random::<u64>());
        Self { id, database: absolute_database(database), url, pid: std::process::id() }
    }
}

/// `database` as an absolute path with its directory resolved (the file itself may not exist
/// yet), so that two spellings of one database compare equal.
pub fn absolute_database(database: &Path) -> String {
    let directory = database.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let resolved = std::fs::canonicalize(directory).unwrap_or_else(|_| {
        std::env::current_dir().map(|cwd| cwd.join(directory)).unwrap_or_else(|_| directory.to_path_buf())
    });
    let name = database.file_name().map(PathBuf::from).unwrap_or_default();
    resolved.join(name).display().to_string()
}

/// Writes the identity to `<data_dir>/bulwark.instance` (whole or not at all: a temporary file
/// renamed over it).
pub fn write(data_dir: &Path, identity: &InstanceIdentity) -> std::io::Result<()> {
    let path = data_dir.join(INSTANCE_FILE);
    let temporary = data_dir.join(format!("{INSTANCE_FILE}.tmp"));
    let text = serde_json::to_string(identity).map_err(std::io::Error::other)? + "\n";
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &path)
}

/// The identity recorded in `data_dir`, if one is (and readable).
pub fn read(data_dir: &Path) -> Option<InstanceIdentity> {
    let text = std::fs::read_to_string(data_dir.join(INSTANCE_FILE)).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// Removes the record at shutdown (only if it is still this server's).
pub fn remove(data_dir: &Path, identity: &InstanceIdentity) {
    if read(data_dir).is_some_and(|recorded| recorded.id == identity.id) {
        let _ = std::fs::remove_file(data_dir.join(INSTANCE_FILE));
    }
}

/// Whether a server that says it is `answered` may answer for `database`, given what is recorded
/// beside that database: the same database, and, when an instance is recorded for it, that
/// instance. `Err` says why not.
pub fn judge(
    answered: Option<&InstanceIdentity>,
    database: &Path,
    recorded: Option<&InstanceIdentity>,
) -> Result<(), String> {
    let wanted = absolute_database(database);
    let Some(answered) = answered else {
        return Err("it does not say which database it serves".to_owned());
    };
    if answered.database != wanted {
        return Err(format!("it serves another database ({}), not {wanted}", answered.database));
    }
    match recorded.filter(|recorded| recorded.database == wanted) {
        Some(recorded) if recorded.id != answered.id => Err(format!(
            "it is instance {}, but {} names instance {} (pid {}) for this database",
            answered.id, INSTANCE_FILE, recorded.id, recorded.pid
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_trusted_only_from_the_instance_of_this_database() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("a/bulwark.db");
        let theirs = dir.path().join("b/bulwark.db");
        std::fs::create_dir_all(ours.parent().unwrap()).unwrap();
        std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
        let server = InstanceIdentity::new(&ours, Some("http://127.0.0.1:1".into()));
        let other = InstanceIdentity::new(&theirs, Some("http://127.0.0.1:1".into()));
        assert_eq!(judge(Some(&server), &ours, Some(&server)), Ok(()));
        // Another spelling of the same path is the same database.
        let spelled = dir.path().join("a/../a/bulwark.db");
        assert_eq!(judge(Some(&server), &spelled, None), Ok(()));
        let foreign = judge(Some(&other), &ours, Some(&server)).unwrap_err();
        assert!(foreign.contains("another database"), "{foreign}");
        // The same database, but not the instance recorded for it (a stale server).
        let stale = InstanceIdentity { id: "0".into(), ..server.clone() };
        assert!(judge(Some(&stale), &ours, Some(&server)).unwrap_err().contains("names instance"));
        assert!(judge(None, &ours, None).is_err());

        write(ours.parent().unwrap(), &server).unwrap();
        assert_eq!(read(ours.parent().unwrap()), Some(server.clone()));
        remove(ours.parent().unwrap(), &other);
        assert!(read(ours.parent().unwrap()).is_some(), "another instance's removal leaves it");
        remove(ours.parent().unwrap(), &server);
        assert!(read(ours.parent().unwrap()).is_none());
    }
}
