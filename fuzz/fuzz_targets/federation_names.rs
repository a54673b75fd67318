//! What a peer's DNS and a remote address hand the server: key records (TXT values the peer's
//! owner writes) and domain names. Neither parser may panic, and their results keep the
//! invariants the federation code relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msim_chat::federation::domain::{canonical_domain, registrable, MAX_DOMAIN};
use msim_chat::federation::keys::{parse_txt, KeyRecord};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(KeyRecord::Key(key)) = parse_txt(text) {
        assert_eq!(key.len(), 32);
    }
    if let Some(domain) = canonical_domain(text) {
        assert!(domain.len() <= MAX_DOMAIN && !domain.ends_with('.'), "{domain:?}");
        assert!(!domain.bytes().any(|b| b.is_ascii_uppercase() || b == b':'));
        // Canonical means a fixed point: applying it again changes nothing.
        assert_eq!(canonical_domain(&domain).as_deref(), Some(domain.as_str()));
        let group = registrable(&domain);
        assert!(domain.ends_with(group.as_str()), "{domain:?} -> {group:?}");
    }
});
