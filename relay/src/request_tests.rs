use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

#[test]
fn transfer_ids_in_paths() {
    assert_eq!(transfer_id("/v1/transfers/abc-1"), Some(Ok("abc-1")));
    assert_eq!(transfer_id("/healthz"), None);
    assert_eq!(transfer_id("/v1/transfers"), None);
    for bad in ["", "..", "a/b", "a%2Fb", "a.b", &"x".repeat(65)] {
        assert_eq!(
            transfer_id(&format!("/v1/transfers/{bad}")),
            Some(Err(InvalidTransferId)),
            "{bad:?}"
        );
    }
}

#[test]
fn tokens_from_header_or_query() {
    let none = HeaderMap::new();
    assert_eq!(
        token(&headers(&[("authorization", "Bearer t.k")]), None),
        Some("t.k")
    );
    assert_eq!(
        token(&headers(&[("authorization", "bEaReR  t.k ")]), None),
        Some("t.k")
    );
    assert_eq!(token(&none, Some("a=1&token=q.t&b=2")), Some("q.t"));
    assert_eq!(token(&none, Some("a=1")), None);
    assert_eq!(token(&none, None), None);
    // A present Authorization header of another kind wins over the query.
    let basic = headers(&[("authorization", "Basic eA==")]);
    assert_eq!(token(&basic, Some("token=q")), None);
    assert_eq!(
        token(&headers(&[("authorization", "Bearer")]), Some("token=q")),
        None
    );
}

#[test]
fn offsets_and_lengths() {
    assert_eq!(
        upload_offset(&headers(&[("upload-offset", " 42 ")])),
        Some(42)
    );
    assert_eq!(upload_offset(&headers(&[("upload-offset", "-1")])), None);
    assert_eq!(upload_offset(&HeaderMap::new()), None);
    assert_eq!(content_length(&HeaderMap::new()), Ok(None));
    assert_eq!(
        content_length(&headers(&[("content-length", "7")])),
        Ok(Some(7))
    );
    assert_eq!(
        content_length(&headers(&[("content-length", "7x")])),
        Err(BadContentLength)
    );
    assert_eq!(
        content_length(&headers(&[("content-length", "18446744073709551616")])),
        Err(BadContentLength)
    );
}

proptest! {
    #[test]
    fn a_transfer_path_is_accepted_exactly_when_its_id_is_valid(id in ".{0,80}") {
        let path = format!("{TRANSFERS_PATH}{id}");
        let got = transfer_id(&path);
        if msim_shared::token::valid_transfer_id(&id) {
            prop_assert_eq!(got, Some(Ok(id.as_str())));
        } else {
            prop_assert_eq!(got, Some(Err(InvalidTransferId)));
        }
    }

    #[test]
    fn an_accepted_id_is_safe_in_a_file_name(path in "/v1/transfers/[ -~]{0,70}") {
        if let Some(Ok(id)) = transfer_id(&path) {
            prop_assert!(!id.is_empty() && id.len() <= 64);
            prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
    }

    #[test]
    fn numbers_round_trip(n in any::<u64>(), pad in " {0,2}") {
        let text = format!("{pad}{n}{pad}");
        let h = headers(&[("upload-offset", &text), ("content-length", &text)]);
        prop_assert_eq!(upload_offset(&h), Some(n));
        prop_assert_eq!(content_length(&h), Ok(Some(n)));
    }

    #[test]
    fn arbitrary_header_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, v.clone());
            h.insert(CONTENT_LENGTH, v.clone());
            h.insert("upload-offset", v);
            let _ = token(&h, Some("token=x"));
            let parsed = content_length(&h);
            // Whatever is accepted is exactly the number the text spells.
            if let Ok(Some(n)) = parsed {
                let text = String::from_utf8_lossy(&value);
                prop_assert_eq!(text.trim().parse::<u64>().ok(), Some(n));
            }
            prop_assert_eq!(upload_offset(&h), parsed.ok().flatten());
        }
    }

    #[test]
    fn a_bearer_token_is_found_whatever_the_query(tok in "[A-Za-z0-9._~-]{1,40}", q in "[a-z=&]{0,20}") {
        let h = headers(&[("authorization", &format!("Bearer {tok}"))]);
        prop_assert_eq!(token(&h, Some(&q)), Some(tok.as_str()));
    }
}
