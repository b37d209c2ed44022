//! The `autonomy` command: everything is in the library; this only picks the allocator and
//! hands over to the CLI.

/// mimalloc: the gate allocates many small, short-lived objects per request (JSON values,
/// policy inputs, records), where glibc's malloc spent about a tenth of the daemon's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    autonomy::cli::main()
}
