//! A transcript's `confidence` from Whisper's own probabilities, the same way for every
//! Whisper engine (the built-in one and OpenAI-compatible servers): the exponential of the
//! segments' mean `avg_logprob` (the mean log-probability of each segment's tokens), each
//! segment weighted by how long it lasts (at least 10 ms), between 0 and 1. The engine
//! (`hooks/whisper_engine.py`, `transcribe`) computes the same in Python, on the segments it
//! keeps (those with text).

/// One segment's share: its length in seconds and its `avg_logprob`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Scored {
    pub duration_secs: f64,
    pub avg_logprob: f64,
}

/// The least a segment weighs, in seconds: one without a length (a zero or broken timestamp)
/// still counts.
const MIN_WEIGHT_SECS: f64 = 0.01;

/// The confidence of a transcript made of `segments`: `None` when none has a usable
/// `avg_logprob` (a server that does not report it).
pub(crate) fn from_segments(segments: impl IntoIterator<Item = Scored>) -> Option<f64> {
    let (mut weighted, mut seconds) = (0.0, 0.0);
    for segment in segments {
        if !segment.avg_logprob.is_finite() {
            continue;
        }
        let length = if segment.duration_secs.is_finite() {
            segment.duration_secs.max(MIN_WEIGHT_SECS)
        } else {
            MIN_WEIGHT_SECS
        };
        weighted += segment.avg_logprob * length;
        seconds += length;
    }
    (seconds > 0.0).then(|| (weighted / seconds).exp().clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(duration_secs: f64, avg_logprob: f64) -> Scored {
        Scored {
            duration_secs,
            avg_logprob,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_longer_segment_counts_more() {
        // 3 s at -0.1 and 1 s at -0.5: mean -0.2.
        let c = from_segments([scored(3.0, -0.1), scored(1.0, -0.5)]).unwrap();
        assert!(close(c, (-0.2f64).exp()), "{c}");
        let one = from_segments([scored(2.5, -0.3)]).unwrap();
        assert!(close(one, (-0.3f64).exp()), "{one}");
    }

    #[test]
    fn without_probabilities_there_is_no_confidence() {
        assert_eq!(from_segments([]), None);
        assert_eq!(from_segments([scored(1.0, f64::NAN)]), None);
        assert_eq!(from_segments([scored(1.0, f64::NEG_INFINITY)]), None);
    }

    #[test]
    fn it_stays_between_0_and_1() {
        assert_eq!(from_segments([scored(1.0, 0.2)]), Some(1.0));
        assert_eq!(from_segments([scored(1.0, -1e9)]), Some(0.0));
    }

    #[test]
    fn a_segment_without_a_length_weighs_10_ms() {
        let c = from_segments([scored(0.0, -0.2), scored(-1.0, -0.4)]).unwrap();
        assert!(close(c, (-0.3f64).exp()), "{c}");
        let c = from_segments([
            scored(0.0, -5.0),
            scored(f64::NAN, -5.0),
            scored(0.98, -0.4),
        ])
        .unwrap();
        assert!(
            close(c, ((0.98 * -0.4 + 0.02 * -5.0) / 1.0f64).exp()),
            "{c}"
        );
    }
}
