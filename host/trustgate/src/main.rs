//! The `trustgate` binary: the command line of [`trustgate::cli`].

fn main() -> std::process::ExitCode {
    trustgate::cli::main()
}
