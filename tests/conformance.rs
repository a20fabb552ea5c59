//! `bulwark sim` against a real, widely used third-party Binance client: ccxt's `binanceusdm`
//! (PyPI, pinned in tests/conformance/requirements.txt) driven by tests/conformance/binance_ccxt.py
//! through its ordinary calls, changed in nothing but its base URL (and the documented client
//! options the script names). The simulator runs in real time, as a user would run it: ccxt signs
//! with the local clock.
//!
//! scripts/test.sh installs ccxt into `<cargo target dir>/conformance-venv`; without it this test
//! fails and says so (it never skips).

mod sim_process;

use std::path::{Path, PathBuf};
use std::process::Command;

use sim_process::{Sim, key, secret, sim_config};

/// One 5-minute candle per 5 minutes of wall time: the market runs in real time.
const REAL_TIME_CANDLE_INTERVAL_MS: u64 = 300_000;

/// `<cargo target dir>/conformance-venv`, where scripts/test.sh installs ccxt
/// (`${CARGO_TARGET_DIR:-target}/conformance-venv`). Cargo gives integration tests
/// `<target dir>/tmp` as CARGO_TARGET_TMPDIR.
fn venv() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("Invariant: CARGO_TARGET_TMPDIR is inside the target dir")
        .join("conformance-venv")
}

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("conformance")
}

/// The venv's Python, with the ccxt version the requirements pin: a clear failure otherwise.
fn python_with_pinned_ccxt() -> PathBuf {
    let venv = venv();
    let python = venv.join("bin").join("python");
    let requirements = std::fs::read_to_string(conformance_dir().join("requirements.txt")).unwrap();
    let pinned = requirements
        .lines()
        .find_map(|line| line.trim().strip_prefix("ccxt=="))
        .expect("tests/conformance/requirements.txt pins ccxt==VERSION")
        .trim()
        .to_owned();
    assert!(
        python.exists(),
        "no Python venv at {}: run scripts/test.sh, which creates it and installs ccxt {pinned} \
         (tests/conformance/requirements.txt)",
        venv.display()
    );
    let found = Command::new(&python).args(["-c", "import ccxt; print(ccxt.__version__)"]).output().unwrap();
    let version = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    assert!(
        found.status.success() && version == pinned,
        "the venv at {} has ccxt {version:?} where tests/conformance/requirements.txt pins {pinned}: run \
         scripts/test.sh, which installs it{}",
        venv.display(),
        String::from_utf8_lossy(&found.stderr)
    );
    python
}

#[test]
fn ccxt_binanceusdm_works_against_the_simulator_in_real_time() {
    let python = python_with_pinned_ccxt();
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&sim_config(dir.path(), 1, REAL_TIME_CANDLE_INTERVAL_MS, ""), 15);
    let output = Command::new(&python)
        .arg(conformance_dir().join("binance_ccxt.py"))
        .env("SIM_URL", &sim.url)
        .env("SIM_API_KEY", key("u1"))
        .env("SIM_API_SECRET", secret("u1"))
        .output()
        .expect("the venv's Python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        println!("stderr:\n{stderr}");
    }
    let failed = stdout.lines().filter(|line| line.starts_with("FAIL ")).count();
    assert!(
        output.status.success(),
        "ccxt against bulwark sim: {}, {failed} checks failed (the FAIL lines above, from \
         tests/conformance/binance_ccxt.py; CONFORMANCE_TRACE=1 shows every request)",
        output.status
    );
}
