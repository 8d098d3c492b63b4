//! The `quiesce` binary: everything lives in the library; see `quiesce --help`.
fn main() {
    std::process::exit(quiesce::cli::main());
}
