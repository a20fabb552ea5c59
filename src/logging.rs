//! Logging set-up: the human-readable tracing log to stderr (for the journal under systemd) and to
//! `<log_dir>/bulwark.log`, and a panic hook that logs every panic with its thread (which names the
//! arbiter) before the supervisor turns it into a restart.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Keeps the file writer's background thread alive; dropping it flushes the log.
#[derive(Debug)]
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// Installs the subscriber. `RUST_LOG` overrides the default level (`info`). With a `log_dir`, the
/// log also goes to `<log_dir>/bulwark.log`; a log file that cannot be created is an error.
pub fn init(log_dir: Option<&Path>) -> Result<LogGuard, String> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let mut guard = None;
    let file = match log_dir {
        Some(dir) => Some(
            tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::NEVER)
                .filename_prefix("bulwark.log")
                .build(dir)
                .map_err(|error| format!("cannot open {}: {error}", dir.join("bulwark.log").display()))?,
        ),
        None => None,
    };
    let result = match file {
        Some(file) => {
            // Lossy: a full buffer drops log lines rather than stall an actor (the buffer is bounded).
            let (file, file_guard) = tracing_appender::non_blocking(file);
            guard = Some(file_guard);
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr.and(file))
                .with_ansi(false)
                .try_init()
        }
        None => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    if result.is_err() {
        // Already installed (tests); keep the existing subscriber.
    }
    install_panic_hook();
    Ok(LogGuard { _file: guard })
}

/// Logs panics through tracing with the thread name; the supervisor records the restart.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-text panic payload".to_owned());
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(target: "panic", thread, location, "panic: {message}");
    }));
}

/// Appends `text` (whole lines) to a JSON-lines file, first moving the file to `<name>.1` (over an
/// older one) when the append would take it past `bytes_max`: bounded on disk, and a reader never
/// sees half a line.
pub fn append_rotating(path: &Path, text: &str, bytes_max: u64) -> std::io::Result<()> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > 0 && size + text.len() as u64 > bytes_max {
        let mut rotated: PathBuf = path.to_owned().into_os_string().into();
        rotated.as_mut_os_string().push(".1");
        std::fs::rename(path, rotated)?;
    }
    OpenOptions::new().create(true).append(true).open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_past_its_bound_is_moved_aside_once_and_lines_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.jsonl");
        for i in 0..10 {
            append_rotating(&path, &format!("{{\"n\":{i}}}\n"), 24).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(dir.path().join("monitor.jsonl.1")).unwrap();
        assert_eq!(current, "{\"n\":9}\n");
        assert_eq!(previous, "{\"n\":6}\n{\"n\":7}\n{\"n\":8}\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
