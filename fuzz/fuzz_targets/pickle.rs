//! The pickle scanner on arbitrary streams: never panics, stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modeld_core::format::pickle::{self, MAX_GLOBALS, Verdict};

fuzz_target!(|data: &[u8]| {
    if let Verdict::Pickle(scan) = pickle::scan_reader(data, "fuzz") {
        assert!(scan.globals.len() <= MAX_GLOBALS);
        if scan.globals.iter().any(|g| !g.allowed) {
            assert!(scan.unsafe_globals());
        }
    }
});
