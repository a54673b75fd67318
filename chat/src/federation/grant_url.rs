//! The download grant a peer sends (`S2S-FILE-READY`, PROTOCOL.md §12.10) is handed to our
//! user's client, which fetches its `url`: it must name exactly the transfer on the `connect`
//! host and `port` the grant states, and no host inside a private network unless the operator
//! allows private peers (`--s2s-allow-private`), so a peer cannot make our users' clients send
//! requests into their own networks.

use super::policy::is_public;
use std::net::IpAddr;

/// Whether `url` is `http(s)://<connect>[:<port>]/v1/transfers/<id>` with nothing else (no
/// user info, query or fragment) and `connect` may be reached.
pub(super) fn valid(url: &str, id: &str, connect: &str, port: u16, allow_private: bool) -> bool {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else {
        return false;
    };
    if url.contains(['@', '?', '#', '\\']) {
        return false;
    }
    let Some((authority, path)) = rest.split_once('/') else {
        return false;
    };
    if path != format!("v1/transfers/{id}") {
        return false;
    }
    let (host, url_port) = match authority.strip_prefix('[') {
        Some(r) => match r.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return false,
            },
            None => return false,
        },
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let url_port = match url_port {
        None => default_port,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse() {
            Ok(p) => p,
            Err(_) => return false,
        },
        Some(_) => return false,
    };
    let connect_host = connect.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || !host.eq_ignore_ascii_case(connect_host) || url_port != port {
        return false;
    }
    allow_private || public_host(host)
}

/// Whether `host` (a name or an IP literal) is not obviously inside a private network. Names
/// are not resolved here (the client resolves them); `localhost` names are refused.
fn public_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => is_public(ip),
        Err(_) => {
            let h = host.trim_end_matches('.').to_ascii_lowercase();
            // Numeric forms a resolver may read as IPv4 (`2130706433`, `0x7f.1`) are refused.
            let numeric = h.split('.').all(|l| {
                let digits = l.strip_prefix("0x").unwrap_or(l);
                !l.is_empty()
                    && (l.bytes().all(|b| b.is_ascii_digit())
                        || (l.starts_with("0x") && digits.bytes().all(|b| b.is_ascii_hexdigit())))
            });
            !(h == "localhost" || h.ends_with(".localhost") || numeric)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid;

    const ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn only_the_transfer_on_the_stated_host_and_port() {
        let ok = |u: &str, c: &str, p: u16| valid(u, ID, c, p, false);
        assert!(ok(
            &format!("https://relay.example:8443/v1/transfers/{ID}"),
            "relay.example",
            8443
        ));
        assert!(ok(
            &format!("http://relay.example/v1/transfers/{ID}"),
            "relay.example",
            80
        ));
        assert!(ok(
            &format!("https://[2001:db9::1]:443/v1/transfers/{ID}"),
            "2001:db9::1",
            443
        ));
        for (u, c, p) in [
            (
                format!("http://192.168.1.1/cgi-bin/x?a=/v1/transfers/{ID}"),
                "192.168.1.1",
                80,
            ),
            (
                format!("http://relay.example:80/v1/transfers/{ID}"),
                "192.168.1.1",
                80,
            ),
            (
                format!("http://relay.example:81/v1/transfers/{ID}"),
                "relay.example",
                80,
            ),
            (
                format!("http://u@relay.example/v1/transfers/{ID}"),
                "relay.example",
                80,
            ),
            (
                format!("http://relay.example/v1/transfers/{ID}#x"),
                "relay.example",
                80,
            ),
            (
                format!("http://relay.example/x/v1/transfers/{ID}"),
                "relay.example",
                80,
            ),
            (
                format!("http://127.0.0.1:80/v1/transfers/{ID}"),
                "127.0.0.1",
                80,
            ),
            (format!("http://10.0.0.1/v1/transfers/{ID}"), "10.0.0.1", 80),
            (
                format!("http://localhost/v1/transfers/{ID}"),
                "localhost",
                80,
            ),
            (
                format!("http://2130706433/v1/transfers/{ID}"),
                "2130706433",
                80,
            ),
            (format!("http://0x7f.1/v1/transfers/{ID}"), "0x7f.1", 80),
            (
                format!("ftp://relay.example/v1/transfers/{ID}"),
                "relay.example",
                80,
            ),
        ] {
            assert!(!ok(&u, c, p), "{u} {c} {p}");
        }
        assert!(ok(
            &format!("http://cafe.be/v1/transfers/{ID}"),
            "cafe.be",
            80
        ));
        // Private hosts only when the operator allows them.
        let local = format!("http://127.0.0.1:9000/v1/transfers/{ID}");
        assert!(valid(&local, ID, "127.0.0.1", 9000, true));
    }
}
