//! The `trustgate` command line, as a binary of the test package (see `Cargo.toml`).

fn main() -> std::process::ExitCode {
    trustgate::cli::main()
}
