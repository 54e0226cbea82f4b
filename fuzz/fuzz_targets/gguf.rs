//! The strict GGUF validator: never panics, and accepted data lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modeld_core::format::gguf;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = gguf::validate(data) {
        assert!(info.data_offset <= data.len() as u64);
        assert!(info.alignment.is_power_of_two());
    }
});
