//! The multi-call entry point: everything lives in the library so that
//! tests and fuzz targets can reach the same code.
fn main() {
    std::process::exit(toolbox::dispatch::main(std::env::args_os().collect()));
}
