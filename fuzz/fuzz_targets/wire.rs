//! The peer wire codec: requests, have-maps, status bodies and blob headers decode
//! without panicking, and decoded requests re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modeld_proto::wire::{self, HaveMap, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(Request::decode(&r.encode()), Ok(r));
    }
    if let Ok(h) = HaveMap::decode(data) {
        // Encoding may coarsen the ranges, never make them undecodable.
        assert!(HaveMap::decode(&h.encode()[1..]).is_ok());
    }
    let _ = wire::decode_error(data);
    let _ = wire::decode_manifest(data);
    if let Some(b) = data.first_chunk::<8>() {
        let _ = wire::decode_blob_size(b);
    }
});
