//! The `quiesce` binary: everything lives in the library; see `quiesce --help`.
fn main() {
    // Must come first: the freeze guard is this binary re-executed with `__guard`
    // (quiesce::freeze::guard); it must not parse a command line or set up logging.
    quiesce::freeze::run_if_requested();
    std::process::exit(quiesce::cli::main());
}
