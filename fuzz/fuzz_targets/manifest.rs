//! Any bytes as a bundle's `manifest.json`: parsed and checked the way a
//! device checks a staged manifest, refused with an error, never a panic or
//! an allocation sized by a field.
#![no_main]

use gaussedge_bundle::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = m.check();
    }
});
