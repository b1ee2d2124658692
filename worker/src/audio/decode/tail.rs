//! Audio past the end the container declares: padding to drop, or audio to keep.

use super::DecodeError;
use super::sink::Sink;

/// Source frames past the declared end held back before deciding they are real audio.
/// An encoder's padding spans at most two MP3 frames (1152 samples each) past the end.
const TAIL_LIMIT: usize = 4096;

/// Audio past the end the container declares.
///
/// An MP3's Xing/LAME tag gives its length; symphonia marks every frame past it for trimming.
/// At the end of a normal file those frames are the encoder's padding, and dropping them gives
/// the exact length. But when two recordings are glued together, or the tag lies, the whole
/// rest of the file lies past the declared end. So frames past the end are held back: if the
/// file ends within `TAIL_LIMIT` frames they were padding and are dropped; if it goes on, they
/// and everything after are audio and kept.
#[derive(Default)]
pub(super) struct Tail {
    held: Vec<f32>,
    spec: Option<(u32, u16)>,
    /// Past the end for good: everything is kept.
    released: bool,
}

impl Tail {
    pub(super) fn push(
        &mut self,
        sink: &mut Sink<'_>,
        rate: u32,
        channels: u16,
        mono: &[f32],
        past_end: bool,
    ) -> Result<(), DecodeError> {
        if mono.is_empty() {
            return Ok(());
        }
        if !past_end || self.released {
            // Audio after held frames (timestamps gone backwards?): they were audio too.
            if !self.held.is_empty() {
                self.release(sink)?;
            }
            return sink.push(rate, channels, mono);
        }
        if self.spec.is_some_and(|spec| spec != (rate, channels))
            || self.held.len() + mono.len() > TAIL_LIMIT
        {
            // More than padding: the rest of the file is audio.
            self.release(sink)?;
            return sink.push(rate, channels, mono);
        }
        self.spec = Some((rate, channels));
        self.held.extend_from_slice(mono);
        Ok(())
    }

    fn release(&mut self, sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        self.released = true;
        if let Some((rate, channels)) = self.spec {
            sink.push(rate, channels, &std::mem::take(&mut self.held))?;
        }
        Ok(())
    }
}
