//! The `Range` header of an audio request (RFC 9110 §14): one byte range, which is what
//! browsers send to seek. A header this does not understand (another unit, several ranges,
//! bad syntax) is ignored and the whole file served, as the RFC allows.

/// What to send of a file of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// All of it (200).
    Whole,
    /// Bytes `start..=end` (206).
    Part { start: u64, end: u64 },
    /// Nothing of the file is in the range (416).
    Unsatisfiable,
}

/// The plan for `header` (the `Range` value) over a file of `size` bytes.
pub(crate) fn plan(header: Option<&str>, size: u64) -> Plan {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Plan::Whole;
    };
    if spec.contains(',') {
        return Plan::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Plan::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (digits(first), digits(last)) {
        // bytes=START- or bytes=START-END
        (true, _) if last.is_empty() || digits(last) => {
            let Ok(start) = first.parse::<u64>() else {
                return Plan::Unsatisfiable;
            };
            if start >= size {
                return Plan::Unsatisfiable;
            }
            let end = match last.parse::<u64>() {
                Ok(end) if end < start => return Plan::Whole,
                Ok(end) => end.min(size - 1),
                // Empty, or past u64: to the end.
                Err(_) => size - 1,
            };
            Plan::Part { start, end }
        }
        // bytes=-SUFFIX: the last SUFFIX bytes.
        (false, true) if first.is_empty() => {
            let suffix = last.parse::<u64>().unwrap_or(u64::MAX);
            if suffix == 0 || size == 0 {
                return Plan::Unsatisfiable;
            }
            Plan::Part {
                start: size.saturating_sub(suffix),
                end: size - 1,
            }
        }
        _ => Plan::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::{Plan, plan};

    fn part(start: u64, end: u64) -> Plan {
        Plan::Part { start, end }
    }

    #[test]
    fn single_ranges_are_served_in_part() {
        assert_eq!(plan(Some("bytes=0-99"), 1000), part(0, 99));
        assert_eq!(plan(Some("bytes=500-"), 1000), part(500, 999));
        assert_eq!(plan(Some("bytes=900-5000"), 1000), part(900, 999));
        assert_eq!(plan(Some("bytes=-100"), 1000), part(900, 999));
        assert_eq!(plan(Some("bytes=-5000"), 1000), part(0, 999));
        assert_eq!(plan(Some("bytes=0-"), 1), part(0, 0));
        assert_eq!(
            plan(Some("bytes=0-99999999999999999999999"), 10),
            part(0, 9)
        );
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(plan(Some("bytes=1000-"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=1000-2000"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=-0"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=0-"), 0), Plan::Unsatisfiable);
        assert_eq!(
            plan(Some("bytes=99999999999999999999999-"), 10),
            Plan::Unsatisfiable
        );
    }

    #[test]
    fn what_is_not_one_byte_range_gets_the_whole_file() {
        for header in [
            None,
            Some("items=0-1"),
            Some("bytes=0-1,5-6"),
            Some("bytes=5-1"),
            Some("bytes=abc"),
            Some("bytes=-"),
            Some("bytes=1-x"),
            Some("bytes=--1"),
        ] {
            assert_eq!(plan(header, 1000), Plan::Whole, "{header:?}");
        }
    }
}
