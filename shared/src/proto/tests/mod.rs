use super::*;
use crate::packet::Packet;
use crate::timestamp;

fn at() -> time::OffsetDateTime {
    timestamp::parse("2018-09-09T11:22:31.5Z").unwrap()
}

/// Encodes, decodes through the codec, and returns the packet read back.
fn through_the_wire(packet: Packet) -> Packet {
    let wire = packet.to_wire();
    let mut codec = crate::PacketCodec::default();
    let mut buf = bytes::BytesMut::from(wire.as_bytes());
    tokio_util::codec::Decoder::decode(&mut codec, &mut buf)
        .unwrap()
        .unwrap()
        .unwrap()
}

fn round_trip_request(r: Request) {
    let packet = through_the_wire(r.to_packet());
    assert_eq!(Request::from_packet(&packet).unwrap(), r, "{packet}");
}

fn round_trip_event(e: Event) {
    let packet = through_the_wire(e.to_packet());
    assert_eq!(Event::from_packet(&packet).unwrap(), e, "{packet}");
}

#[test]
fn every_request_round_trips() {
    let requests: Vec<Request> = vec![
        Register {
            login: "vasya".into(),
            password: "p a s s%".into(),
        }
        .into(),
        Connect {
            login: "vasya".into(),
            device: None,
        }
        .into(),
        Connect {
            login: "vasya".into(),
            device: Some("00ff.1.ab".into()),
        }
        .into(),
        ConnectContinue { hash: "ab".into() }.into(),
        SendMessage {
            to: "bob@x".into(),
            text: "Hello\nworld".into(),
        }
        .into(),
        MarkRead { id: "1".into() }.into(),
        AckMessage { id: "1".into() }.into(),
        TypingStart { to: "bob".into() }.into(),
        TypingStop { to: "bob".into() }.into(),
        ContactsGet.into(),
        ContactsAdd {
            id: "bob".into(),
            name: Some("Bob".into()),
            group: Some("Work/Mobile".into()),
        }
        .into(),
        ContactsChange {
            id: "bob".into(),
            name: None,
            group: Some(String::new()),
        }
        .into(),
        ContactsDelete { id: "bob".into() }.into(),
        ProfileUpdate {
            name: Some("Super user".into()),
            note: None,
        }
        .into(),
        ProfileGet { id: None }.into(),
        OfferFile {
            to: "bob".into(),
            filename: "cat 1.jpg".into(),
            size: 128000,
            sha256: Some("00".into()),
            mime: None,
        }
        .into(),
        AcceptFile {
            transfer_id: "t".into(),
        }
        .into(),
        RejectFile {
            transfer_id: "t".into(),
        }
        .into(),
        FileHash {
            transfer_id: "t".into(),
            sha256: "ab".repeat(32),
        }
        .into(),
        FileDone {
            transfer_id: "t".into(),
        }
        .into(),
        Ping.into(),
        Pong.into(),
    ];
    for r in requests {
        round_trip_request(r);
    }
}

#[test]
fn every_event_round_trips() {
    let events: Vec<Event> = vec![
        RegisterOk {
            login: "vasya@x".into(),
        }
        .into(),
        RegisterFailed {
            reason: RegisterFailure::LoginTaken,
        }
        .into(),
        ConnectAck {
            salt: "abc-1".into(),
        }
        .into(),
        ConnectOk {
            login: "vasya@x".into(),
            domain: "x".into(),
            federation: false,
            max_line: 65536,
            max_text: 16384,
            max_file_size: 1 << 27,
            server: "msim-chat/0.1".into(),
            device: Some("00ff.1.ab".into()),
        }
        .into(),
        ConnectFailed {
            reason: ConnectFailure::Throttled,
            retry_after: Some(4),
        }
        .into(),
        MessageSent {
            id: "1".into(),
            at: at(),
        }
        .into(),
        MessageSendFailed {
            id: "1".into(),
            reason: SendFailure::TextTooLong,
        }
        .into(),
        Message {
            id: "1".into(),
            from: "a@x".into(),
            to: "b@x".into(),
            at: at(),
            text: "Привет, мир %".into(),
        }
        .into(),
        ReadReceipt {
            id: "1".into(),
            by: "b@x".into(),
            at: at(),
        }
        .into(),
        MarkReadFailed {
            id: "1".into(),
            reason: ReadFailure::UnknownMessage,
        }
        .into(),
        TypingStarted { from: "a@x".into() }.into(),
        TypingEnded { from: "a@x".into() }.into(),
        UpdateLastSeen {
            id: "a@x".into(),
            at: at(),
        }
        .into(),
        ContactsList {
            contacts: vec![
                Contact {
                    id: "m1kc@klfd.com".into(),
                    name: "m1kc".into(),
                    group: None,
                    note: Some("Something optional".into()),
                    presence: Some(Presence::LastSeen(at())),
                },
                Contact {
                    id: "solkin@klfd.com".into(),
                    name: "Igor".into(),
                    group: Some("Work/Mobile".into()),
                    note: None,
                    presence: Some(Presence::Online),
                },
            ],
        }
        .into(),
        ContactsList { contacts: vec![] }.into(),
        ContactUpdated {
            updates: vec![
                ContactUpdate {
                    presence: Some(Presence::Online),
                    ..ContactUpdate::new("a@x")
                },
                ContactUpdate {
                    deleted: true,
                    ..ContactUpdate::new("b@x")
                },
                ContactUpdate {
                    group: Some(String::new()),
                    note: Some("Vacationing".into()),
                    ..ContactUpdate::new("c@x")
                },
            ],
        }
        .into(),
        ContactsAddOk { id: "a@x".into() }.into(),
        ContactsAddFailed {
            id: "a@x".into(),
            reason: ContactFailure::UnknownUser,
        }
        .into(),
        ContactsChangeOk { id: "a@x".into() }.into(),
        ContactsChangeFailed {
            id: "a@x".into(),
            reason: ContactFailure::NotFound,
        }
        .into(),
        ContactsDeleteOk { id: "a@x".into() }.into(),
        ContactsDeleteFailed {
            id: "a@x".into(),
            reason: ContactFailure::NotFound,
        }
        .into(),
        ProfileUpdateOk {}.into(),
        ProfileUpdateFailed {
            reason: ProfileFailure::NoteTooLong,
        }
        .into(),
        Profile {
            id: "a@x".into(),
            name: "A".into(),
            note: "".into(),
            presence: None,
        }
        .into(),
        Profile {
            id: "a@x".into(),
            name: "A".into(),
            note: "busy".into(),
            presence: Some(Presence::LastSeen(at())),
        }
        .into(),
        Profile {
            id: "a@x".into(),
            name: "".into(),
            note: "".into(),
            presence: Some(Presence::Online),
        }
        .into(),
        FilePending {
            transfer_id: "t".into(),
            to: "b@x".into(),
            expires: at(),
        }
        .into(),
        FileOffered {
            transfer_id: "t".into(),
            from: "a@x".into(),
            filename: "cat.jpg".into(),
            size: 1,
            expires: at(),
            sha256: None,
            mime: Some("image/jpeg".into()),
        }
        .into(),
        FileAnswerFailed {
            transfer_id: "t".into(),
            reason: AnswerFailure::AlreadyAnswered,
        }
        .into(),
        UploadGrant {
            transfer_id: "t".into(),
            connect: "127.0.0.1".into(),
            port: 3215,
            url: "http://127.0.0.1:3215/v1/transfers/t".into(),
            token: "v1.k.p.m".into(),
            expires: at(),
        }
        .into(),
        DownloadGrant {
            transfer_id: "t".into(),
            from: "a@x".into(),
            filename: "cat.jpg".into(),
            size: 9,
            connect: "h".into(),
            port: 1,
            url: "u".into(),
            token: "k".into(),
            expires: at(),
            sha256: None,
            mime: None,
        }
        .into(),
        FileRejected {
            transfer_id: "t".into(),
            reason: FileRejection::Expired,
        }
        .into(),
        FileHash {
            transfer_id: "t".into(),
            sha256: "ab".repeat(32),
        }
        .into(),
        FileHashOk {
            transfer_id: "t".into(),
        }
        .into(),
        FileHashFailed {
            transfer_id: "t".into(),
            reason: HashFailure::NotSender,
        }
        .into(),
        FileDoneOk {
            transfer_id: "t".into(),
        }
        .into(),
        FileDoneFailed {
            transfer_id: "t".into(),
            reason: DoneFailure::StorageError,
        }
        .into(),
        ErrorMalformed {
            reason: "bad-escape".into(),
            detail: Some("x".into()),
        }
        .into(),
        ErrorLineTooLong { max: 65536 }.into(),
        ErrorNotLoggedIn {
            verb: "MESSAGE".into(),
        }
        .into(),
        ErrorBadState {
            verb: "CONNECT-CONTINUE".into(),
        }
        .into(),
        ErrorNotImplemented {
            verb: "SEND-FILE".into(),
        }
        .into(),
        ErrorRateLimited {
            verb: "MESSAGE".into(),
            retry_after: 1,
        }
        .into(),
        ContactsGetFailed {
            reason: ContactsGetFailure::StorageError,
        }
        .into(),
        ProfileGetFailed {
            id: "bob@x".into(),
            reason: ProfileGetFailure::UnknownUser,
        }
        .into(),
        MarkReadFailed {
            id: "m1".into(),
            reason: ReadFailure::StorageError,
        }
        .into(),
        FileAnswerFailed {
            transfer_id: "t1".into(),
            reason: AnswerFailure::StorageError,
        }
        .into(),
        Ping.into(),
        Pong.into(),
    ];
    for e in events {
        round_trip_event(e);
    }
}

#[test]
fn the_seed_examples_decode() {
    let p =
        Packet::parse_line(b"MESSAGE to=m1kc@whatever.com text=HJDJKFDSJKsjfjoifuwhiufe").unwrap();
    assert!(
        matches!(Request::from_packet(&p).unwrap(), Request::SendMessage(m) if m.to == "m1kc@whatever.com")
    );
    let p = Packet::parse_line(b"UPDATE-LAST-SEEN id=Vasya at=2018-09-09T14:22:31+0300").unwrap();
    assert!(matches!(Event::from_packet(&p).unwrap(), Event::UpdateLastSeen(u) if u.id == "Vasya"));
    let p = Packet::parse_line(b"ERROR-NOT-IMPLEMENTED type=SEND-FILE").unwrap();
    assert_eq!(
        Event::from_packet(&p).unwrap(),
        Event::ErrorNotImplemented(ErrorNotImplemented {
            verb: "SEND-FILE".into()
        })
    );
}

#[test]
fn missing_and_bad_fields_are_reported() {
    let p = Packet::parse_line(b"MESSAGE to=bob").unwrap();
    assert_eq!(
        Request::from_packet(&p),
        Err(ProtoError::MissingField("text"))
    );
    let p = Packet::parse_line(b"SEND-FILE-PROXY to=b filename=f size=-1").unwrap();
    assert_eq!(Request::from_packet(&p), Err(ProtoError::BadValue("size")));
    let p = Packet::parse_line(b"SEND-FILE-PROXY to=b filename=f size=99999999999999999999999")
        .unwrap();
    assert_eq!(Request::from_packet(&p), Err(ProtoError::BadValue("size")));
    let p = Packet::parse_line(b"CONNECT-OK login=a domain=x federation=maybe max-line=1 max-text=1 max-file-size=1 server=s").unwrap();
    assert_eq!(
        Event::from_packet(&p),
        Err(ProtoError::BadValue("federation"))
    );
    let p = Packet::parse_line(b"MESSAGE-SENT id=1 at=yesterday").unwrap();
    assert_eq!(Event::from_packet(&p), Err(ProtoError::BadValue("at")));
    // NUL is refused in a required text field; other escaped control characters are kept.
    let p = Packet::parse_line(b"MESSAGE to=bob text=a%00b").unwrap();
    assert_eq!(Request::from_packet(&p), Err(ProtoError::BadValue("text")));
    let p = Packet::parse_line(b"MESSAGE to=bob text=a%01%0Ab").unwrap();
    assert!(
        matches!(Request::from_packet(&p), Ok(Request::SendMessage(m)) if m.text == "a\u{1}\nb")
    );
}

#[test]
fn unknown_verbs_and_fields() {
    let p = Packet::parse_line(b"SEND-FILE to=bob").unwrap();
    assert_eq!(
        Request::from_packet(&p).unwrap(),
        Request::Unknown(p.clone())
    );
    assert_eq!(Request::Unknown(p.clone()).verb(), "SEND-FILE");
    let p = Packet::parse_line(b"PING extra=1 ref=2").unwrap();
    assert_eq!(Request::from_packet(&p).unwrap(), Request::Ping(Ping));
}

#[test]
fn unknown_reason_codes_are_kept() {
    assert_eq!(SendFailure::parse("new-reason").as_str(), "new-reason");
    assert_eq!(
        SendFailure::parse("text-too-long"),
        SendFailure::TextTooLong
    );
    assert!(SendFailure::ALL.contains(&"federation-disabled"));
}

#[test]
fn challenge_hash_matches_sha256_of_salt_then_password() {
    // sha256("abc") = ba7816bf…
    assert_eq!(
        challenge_hash("a", "bc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn filenames_are_sanitised() {
    assert_eq!(
        sanitize_filename("../../etc/passwd").as_deref(),
        Some("passwd")
    );
    assert_eq!(
        sanitize_filename("C:\\x\\cat.jpg").as_deref(),
        Some("cat.jpg")
    );
    assert_eq!(
        sanitize_filename("a\nb\u{0}.jpg").as_deref(),
        Some("ab.jpg")
    );
    assert_eq!(sanitize_filename(".."), None);
    assert_eq!(sanitize_filename("dir/"), None);
    // No hidden files.
    assert_eq!(sanitize_filename(".bashrc").as_deref(), Some("bashrc"));
    assert_eq!(sanitize_filename("... x.png").as_deref(), Some("x.png"));
    assert_eq!(
        sanitize_filename(&"я".repeat(300)).map(|s| s.len()),
        Some(254)
    );
}

mod more;
