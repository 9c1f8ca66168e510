//! Link-time layout of the `tessera` binary: start-up code packed together (always, where the
//! linker allows) and packed relative relocations (opt-in with `TESSERA_PACK_RELOCS=1`).
//!
//! **Start-up code first.** Linux maps code in 64 KiB windows around each page the process
//! touches, so start-up calls scattered over the 16 MiB of code kept about 10 MiB of it resident
//! in an idle server, although about 2 MiB of it ran. `build/startup.ld` names the functions that
//! start-up and an idle server run (`scripts/startup-layout` regenerates it from runs under
//! Valgrind); it is a linker script that puts them in one section ahead of the rest of the code.
//! Its names carry no hashes, so a dependency bump does not invalidate it, and a function it no
//! longer matches only costs memory, never correctness. Only for release builds for
//! `x86_64-unknown-linux-gnu`, whose default linker in rustup's toolchains (LLD, since Rust 1.90)
//! takes it; skipped, with a warning, when a linker or link flags are configured, and with
//! `TESSERA_STARTUP_LAYOUT=0`.
//!
//! **Packed relocations** (`-z pack-relative-relocs`, DT_RELR): about 600 KB less for the loader
//! to read and keep resident at every start. Opt-in, because the binary then needs glibc 2.36 or
//! later where it runs (the symbol version `GLIBC_ABI_DT_RELR`), which the build machine cannot
//! know; the Dockerfile and the benchmark scripts ask for it.

use std::env::var;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/startup.ld");
    println!("cargo:rerun-if-env-changed=TESSERA_PACK_RELOCS");
    println!("cargo:rerun-if-env-changed=TESSERA_STARTUP_LAYOUT");
    let target = var("TARGET").unwrap_or_default();
    startup_layout(&target);
    if var("TESSERA_PACK_RELOCS").as_deref() != Ok("1") {
        return;
    }
    if !target.ends_with("-linux-gnu") {
        println!("cargo:warning=TESSERA_PACK_RELOCS=1 ignored: {target} is not Linux with glibc");
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}

/// Passes `build/startup.ld` to the linker where it is known to be LLD.
fn startup_layout(target: &str) {
    if var("TESSERA_STARTUP_LAYOUT").as_deref() == Ok("0")
        || var("PROFILE").as_deref() != Ok("release")
        || target != "x86_64-unknown-linux-gnu"
    {
        return;
    }
    // Cargo sets RUSTC_LINKER when a linker is configured for the target; rustflags may pick one too.
    let linker_flag = var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| flags.contains("link"));
    if var("RUSTC_LINKER").is_ok() || linker_flag {
        println!(
            "cargo:warning=start-up code layout skipped: a linker or link flags are configured (TESSERA_STARTUP_LAYOUT=0 silences this)"
        );
        return;
    }
    let script = std::path::Path::new(&var("CARGO_MANIFEST_DIR").unwrap()).join("build/startup.ld");
    if !script.exists() {
        println!("cargo:warning=start-up code layout skipped: {} is missing", script.display());
        return;
    }
    // The linker reads a copy in OUT_DIR, not the checkout's own file: another checkout of the
    // same sources built into this target directory (a worktree built for a comparison) shares
    // this script's output, and a path into that checkout fails every later link once it is gone.
    let copy = std::path::Path::new(&var("OUT_DIR").unwrap()).join("startup.ld");
    if let Err(error) = std::fs::copy(&script, &copy) {
        println!("cargo:warning=start-up code layout skipped: cannot copy {}: {error}", script.display());
        return;
    }
    // Two arguments, so that a comma in the path cannot split it.
    println!("cargo:rustc-link-arg-bins=-Xlinker");
    println!("cargo:rustc-link-arg-bins=--script={}", copy.display());
}
