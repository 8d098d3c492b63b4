fn main() {
    // Must come first: the freeze guard is this binary re-executed with `__guard`.
    quiesce::freeze::run_if_requested();
}
