//! Recovery finishing a rename lost after the index commit (only after data loss despite the
//! fsync) checks the `.part` against the stored SHA-256: a whole file is served, an altered
//! one is removed, never served as complete.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use msim_shared::token::Direction;
use support::{utf8, Relay};

/// `blobs/<shard>/<id>.<ext>` under `dir`.
fn blob_file(dir: &Path, id: &str, ext: &str) -> PathBuf {
    for shard in std::fs::read_dir(dir.join("blobs")).unwrap() {
        let p = shard.unwrap().path().join(format!("{id}.{ext}"));
        if p.exists() {
            return p;
        }
    }
    panic!("no {id}.{ext}");
}

#[tokio::test]
async fn a_lost_rename_is_finished_only_for_a_file_that_matches_its_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let short_wait =
        |c: &mut msim_relay::RelayConfig| c.wait_for_upload = Duration::from_millis(200);
    let relay = Relay::start(dir.path(), false, short_wait).await;
    let intact: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let altered = intact.clone();
    for (id, data) in [("intact", &intact), ("altered", &altered)] {
        let up = relay.token(id, Direction::Upload, data.len() as u64);
        let (status, body) = relay
            .request("PUT", &format!("/v1/transfers/{id}"), Some(&up), data)
            .await;
        assert_eq!(status, 201, "{}", utf8(&body));
    }
    relay.stop().await;
    // Both renames lost; one file also lost a byte's worth of data.
    for id in ["intact", "altered"] {
        let blob = blob_file(dir.path(), id, "blob");
        std::fs::rename(&blob, blob.with_extension("part")).unwrap();
    }
    let part = blob_file(dir.path(), "altered", "part");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&part, &bytes).unwrap();

    let relay = Relay::start(dir.path(), false, short_wait).await;
    let get = |id: &str| {
        let down = relay.token(id, Direction::Download, intact.len() as u64);
        let path = format!("/v1/transfers/{id}");
        let relay = &relay;
        async move { relay.request("GET", &path, Some(&down), b"").await }
    };
    let (status, body) = get("intact").await;
    assert_eq!(status, 200);
    assert!(body == intact, "the whole file is served");
    let (status, body) = get("altered").await;
    assert_eq!(
        status,
        404,
        "the altered file is not served: {}",
        utf8(&body[..body.len().min(200)])
    );
    assert!(!part.exists(), "and removed");
    relay.stop().await;
}
