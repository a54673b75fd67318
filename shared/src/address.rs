//! Addresses: `login@domain`, or a bare `login` meaning a user of this server.

use std::fmt;

/// Longest address accepted, in bytes.
pub const MAX_ADDRESS_LEN: usize = 320;

/// A parsed address. The login is kept as written; [`Address::canonical`] lowercases it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub login: String,
    pub domain: Option<String>,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the address is empty")]
    Empty,
    #[error("the address is longer than {MAX_ADDRESS_LEN} bytes")]
    TooLong,
    #[error("the login part contains a character that is not allowed")]
    BadLogin,
    #[error("the domain part is not a valid domain name")]
    BadDomain,
}

impl Address {
    /// Parses `login@domain` or `login`. Logins may use letters, digits, `.`, `_` and `-`
    /// (servers may be stricter); domains are DNS names, optionally with a `:port`.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        if text.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        let (login, domain) = match text.split_once('@') {
            Some((login, domain)) => (login, Some(domain)),
            None => (text, None),
        };
        let login_ok = !login.is_empty()
            && login
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !login_ok {
            return Err(AddressError::BadLogin);
        }
        if let Some(domain) = domain {
            if !is_valid_domain(domain) {
                return Err(AddressError::BadDomain);
            }
        }
        Ok(Address {
            login: login.to_owned(),
            domain: domain.map(str::to_ascii_lowercase),
        })
    }

    /// The address with a lowercase login and `default_domain` filled in when bare.
    pub fn canonical(&self, default_domain: &str) -> String {
        format!(
            "{}@{}",
            self.login.to_lowercase(),
            self.domain.as_deref().unwrap_or(default_domain)
        )
    }

    /// Whether the address belongs to `domain` (a bare login always does).
    pub fn is_local(&self, domain: &str) -> bool {
        self.domain
            .as_deref()
            .is_none_or(|d| d.eq_ignore_ascii_case(domain))
    }
}

fn is_valid_domain(domain: &str) -> bool {
    let host = match domain.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        Some(_) => return false,
        None => domain,
    };
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.domain {
            Some(domain) => write!(f, "{}@{}", self.login, domain),
            None => f.write_str(&self.login),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_bare_addresses() {
        let a = Address::parse("M1kc@KLFD.com").unwrap();
        assert_eq!(a.login, "M1kc");
        assert_eq!(a.domain.as_deref(), Some("klfd.com"));
        assert_eq!(a.canonical("x"), "m1kc@klfd.com");
        assert!(!a.is_local("localhost"));
        let b = Address::parse("vasya").unwrap();
        assert_eq!(b.canonical("localhost"), "vasya@localhost");
        assert!(b.is_local("localhost"));
        assert!(Address::parse("a@localhost:3214").is_ok());
    }

    #[test]
    fn rejects_bad_addresses() {
        assert_eq!(Address::parse(""), Err(AddressError::Empty));
        assert_eq!(Address::parse("@x"), Err(AddressError::BadLogin));
        assert_eq!(Address::parse("a b@x"), Err(AddressError::BadLogin));
        assert_eq!(Address::parse("a@b@c"), Err(AddressError::BadDomain));
        assert_eq!(Address::parse("a@"), Err(AddressError::BadDomain));
        assert_eq!(Address::parse("a@-x.com"), Err(AddressError::BadDomain));
        assert_eq!(Address::parse("a@x..com"), Err(AddressError::BadDomain));
        assert_eq!(Address::parse("a@x/y"), Err(AddressError::BadDomain));
        assert_eq!(Address::parse(&"a".repeat(400)), Err(AddressError::TooLong));
    }
}
