//! The `Range` request header (RFC 9110 §14.2), single byte ranges only: anything else is
//! served whole, as the RFC allows.

use http::HeaderValue;

/// A parsed `Range` header against a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReq {
    /// No usable single range: send the whole body (200).
    Full,
    /// First and last byte, inclusive (206).
    Part(u64, u64),
    /// A range that starts past the end (416).
    Unsatisfiable,
}

/// Reads a `Range` header against a body of `size` bytes.
pub fn parse_range(v: Option<&HeaderValue>, size: u64) -> RangeReq {
    let Some(spec) = v
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().strip_prefix("bytes="))
    else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full; // multiple ranges: serve the whole file (allowed by RFC 9110)
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeReq::Full;
        };
        if n == 0 || size == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part(size - n.min(size), size - 1);
    }
    let Ok(a) = a.parse::<u64>() else {
        return RangeReq::Full;
    };
    let b = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(b) if b >= a => b,
            _ => return RangeReq::Full,
        }
    };
    if a >= size {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part(a, b.min(size - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &'static str, size: u64) -> RangeReq {
        parse_range(Some(&HeaderValue::from_static(v)), size)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse_range(None, 10), RangeReq::Full);
        assert_eq!(r("bytes=0-4", 10), RangeReq::Part(0, 4));
        assert_eq!(r("bytes=5-", 10), RangeReq::Part(5, 9));
        assert_eq!(r("bytes=5-100", 10), RangeReq::Part(5, 9));
        assert_eq!(r("bytes=-3", 10), RangeReq::Part(7, 9));
        assert_eq!(r("bytes=-30", 10), RangeReq::Part(0, 9));
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(r("bytes=10-", 10), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=4-2", 10), RangeReq::Full);
        assert_eq!(r("bytes=0-1,3-4", 10), RangeReq::Full);
        assert_eq!(r("items=0-1", 10), RangeReq::Full);
        assert_eq!(r("bytes=x-1", 10), RangeReq::Full);
        assert_eq!(r("bytes=-", 10), RangeReq::Full);
    }
}
