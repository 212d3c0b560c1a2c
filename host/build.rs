//! Puts libtorch's directory into the binary's rpath, so `gaussedge` runs
//! without LD_LIBRARY_PATH (torch-sys links libtorch but sets no rpath).
//! With the `cuda` feature, keeps libtorch_cuda linked: nothing references
//! it directly, so `--as-needed` would drop it and CUDA would not register.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_some() {
        if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        }
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
