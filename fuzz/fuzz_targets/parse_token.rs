//! Arbitrary text as a relay capability token: verification must refuse it cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msim_shared::token::{Capability, Keyring, TokenKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keyring = Keyring::new(vec![TokenKey {
        id: "k1".into(),
        secret: vec![7u8; 32],
    }]);
    let _ = keyring.verify(text, 0);
    let _ = Capability::parse_payload(text);
    let _ = Keyring::from_secret_text(text);
});
