//! The key cache against a peer that wants to make us query DNS, to slip in a replaced key,
//! to flush the cache, or to win with an extra record. TTLs here are long (an hour): what is
//! shown does not depend on entries expiring during the test.

use super::attacks::{now, published_key, Raw};
use super::dns::TestDns;
use super::Fed;
use hickory_proto::rr::RecordType;
use msim_chat::federation::dns::{Dns, KeyAnswer, KeyCacheBounds};
use msim_chat::federation::handshake::{self, Role};
use msim_chat::federation::keys::{self, ServerKey};
use msim_shared::Packet;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

fn long_ttls(c: &mut msim_chat::Config) {
    let d = &mut c.federation.dns;
    d.min_ttl = HOUR;
    d.negative_ttl = HOUR;
    d.refetch_interval = HOUR;
}

/// Logs in to `b` as `domain` naming key id `kid` but signing with `signer`.
async fn login_as(b: &Fed, domain: &str, kid: &str, signer: &ServerKey) -> Packet {
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    let s = raw
        .hello(domain, "b.test", &handshake::nonce())
        .await
        .unwrap();
    let at = msim_shared::timestamp::format(
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now()) * 1000).unwrap(),
    );
    let sig = signer.sign(&handshake::transcript(&s, Role::Dialer, kid, &at));
    use base64::Engine;
    raw.send(
        Packet::new("S2S-AUTH")
            .with("kid", kid)
            .with("at", at)
            .with("sig", base64::engine::general_purpose::STANDARD.encode(sig)),
    )
    .await;
    raw.next().await.expect("an answer to S2S-AUTH")
}

/// Failing signatures under a cached key, and an unknown key id, do not make B ask DNS once
/// per handshake (the old code refetched on every failure and never believed a cached "no
/// key": a peer could make B query DNS at will).
#[tokio::test]
async fn failing_handshakes_do_not_make_us_query_dns_at_will() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", long_ttls).await;
    let dir = tempfile::tempdir().unwrap();
    let key = published_key(&dns, dir.path(), "c.test");
    let wrong = keys::generate(dir.path(), "c.test").unwrap();
    let name = keys::key_name(&key.kid, "c.test");
    assert_eq!(
        login_as(&b, "c.test", &key.kid, &key).await.verb,
        "S2S-AUTH"
    );
    assert_eq!(dns.asked(&name, RecordType::TXT), 1);
    for _ in 0..10 {
        let p = login_as(&b, "c.test", &key.kid, &wrong).await;
        assert_eq!(p.get("reason"), Some("bad-signature"));
    }
    assert_eq!(dns.asked(&name, RecordType::TXT), 1, "refetched on demand");
    let unknown = keys::key_name("nosuchkey", "c.test");
    for _ in 0..10 {
        let p = login_as(&b, "c.test", "nosuchkey", &wrong).await;
        assert_eq!(p.get("reason"), Some("unknown-key"));
    }
    assert_eq!(
        dns.asked(&unknown, RecordType::TXT),
        1,
        "negative cache ignored"
    );
    assert_eq!(
        login_as(&b, "c.test", &key.kid, &key).await.verb,
        "S2S-AUTH"
    );
}

/// A different key published under a key id already seen is refused and logged: key ids are
/// never reused (Synapse accepted a key replaced under the same id). The original key keeps
/// working. (The servers of these tests cache for 1 ms: the refusal does not depend on TTLs.)
#[tokio::test]
async fn a_key_replaced_under_its_id_is_refused() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let key = published_key(&dns, dir.path(), "c.test");
    let attacker = keys::generate(dir.path(), "c.test").unwrap();
    assert_eq!(
        login_as(&b, "c.test", &key.kid, &key).await.verb,
        "S2S-AUTH"
    );
    // Whoever can write c.test's DNS replaces the key under the same id.
    dns.set_txt(
        &keys::key_name(&key.kid, "c.test"),
        &keys::txt_value(attacker.public()),
    );
    let p = login_as(&b, "c.test", &key.kid, &attacker).await;
    assert_eq!(
        (p.verb.as_str(), p.get("reason")),
        ("S2S-FAILED", Some("bad-signature"))
    );
    assert_eq!(
        login_as(&b, "c.test", &key.kid, &key).await.verb,
        "S2S-AUTH"
    );
    // A new key under a new id is how keys change: accepted.
    let rotated = published_key(&dns, dir.path(), "c.test");
    assert_eq!(
        login_as(&b, "c.test", &rotated.kid, &rotated).await.verb,
        "S2S-AUTH"
    );
}

/// Two different keys under one key id are ambiguous: refused, whichever comes last (the old
/// code believed the last one, so an added record won).
#[tokio::test]
async fn an_ambiguous_key_record_set_is_refused() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let key = keys::generate(dir.path(), "c.test").unwrap();
    let attacker = keys::generate(dir.path(), "c.test").unwrap();
    let name = keys::key_name(&key.kid, "c.test");
    dns.set_txts(
        &name,
        &[
            keys::txt_value(key.public()),
            keys::txt_value(attacker.public()),
        ],
    );
    let p = login_as(&b, "c.test", &key.kid, &attacker).await;
    assert_eq!(p.get("reason"), Some("unknown-key"), "{p:?}");
    // Once the record set is one key again, its owner gets in.
    dns.set_txt(&name, &keys::txt_value(key.public()));
    assert_eq!(
        login_as(&b, "c.test", &key.kid, &key).await.verb,
        "S2S-AUTH"
    );
}

/// A flood of key ids (each "no key") from one claimed domain does not empty the cache: a
/// known peer's key is still answered from it, without a DNS query (the old code cleared the
/// whole cache when it held 10,000 entries).
#[tokio::test]
async fn a_flood_of_key_ids_does_not_empty_the_cache() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = published_key(&dns, dir.path(), "c.test");
    let resolver = Dns::new(
        Some(dns.addr),
        KeyCacheBounds {
            min_ttl: HOUR,
            negative_ttl: HOUR,
            refetch_interval: HOUR,
            ..Default::default()
        },
    )
    .unwrap();
    let good = resolver.key("c.test", &key.kid, false).await.unwrap();
    assert_eq!(good, KeyAnswer::Key(key.public().to_vec()));
    let name = keys::key_name(&key.kid, "c.test");
    assert_eq!(dns.asked(&name, RecordType::TXT), 1);
    let kids: Vec<String> = (0..10_050).map(|i| format!("flood{i}")).collect();
    for chunk in kids.chunks(100) {
        let lookups = chunk.iter().map(|k| resolver.key("evil.test", k, false));
        for answer in futures::future::join_all(lookups).await {
            assert_eq!(answer.unwrap(), KeyAnswer::NoKey);
        }
    }
    assert_eq!(resolver.key("c.test", &key.kid, false).await.unwrap(), good);
    assert_eq!(
        dns.asked(&name, RecordType::TXT),
        1,
        "the flood evicted c.test's key"
    );
}
