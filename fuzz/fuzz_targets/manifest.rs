//! Manifest bodies and DSSE envelopes: parse without panicking, and anything accepted
//! is canonical (re-encodes to the very same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modeld_core::{Envelope, Manifest, SignedManifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_bytes(data) {
        assert_eq!(m.to_bytes(), data, "accepted a non-canonical manifest");
    }
    if let Ok(e) = Envelope::from_bytes(data) {
        let _ = e.manifest_id();
    }
    let _ = SignedManifest::open(data);
});
