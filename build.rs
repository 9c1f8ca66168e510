//! Packs the `tessera` binary's relative relocations (`-z pack-relative-relocs`, DT_RELR) when
//! asked to with `TESSERA_PACK_RELOCS=1`: about 600 KB less for the loader to read and keep
//! resident at every start. Opt-in, because the binary then needs glibc 2.36 or later where it
//! runs (the symbol version `GLIBC_ABI_DT_RELR`), which the build machine cannot know; the
//! Dockerfile and the benchmark scripts ask for it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TESSERA_PACK_RELOCS");
    if std::env::var("TESSERA_PACK_RELOCS").as_deref() != Ok("1") {
        return;
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        println!("cargo:warning=TESSERA_PACK_RELOCS=1 ignored: {target} is not Linux with glibc");
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
