//! The `vitgpu` command-line program.

fn main() {
    std::process::exit(vitgpu::cli::main());
}
