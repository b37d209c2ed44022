fn main() -> std::process::ExitCode {
    autonomy::cli::main()
}
