//! libtorch's folder in the rpath of the test binaries and programs (see
//! host/build.rs: torch-sys sets none).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
