//! The `bulwark` binary: everything is in the library; see `cli`.

fn main() -> std::process::ExitCode {
    bulwark::cli::main()
}
