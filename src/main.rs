//! The `bulwark` binary: everything is in the library (see `cli`), but for the one thing a library
//! cannot do safely: a last-resort handler for SIGBUS.
//!
//! SQLite writes to its shared-memory file through a memory mapping. When the kernel can no longer
//! write that file (made immutable, or its filesystem remounted read-only after an I/O error) such
//! a write is SIGBUS, which kills the process with no log line. The persistence actor asks the
//! kernel before it touches SQLite and stays away while the file cannot be written
//! (`persistence::shared_memory_writable`), so the process lives on with its records in the
//! outbox; this handler is for what that check cannot see in time (the file failing in the middle
//! of a transaction, another mapped file). It writes why to stderr and to `supervisor.jsonl` and
//! exits 70, as an escalation does, so that systemd restarts the process: never a silent signal.
//! The library itself keeps `#![forbid(unsafe_code)]`.

fn main() -> std::process::ExitCode {
    fatal_signal::install();
    bulwark::cli::main()
}

mod fatal_signal {
    /// What the handler says (fixed text: a signal handler may not allocate).
    const REASON: &str = "SIGBUS: a memory-mapped file could not be written (the database's shared-memory file on a read-only or failing filesystem, or a file truncated under the process); exiting 70 so that the service restarts";

    /// Installs the handler for SIGBUS (the process's first action).
    pub fn install() {
        // SAFETY: `sigaction` with a zeroed struct, an empty mask and a handler that only calls
        // async-signal-safe functions (clock_gettime, write, _exit) and reads one atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                eprintln!("bulwark: warning: the SIGBUS handler could not be installed");
            }
        }
    }

    extern "C" fn on_fatal_signal(_signal: libc::c_int, _info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
        let mut line = [0_u8; 512];
        // SAFETY: only async-signal-safe calls, on buffers that live on this stack frame.
        unsafe {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
            let now_ms = now.tv_sec * 1_000 + now.tv_nsec / 1_000_000;
            let length = bulwark::logging::format_fatal_note(&mut line, now_ms, "SIGBUS", REASON);
            let prefix = b"bulwark: fatal: ";
            libc::write(2, prefix.as_ptr().cast(), prefix.len());
            libc::write(2, line.as_ptr().cast(), length);
            let journal = bulwark::logging::fatal_note_fd();
            if journal >= 0 {
                libc::write(journal, line.as_ptr().cast(), length);
            }
            libc::_exit(bulwark::logging::FATAL_SIGNAL_EXIT_CODE);
        }
    }
}
