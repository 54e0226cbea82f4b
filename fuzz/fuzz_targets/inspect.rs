//! Whole-file inspection (format detection, zip archives, .npy headers, and the
//! policy check): never panics on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modeld_core::format;

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = format::inspect(data) {
        assert_eq!(i.size, data.len() as u64);
        if i.format.is_pickle() {
            assert!(i.check(false).is_err());
        }
        let _ = i.check(true);
    }
});
