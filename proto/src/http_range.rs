//! The HTTP `Range` header as weightcast's HTTP servers (the Hub endpoint,
//! the test origins) answer it: one range, `bytes=a-b`, `bytes=a-` or
//! `bytes=-n`. Several ranges in one request are not supported; such a
//! request gets the whole body, which RFC 9110 allows.

/// The inclusive byte range `(first, last)` that `header` asks for in a
/// body of `len` bytes. `None`: not a single satisfiable byte range (the
/// caller answers 416 when `len` is 0 or the start is past the end).
pub fn parse(header: &str, len: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return None;
        }
        return Some((len.saturating_sub(n), len - 1));
    }
    let first: u64 = a.parse().ok()?;
    if first >= len {
        return None;
    }
    let last = if b.is_empty() {
        len - 1
    } else {
        b.parse::<u64>().ok()?.min(len - 1)
    };
    (last >= first).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn single_ranges() {
        assert_eq!(parse("bytes=0-0", 10), Some((0, 0)));
        assert_eq!(parse("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse("bytes=5-100", 10), Some((5, 9)));
        assert_eq!(parse("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse("bytes=-30", 10), Some((0, 9)));
        assert_eq!(parse("bytes=10-", 10), None);
        assert_eq!(parse("bytes=5-4", 10), None);
        assert_eq!(parse("bytes=0-1,3-4", 10), None);
        assert_eq!(parse("items=0-1", 10), None);
        assert_eq!(parse("bytes=0-", 0), None);
    }
}
