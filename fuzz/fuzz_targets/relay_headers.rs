//! Arbitrary text through the relay's header and option parsers: `Range` and sizes.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use msim_relay::range::{parse_range, RangeReq};

fuzz_target!(|data: &[u8]| {
    let Some((&size_byte, rest)) = data.split_first() else {
        return;
    };
    // Sizes around the interesting edges: 0, small, and near u64::MAX.
    let size = match size_byte % 4 {
        0 => 0,
        1 => u64::from(size_byte),
        2 => 1 << 30,
        _ => u64::MAX - u64::from(size_byte),
    };
    if let Ok(value) = HeaderValue::from_bytes(rest) {
        if let RangeReq::Part(first, last) = parse_range(Some(&value), size) {
            assert!(first <= last && last < size, "{first}-{last} of {size}");
        }
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = msim_relay::size::parse_size(text);
    }
});
