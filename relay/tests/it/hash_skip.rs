//! `Msim-Sha256: skip` on an upload request (PROTOCOL.md §11.3): the relay does not hash a
//! transfer whose token declares no SHA-256 (its answers then carry no `Msim-Sha256`), still
//! checks a declared one, and hashes every upload that does not ask (old clients unchanged).
//! A resumed upload continues the hash its last request left instead of reading the stored
//! bytes back (attack 5: each empty `PATCH` made the relay hash the whole prefix).

use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use msim_shared::token::Direction;

use crate::http_support::{body_bytes, body_text, data, empty, full, header, hex, Relay};

const WAIT: Duration = Duration::from_secs(30);
const SKIP: (&str, &str) = ("msim-sha256", "skip");

/// `PUT` (offset `None`) or `PATCH` at `offset` of `body`, with `Msim-Sha256: skip` if `skip`.
async fn upload(
    relay: &Relay,
    id: &str,
    token: &str,
    offset: Option<u64>,
    body: &[u8],
    skip: bool,
) -> http::Response<Incoming> {
    let mut headers = Vec::new();
    if skip {
        headers.push((SKIP.0, SKIP.1.to_owned()));
    }
    let method = match offset {
        None => Method::PUT,
        Some(at) => {
            headers.push(("upload-offset", at.to_string()));
            Method::PATCH
        }
    };
    let path = format!("/v1/transfers/{id}");
    let req = relay.send(method, &path, Some(token), &headers, full(body.to_vec()));
    tokio::time::timeout(WAIT, req)
        .await
        .expect("upload answer")
}

/// An empty `PATCH` at `offset` (hyper sends no `Content-Length` for an empty body).
async fn empty_patch(relay: &Relay, id: &str, token: &str, offset: u64, skip: bool) {
    let mut headers = vec![
        ("upload-offset", offset.to_string()),
        ("content-length", "0".to_owned()),
    ];
    if skip {
        headers.push((SKIP.0, SKIP.1.to_owned()));
    }
    let path = format!("/v1/transfers/{id}");
    let req = relay.send(Method::PATCH, &path, Some(token), &headers, empty());
    let r = tokio::time::timeout(WAIT, req).await.expect("answer");
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "{}", body_text(r).await);
}

/// The relay's count of stored bytes read back to hash resumed uploads.
async fn rehashed(relay: &Relay) -> u64 {
    let r = relay
        .send(Method::GET, "/metrics", None, &[], empty())
        .await;
    let text = body_text(r).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("msim_relay_rehashed_bytes_total "))
        .unwrap_or_else(|| panic!("no rehashed bytes in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn head(relay: &Relay, id: &str, token: &str) -> http::Response<Incoming> {
    let path = format!("/v1/transfers/{id}");
    let req = relay.send(Method::HEAD, &path, Some(token), &[], empty());
    tokio::time::timeout(WAIT, req).await.expect("head answer")
}

async fn download(relay: &Relay, id: &str, size: usize) -> (Option<String>, Vec<u8>) {
    let down = relay.token(id, Direction::Download, size as u64, None);
    let r = tokio::time::timeout(WAIT, relay.get(id, &down, &[]))
        .await
        .expect("download head");
    assert_eq!(r.status(), StatusCode::OK);
    let sha = header(&r, "msim-sha256");
    let body = tokio::time::timeout(WAIT, body_bytes(r))
        .await
        .expect("download body");
    (sha, body)
}

#[tokio::test]
async fn an_upload_asking_to_skip_the_hash_is_stored_whole_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    // Large enough for the pipelined path, sent as a PATCH from 0 and a resuming PATCH.
    let body = data(3 << 20);
    let size = body.len();
    let up = relay.token("big", Direction::Upload, size as u64, None);
    let half = size / 2;
    let first = upload(&relay, "big", &up, Some(0), &body[..half], true).await;
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    let r = upload(&relay, "big", &up, Some(half as u64), &body[half..], true).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "msim-sha256"), None);
    assert_eq!(
        body_text(r).await,
        format!("{{\"transfer_id\":\"big\",\"size\":{size},\"sha256\":null}}\n")
    );
    let h = head(&relay, "big", &up).await;
    assert_eq!(header(&h, "msim-upload-complete").as_deref(), Some("true"));
    assert_eq!(header(&h, "msim-sha256"), None);
    assert_eq!(download(&relay, "big", size).await, (None, body));

    // A small file in one PUT (stored in one step).
    let pic = data(1000);
    let up = relay.token("pic", Direction::Upload, pic.len() as u64, None);
    let r = upload(&relay, "pic", &up, None, &pic, true).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "msim-sha256"), None);
    assert_eq!(download(&relay, "pic", pic.len()).await, (None, pic));
    relay.stop().await;
}

#[tokio::test]
async fn an_upload_that_does_not_ask_is_hashed_whole_also_after_a_skipped_start() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let body = data(1 << 20);
    let size = body.len();
    // An old client: a plain PUT gets the relay's SHA-256.
    let up = relay.token("old", Direction::Upload, size as u64, None);
    let r = upload(&relay, "old", &up, None, &body, false).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "msim-sha256"), Some(hex(&body)));
    assert_eq!(
        download(&relay, "old", size).await,
        (Some(hex(&body)), body.clone())
    );

    // Started without the hash, completed by a request that wants it: the hash covers every
    // byte, also those stored unhashed.
    let up = relay.token("mixed", Direction::Upload, size as u64, None);
    let third = size / 3;
    let r = upload(&relay, "mixed", &up, Some(0), &body[..third], true).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = upload(
        &relay,
        "mixed",
        &up,
        Some(third as u64),
        &body[third..],
        false,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "msim-sha256"), Some(hex(&body)));
    relay.stop().await;
}

#[tokio::test]
async fn a_declared_sha256_is_checked_even_when_the_upload_asks_to_skip() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let declared = data(1 << 20);
    let mut sent = declared.clone();
    sent[12345] ^= 1;
    let size = declared.len() as u64;
    let up = relay.token("d", Direction::Upload, size, Some(&declared));
    let r = upload(&relay, "d", &up, None, &sent, true).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The declared bytes themselves pass, and the answer names the (checked) SHA-256.
    let up = relay.token("e", Direction::Upload, size, Some(&declared));
    let r = upload(&relay, "e", &up, None, &declared, true).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "msim-sha256"), Some(hex(&declared)));
    relay.stop().await;
}

#[tokio::test]
async fn a_resumed_upload_continues_its_hash_instead_of_reading_the_stored_bytes_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |c| {
        c.metrics = msim_relay::MetricsAccess::MainPort;
    })
    .await;
    let body = data(3 << 20);
    let size = body.len() as u64;
    let up = relay.token("r", Direction::Upload, size, None);
    let half = body.len() / 2;
    let r = upload(&relay, "r", &up, Some(0), &body[..half], false).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // An attacker's empty requests, hashed or not, and a small skipping one in between:
    // each used to read the whole stored prefix back.
    for skip in [false, true, false] {
        empty_patch(&relay, "r", &up, half as u64, skip).await;
    }
    let r = upload(
        &relay,
        "r",
        &up,
        Some(half as u64),
        &body[half..half + 1],
        true,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    empty_patch(&relay, "r", &up, half as u64 + 1, false).await;
    assert_eq!(rehashed(&relay).await, 0, "stored bytes were read back");
    let r = upload(
        &relay,
        "r",
        &up,
        Some(half as u64 + 1),
        &body[half + 1..],
        false,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "msim-sha256"), Some(hex(&body)));
    assert_eq!(rehashed(&relay).await, 0);

    // Started without the hash: the first request that wants it reads the prefix back once;
    // later ones continue its hash. A skipping request that completes the file answers
    // without a SHA-256, also when it carried a hash on.
    let up = relay.token("s", Direction::Upload, size, None);
    let third = body.len() / 3;
    let r = upload(&relay, "s", &up, Some(0), &body[..third], true).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for _ in 0..3 {
        empty_patch(&relay, "s", &up, third as u64, false).await;
    }
    assert_eq!(rehashed(&relay).await, third as u64);
    let r = upload(&relay, "s", &up, Some(third as u64), &body[third..], true).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "msim-sha256"), None);
    assert_eq!(download(&relay, "s", body.len()).await, (None, body));
    relay.stop().await;
}
