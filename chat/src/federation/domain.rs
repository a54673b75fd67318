//! One canonical form for a domain name, applied once where an address enters the server
//! (PROTOCOL.md §1.9): everything after it (policy, queues, peer tasks, DNS) compares plain
//! strings, so `B.example`, `b.example.` and `b.example:3216` must not be three peers, nor
//! slip past a deny list that names `b.example`.

/// Longest domain name (RFC 1035).
pub const MAX_DOMAIN: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// The canonical form of a domain: lower case, without a `:port` (federation finds a peer's
/// port in DNS) and without the root's trailing dot; ASCII only (internationalised names in
/// their `xn--` form), labels of 1–63 letters, digits and `-` not at either end, at most 253
/// characters, and not an IP address (its last label is not all digits). `None` otherwise.
pub fn canonical_domain(text: &str) -> Option<String> {
    let host = match text.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            port.parse::<u16>().ok()?;
            host
        }
        Some(_) => return None,
        None => text,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_DOMAIN {
        return None;
    }
    let ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let last = host.rsplit('.').next().unwrap_or(host);
    if !ok || last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::canonical_domain as c;

    #[test]
    fn one_form_per_domain() {
        for same in [
            "b.example",
            "B.Example",
            "b.example.",
            "b.example:3216",
            "B.EXAMPLE.:1",
        ] {
            assert_eq!(c(same).as_deref(), Some("b.example"), "{same}");
        }
        assert_eq!(
            c("xn--80ak6aa92e.com").as_deref(),
            Some("xn--80ak6aa92e.com")
        );
        for bad in [
            "",
            ".",
            "b..example",
            "b.example..",
            "-b.example",
            "b-.example",
            "b.example:",
            "b.example:99999",
            "b.example:x",
            "b.example:1:2",
            "[::1]:3216",
            "127.0.0.1",
            "10.0.0.1:3216",
            "пример.рф",
            "b_x.example",
        ] {
            assert_eq!(c(bad), None, "{bad:?}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert_eq!(c(&long), None);
        let label = "a".repeat(63);
        let max = [label.as_str(); 4].join(".");
        assert_eq!(max.len(), 255);
        assert_eq!(c(&max), None);
        assert!(c(&max[2..]).is_some());
    }
}

/// The registrable domain of a canonical domain (Public Suffix List: `a.b.example.co.uk` →
/// `example.co.uk`; a name outside the list counts its last label as the suffix, so
/// `x.evil.test` → `evil.test`), or the domain itself when it is a public suffix. Per-peer
/// limits are kept per registrable domain: one DNS zone with a wildcard gives its owner any
/// number of names (each with its own key), which must not multiply every budget
/// (PROTOCOL.md §12.5).
pub fn registrable(domain: &str) -> String {
    psl::domain_str(domain).unwrap_or(domain).to_owned()
}

#[cfg(test)]
mod registrable_tests {
    use super::registrable;

    #[test]
    fn subdomains_share_their_registrable_domain() {
        assert_eq!(registrable("a1.evil.test"), "evil.test");
        assert_eq!(registrable("x.y.evil.test"), "evil.test");
        assert_eq!(registrable("evil.test"), "evil.test");
        assert_eq!(registrable("chat.example.co.uk"), "example.co.uk");
        assert_eq!(registrable("alice.github.io"), "alice.github.io");
        assert_ne!(registrable("b.test"), registrable("c.test"));
        // A public suffix itself is its own group.
        assert_eq!(registrable("co.uk"), "co.uk");
    }
}
