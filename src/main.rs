//! The `tessera` binary: everything lives in the library.

/// The allocator: mimalloc, whose thread-local free lists take the many short-lived allocations of
/// request handling off glibc's slower paths (README, "Operations", "Memory allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
