//! The typed packets' remaining checks.

use super::*;

#[test]
fn groups() {
    assert!(is_valid_group("Work/Mobile"));
    assert!(!is_valid_group("Work/"));
    assert!(!is_valid_group("/Work"));
    assert!(!is_valid_group("a//b"));
    assert!(!is_valid_group(""));
}

/// Presence consent, last-seen visibility and blocking (PROTOCOL.md §7.1–§7.4): exact wire lines.
#[test]
fn privacy_packets_have_these_wire_lines() {
    let requests: Vec<(Request, &str)> = vec![
        (
            PresenceApprove { id: "bob".into() }.into(),
            "PRESENCE-APPROVE id=bob\n",
        ),
        (
            PresenceDeny { id: "bob".into() }.into(),
            "PRESENCE-DENY id=bob\n",
        ),
        (
            Block {
                id: "mallory".into(),
            }
            .into(),
            "BLOCK id=mallory\n",
        ),
        (
            Unblock {
                id: "mallory".into(),
            }
            .into(),
            "UNBLOCK id=mallory\n",
        ),
        (
            PrivacySet {
                last_seen: LastSeenVisibility::Nobody,
            }
            .into(),
            "PRIVACY-SET last-seen=nobody\n",
        ),
        (PrivacyGet {}.into(), "PRIVACY-GET\n"),
    ];
    for (r, wire) in requests {
        assert_eq!(r.to_packet().to_wire(), wire);
        round_trip_request(r);
    }
    let events: Vec<(Event, &str)> = vec![
        (
            PresenceRequest {
                from: "bob@localhost".into(),
            }
            .into(),
            "PRESENCE-REQUEST from=bob@localhost\n",
        ),
        (
            PresenceApproveOk {
                id: "bob@localhost".into(),
            }
            .into(),
            "PRESENCE-APPROVE-OK id=bob@localhost\n",
        ),
        (
            PresenceDenyOk {
                id: "bob@localhost".into(),
            }
            .into(),
            "PRESENCE-DENY-OK id=bob@localhost\n",
        ),
        (
            PresenceAnswerFailed {
                id: "bob@localhost".into(),
                reason: PresenceFailure::NotFound,
            }
            .into(),
            "PRESENCE-ANSWER-FAILED id=bob@localhost reason=not-found\n",
        ),
        (
            BlockOk {
                id: "mallory@localhost".into(),
            }
            .into(),
            "BLOCK-OK id=mallory@localhost\n",
        ),
        (
            BlockFailed {
                id: "x".into(),
                reason: BlockFailure::TooManyBlocks,
            }
            .into(),
            "BLOCK-FAILED id=x reason=too-many-blocks\n",
        ),
        (
            UnblockOk {
                id: "mallory@localhost".into(),
            }
            .into(),
            "UNBLOCK-OK id=mallory@localhost\n",
        ),
        (
            UnblockFailed {
                id: "x@localhost".into(),
                reason: BlockFailure::NotFound,
            }
            .into(),
            "UNBLOCK-FAILED id=x@localhost reason=not-found\n",
        ),
        (
            PrivacySetOk {
                last_seen: LastSeenVisibility::Everyone,
            }
            .into(),
            "PRIVACY-SET-OK last-seen=everyone\n",
        ),
        (
            PrivacyFailed {
                reason: PresenceFailure::StorageError,
            }
            .into(),
            "PRIVACY-FAILED reason=storage-error\n",
        ),
        (
            PrivacySettings {
                last_seen: LastSeenVisibility::Contacts,
                blocked: vec!["a@localhost".into(), "b@localhost".into()],
            }
            .into(),
            "PRIVACY last-seen=contacts\n[\nid=a@localhost\nid=b@localhost\n]\n",
        ),
        (
            ContactUpdated {
                updates: vec![ContactUpdate {
                    presence: Some(Presence::Hidden),
                    ..ContactUpdate::new("carol@localhost")
                }],
            }
            .into(),
            "CONTACT-UPDATED\n[\nid=carol@localhost presence=\n]\n",
        ),
        (
            FileRejected {
                transfer_id: "t1".into(),
                reason: FileRejection::OfferQuotaExceeded,
            }
            .into(),
            "SEND-FILE-PROXY-REJECTED transfer-id=t1 reason=offer-quota-exceeded\n",
        ),
    ];
    for (e, wire) in events {
        assert_eq!(e.to_packet().to_wire(), wire);
        round_trip_event(e);
    }
}
