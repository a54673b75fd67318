//! Arbitrary text through every small parser: addresses, timestamps, percent decoding,
//! filenames and groups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msim_shared::{percent, proto, timestamp, Address};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = percent::decode(data) {
        assert_eq!(
            percent::decode(percent::encode_to_string(&value).as_bytes()).as_deref(),
            Ok(value.as_str())
        );
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(address) = Address::parse(text) {
        let _ = address.canonical("localhost");
    }
    if let Some(at) = timestamp::parse(text) {
        let _ = timestamp::format(at);
    }
    if let Some(name) = proto::sanitize_filename(text) {
        assert!(!name.contains(['/', '\\']) && !name.chars().any(char::is_control));
    }
    let _ = proto::is_valid_group(text);
});
