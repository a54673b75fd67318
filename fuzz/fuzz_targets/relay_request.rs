//! Arbitrary request parts through the relay's request parsing: the transfer id in the path,
//! the token (header or query), `Upload-Offset` and `Content-Length`.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use msim_relay::request::{content_length, token, transfer_id, upload_offset};

fuzz_target!(|data: &[u8]| {
    // Parts separated by NUL: path, query, Authorization, Content-Length, Upload-Offset.
    let mut parts = data.split(|&b| b == 0);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = parts.next().map(String::from_utf8_lossy);
    let mut headers = HeaderMap::new();
    for name in ["authorization", "content-length", "upload-offset"] {
        if let Some(Ok(v)) = parts.next().map(HeaderValue::from_bytes) {
            headers.insert(name, v);
        }
    }
    if let Some(Ok(id)) = transfer_id(&path) {
        assert!(!id.is_empty() && id.len() <= 64, "{id:?}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{id:?}");
    }
    if let Some(t) = token(&headers, query.as_deref()) {
        // Always a piece of what was sent.
        let in_header = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains(t));
        assert!(in_header || query.as_deref().is_some_and(|q| q.contains(t)), "{t:?}");
    }
    for (name, parsed) in [
        ("content-length", content_length(&headers).ok().flatten()),
        ("upload-offset", upload_offset(&headers)),
    ] {
        if let Some(n) = parsed {
            let text = headers[name].to_str().expect("parsed, so visible ASCII");
            assert_eq!(text.trim().parse::<u64>().ok(), Some(n));
        }
    }
});
