//! The reader's catch-up when a page of items takes longer to read than a statement may.

use super::*;

/// [`TestFeed`] on a slow database: each item read costs 1 ms on the server, so a full page
/// (1000) takes longer than the reader's statement limit (300 ms in these tests).
struct SlowFeed(TestFeed);

impl Feed for SlowFeed {
    fn heads(&self) -> BoxFuture<'_, Result<Positions, sqlx::Error>> {
        self.0.heads()
    }

    fn after(
        &self,
        after: Positions,
        _want: [bool; crate::hub::STREAMS],
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<FeedItem>, sqlx::Error>> {
        Box::pin(async move {
            let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
                "SELECT seq, origin, login, packet FROM \
                 (SELECT *, pg_sleep(0.001) FROM test_items WHERE seq > $1 \
                  ORDER BY seq LIMIT $2) AS slow ORDER BY seq",
            )
            .bind(after.0[0])
            .bind(limit as i64)
            .fetch_all(&self.0 .0)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(seq, origin, login, packet)| FeedItem {
                    stream: Stream::Messages,
                    seq,
                    origin,
                    login,
                    bytes: Bytes::from(packet),
                })
                .collect())
        })
    }
}

/// 600 items committed on another node while this node's reader can read at most ~250 within
/// its statement limit: it gets them all, once each. With a fixed page of 1000 every read ran
/// out of time and the reader never moved.
#[tokio::test]
async fn a_page_too_slow_to_read_is_read_in_smaller_pages() {
    let Some(url) = msim_testkit::postgres::database("cluster slow catch-up") else {
        return;
    };
    let a = notified_node(&url, "a").await;
    let pool = pool(&url).await;
    let hub = Arc::new(Hub::default());
    let feed = Arc::new(SlowFeed(TestFeed(pool.clone())));
    let (cluster, events) = Cluster::start(pool.clone(), hub.clone(), feed, fast(), "b")
        .await
        .expect("join");
    let b = Node {
        pool,
        hub,
        cluster,
        events,
    };
    assert!(fast().statement() <= Duration::from_millis(300));
    let mut on_b = b.session("bob").await;
    for chunk in 0..6 {
        a.commit("bob", &texts(&format!("m{chunk}-"), 100)).await;
    }
    let got = collect(&mut on_b, 600).await;
    assert_exactly_once(&got, 600).await;
    let seqs: Vec<i64> = got.iter().map(|i| i.seq.unwrap().1).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_quiet(&mut on_b).await;
}
