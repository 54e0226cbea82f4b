//! The strict safetensors validator: never panics, and what it accepts is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modeld_core::format::safetensors;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = safetensors::validate(data) {
        assert_eq!(8 + info.header_len + info.data_bytes, data.len() as u64);
    }
});
