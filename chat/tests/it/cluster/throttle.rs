//! Login throttling an attacker cannot dodge by spreading guesses over nodes.

use super::*;
use std::net::{IpAddr, Ipv4Addr};

/// A wrong guess on node 0 slows the next guess on node 1 (before the fix each node counted
/// its own failures only, so alternating nodes doubled the guesses). The account's owner, at
/// an address it logged in from before, is not slowed on either node.
#[tokio::test]
async fn guesses_spread_over_two_nodes_are_counted_together() {
    let Some(url) = database("throttle").await else {
        return;
    };
    let n = nodes(&url, 2, &[]).await;
    let owner: IpAddr = Ipv4Addr::new(127, 0, 0, 1).into();
    let attacker: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    // bob registers and logs in from his address (it becomes known).
    drop(n[0].user("bob").await);
    let mut guess = Client::connect_from(n[0].addr, attacker).await;
    guess
        .expect_login("bob", "wrong-guess", None, "CONNECT-FAILED reason=invalid")
        .await;
    // At once on the other node: throttled, the password is not even checked.
    let mut guess = Client::connect_from(n[1].addr, attacker).await;
    let l = guess
        .expect_login("bob", PASSWORD, None, "CONNECT-FAILED reason=throttled")
        .await;
    assert!(field(&l, "retry-after").is_some(), "{l}");
    // And back on the first one too.
    let mut guess = Client::connect_from(n[0].addr, attacker).await;
    guess
        .expect_login("bob", PASSWORD, None, "CONNECT-FAILED reason=throttled")
        .await;
    // bob himself, from his known address, on either node.
    for node in &n {
        let mut c = Client::connect_from(node.addr, owner).await;
        c.login("bob", PASSWORD).await;
    }
}
