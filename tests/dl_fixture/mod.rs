//! Test helper: builds tests/fixtures/dlopen_fixture.c into shared
//! libraries of different sizes (with `cc`, or `$CC`) and runs code in them
//! between `dlopen` and `dlclose`.

#![allow(dead_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Padding sizes: a small copy maps a few pages where a big copy kept its
/// unwind tables megabytes in.
pub const SIZES: [(&str, u32); 3] = [("big", 2 << 20), ("small", 16), ("medium", 256 << 10)];

pub fn build_fixtures(dir: &Path) -> Vec<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dlopen_fixture.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    SIZES
        .iter()
        .map(|(name, pad)| {
            let out = dir.join(format!("libfixture_{name}.so"));
            let status = Command::new(&cc)
                .args(["-shared", "-fPIC", "-O2"])
                .arg(format!("-DPAD_BYTES={pad}"))
                .arg("-o")
                .arg(&out)
                .arg(&source)
                .status()
                .unwrap_or_else(|e| panic!("this test needs a C compiler ({cc}): {e}"));
            assert!(status.success(), "{cc} failed on {}", source.display());
            out
        })
        .collect()
}

/// Loads `path`, burns `nanos` of CPU in it, unloads it.
pub fn load_run_unload(path: &Path, nanos: u64) {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; the fixture has no constructors.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {} failed", path.display());
    // SAFETY: the symbol is the fixture's `unsigned long long (unsigned long long)`.
    let spin = unsafe { libc::dlsym(handle, c"fixture_spin".as_ptr()) };
    assert!(!spin.is_null());
    let spin: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(spin) };
    std::hint::black_box(spin(nanos));
    // SAFETY: nothing from the library is used after this.
    assert_eq!(unsafe { libc::dlclose(handle) }, 0);
}
