//! Logging set-up: the human-readable tracing log to stderr (for the journal under systemd) and to
//! `<log_dir>/bulwark.log`, and a panic hook that logs every panic with its thread (which names the
//! arbiter) before the supervisor turns it into a restart.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

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

/// The file descriptor of `supervisor.jsonl` (-1: none open), for the binary's last-resort signal
/// handler: a fatal signal (SIGBUS from a memory-mapped file the kernel can no longer write) ends
/// the process where no Rust code can run, and the handler appends one line here (and to stderr)
/// so that the exit is never silent. Written when the journal opens and closes; read by the handler.
static FATAL_NOTE_FD: AtomicI32 = AtomicI32::new(-1);

/// The supervision journal's file is `fd` from now on.
pub fn set_fatal_note_fd(fd: i32) {
    FATAL_NOTE_FD.store(fd, Ordering::SeqCst);
}

/// The supervision journal's file `fd` is closing.
pub fn clear_fatal_note_fd(fd: i32) {
    let _ = FATAL_NOTE_FD.compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst);
}

/// Where the last-resort handler appends its line (-1: nowhere but stderr). Safe to call from a
/// signal handler (one atomic load).
pub fn fatal_note_fd() -> i32 {
    FATAL_NOTE_FD.load(Ordering::SeqCst)
}

/// The exit code of a fatal signal the process cannot survive (as for an escalation: systemd
/// restarts the process).
pub const FATAL_SIGNAL_EXIT_CODE: i32 = 70;

/// Formats the `supervisor.jsonl` line a fatal signal leaves, into `buffer`, without allocating
/// (it runs inside a signal handler): `{"ts":"<RFC 3339>","event":"escalated","actor":"process",
/// "signal":"<signal>","reason":"<reason>","exit_code":70}` and a newline. `signal` and `reason`
/// are fixed texts without quotes or backslashes. Returns the length written (the line is cut
/// short, still ending in a newline, if the buffer is too small).
pub fn format_fatal_note(buffer: &mut [u8], now_ms: i64, signal: &str, reason: &str) -> usize {
    let mut cursor = Cursor { buffer, length: 0 };
    cursor.push(b"{\"ts\":\"");
    push_rfc3339_ms(&mut cursor, now_ms);
    cursor.push(b"\",\"event\":\"escalated\",\"actor\":\"process\",\"signal\":\"");
    cursor.push(signal.as_bytes());
    cursor.push(b"\",\"reason\":\"");
    cursor.push(reason.as_bytes());
    cursor.push(b"\",\"exit_code\":");
    push_number(&mut cursor, i64::from(FATAL_SIGNAL_EXIT_CODE), 1);
    cursor.push(b"}\n");
    if cursor.length == cursor.buffer.len()
        && let Some(last) = cursor.buffer.last_mut()
    {
        *last = b'\n';
    }
    cursor.length
}

struct Cursor<'a> {
    buffer: &'a mut [u8],
    length: usize,
}

impl Cursor<'_> {
    fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.length < self.buffer.len() {
                self.buffer[self.length] = byte;
                self.length += 1;
            }
        }
    }
}

/// `value` in decimal, at least `width` digits (zero-padded); non-negative values only.
fn push_number(cursor: &mut Cursor<'_>, value: i64, width: usize) {
    let mut digits = [0_u8; 20];
    let mut count = 0;
    let mut rest = value.max(0);
    while rest > 0 || count < width.max(1) {
        digits[count] = b'0' + (rest % 10) as u8;
        rest /= 10;
        count += 1;
    }
    for index in (0..count).rev() {
        cursor.push(&[digits[index]]);
    }
}

/// `2026-12-02T06:47:57.722Z` from epoch milliseconds (the proleptic Gregorian calendar, days to
/// a civil date by the well-known era arithmetic), without allocating.
fn push_rfc3339_ms(cursor: &mut Cursor<'_>, epoch_ms: i64) {
    let (days, ms_of_day) = (epoch_ms.div_euclid(86_400_000), epoch_ms.rem_euclid(86_400_000));
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    push_number(cursor, year, 4);
    cursor.push(b"-");
    push_number(cursor, month, 2);
    cursor.push(b"-");
    push_number(cursor, day, 2);
    cursor.push(b"T");
    push_number(cursor, ms_of_day / 3_600_000, 2);
    cursor.push(b":");
    push_number(cursor, ms_of_day / 60_000 % 60, 2);
    cursor.push(b":");
    push_number(cursor, ms_of_day / 1_000 % 60, 2);
    cursor.push(b".");
    push_number(cursor, ms_of_day % 1_000, 3);
    cursor.push(b"Z");
}

#[cfg(test)]
mod fatal_note_tests {
    use super::*;

    #[test]
    fn the_fatal_note_is_a_journal_line_with_the_time_the_signal_and_the_reason() {
        let mut buffer = [0_u8; 512];
        for ms in [0_i64, 951_782_400_000, 1_764_657_677_722, 4_102_444_799_999, 1_709_164_800_123] {
            let length = format_fatal_note(&mut buffer, ms, "SIGBUS", "a mapped file became unwritable");
            let line = std::str::from_utf8(&buffer[..length]).unwrap();
            assert!(line.ends_with('\n'), "{line}");
            let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(value["ts"], crate::clock::rfc3339_ms(ms), "{line}");
            assert_eq!(value["signal"], "SIGBUS");
            assert_eq!(value["event"], "escalated");
            assert_eq!(value["exit_code"], 70);
            assert_eq!(value["reason"], "a mapped file became unwritable");
        }
        // Too small a buffer: cut short, still one line.
        let mut small = [0_u8; 16];
        let length = format_fatal_note(&mut small, 0, "SIGBUS", "x");
        assert_eq!((length, small[15]), (16, b'\n'));
    }
}
