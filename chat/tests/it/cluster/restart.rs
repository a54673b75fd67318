//! PostgreSQL restarted under load: the nodes reconnect; clients see errors or delays, but
//! every message answered `MESSAGE-SENT` arrives once, and none answered with a failure does.

use super::*;
use msim_testkit::postgres::PgCluster;

/// Longest a send may wait for its answer while the database is away (the writer waits for a
/// connection, and asks whether a lost COMMIT took effect).
const ANSWER_WAIT: Duration = Duration::from_secs(150);

#[tokio::test]
async fn the_database_restarted_under_load_loses_and_duplicates_nothing() {
    let started = tokio::task::spawn_blocking(|| PgCluster::start("cluster::restart"))
        .await
        .unwrap()
        .unwrap();
    let Some(pg) = started else {
        return;
    };
    let pg = std::sync::Arc::new(std::sync::Mutex::new(pg));
    let url = {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.lock().unwrap().create_database())
            .await
            .unwrap()
            .unwrap()
    };
    let mut n = nodes(&url, 2, &[]).await;
    let mut alice = n[0].user("alice").await;
    drop(n[0].user("bob").await);
    let mut bob = n[1].session("bob").await;

    // alice sends runs of 20 until told to stop; every answer is recorded.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (progress_tx, mut progress) = mpsc::unbounded_channel::<usize>();
    let sender = tokio::spawn(async move {
        let (mut sent, mut failed) = (Vec::new(), 0usize);
        let mut run = 0;
        let mut stopping = false;
        // After the stop: a few more runs, which must all succeed again.
        let mut after_stop = 0;
        while after_stop < 5 {
            let mut batch = String::new();
            for k in 0..20 {
                batch.push_str(&format!("MESSAGE to=bob text=r{run}-{k}\n"));
            }
            alice.send_raw(batch.as_bytes()).await;
            let mut answers = 0;
            let mut run_failed = 0;
            while answers < 20 {
                let l = alice.try_line_within(ANSWER_WAIT).await.expect("connected");
                if l.starts_with("MESSAGE-SENT ") {
                    sent.push(field(&l, "id").unwrap());
                    answers += 1;
                } else if l.starts_with("MESSAGE-SEND-FAILED ") {
                    assert_eq!(field(&l, "reason").as_deref(), Some("storage-error"), "{l}");
                    run_failed += 1;
                    answers += 1;
                }
            }
            failed += run_failed;
            run += 1;
            let _ = progress_tx.send(sent.len());
            if !stopping && stop_rx.try_recv().is_ok() {
                stopping = true;
            }
            if stopping {
                assert_eq!(run_failed, 0, "the database is back: every send succeeds");
                after_stop += 1;
            }
        }
        (alice, sent, failed)
    });
    // Under load: restart once some messages went through.
    while progress.recv().await.expect("sender running") < 100 {}
    let connects: Vec<usize> = n.iter_mut().map(|node| node.count_log(LISTENING)).collect();
    {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.lock().unwrap().restart())
            .await
            .unwrap()
            .unwrap();
    }
    // Both nodes' listeners reconnect (after the restart: the sender keeps going meanwhile).
    for (node, before) in n.iter_mut().zip(connects) {
        node.wait_log_nth(LISTENING, before + 1).await;
    }
    // Some sends after the restart went through before stopping.
    let at_restart = progress.recv().await.expect("sender running");
    loop {
        if progress.recv().await.expect("sender running") > at_restart + 40 {
            break;
        }
    }
    stop_tx.send(()).unwrap();
    let (mut alice, sent, failed) = sender.await.unwrap();
    eprintln!(
        "sent {} messages, {failed} answered with a failure",
        sent.len()
    );
    send_all(&mut alice, "bob", &["end-0".into()]).await;
    let got = messages_until(&mut bob, &sent, "end-0").await;
    exactly_once("bob", &got, &sent);
    // And at a new login, nothing stored beyond what was answered sent (bob has not
    // acknowledged anything: his backlog is everything stored for him).
    let mut again = n[1].session("bob").await;
    let backlog = messages_until(&mut again, &sent, "end-0").await;
    exactly_once("bob's backlog", &backlog, &sent);
}
