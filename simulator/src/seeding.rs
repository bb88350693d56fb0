//! Seeded random streams, so that output depends only on the seed, the batch
//! sequence number and the input, never on timing or thread scheduling.
//!
//! Each stream is a `StdRng` seeded with SHA-256 of
//! `seed (8 bytes LE) || batch sequence (8 bytes LE) || purpose || 0x00 || key`.
//! SHA-256 is stable across Rust releases, unlike `std`'s `DefaultHasher`.
//! `StdRng` is stable within rand 0.9 (ChaCha12), so output bytes may change when
//! rand moves to a new major version.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// Purpose of a random stream. Separate streams keep the outcome of a request
/// independent of how much content is drawn for it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// Order in which a batch processes its requests, and so the output order.
    Order,
    /// Whether a request fails, and how.
    Outcome,
    /// Ids, token counts, text and embeddings of a request's result.
    Content,
    /// Choices of the fault profile, such as which result line is duplicated.
    Fault,
}

impl Stream {
    fn tag(self) -> &'static [u8] {
        match self {
            Stream::Order => b"order",
            Stream::Outcome => b"outcome",
            Stream::Content => b"content",
            Stream::Fault => b"fault",
        }
    }
}

/// Creates the random stream for `key` (a `custom_id`, or empty for batch-wide streams).
pub(crate) fn stream_rng(seed: u64, sequence: u64, stream: Stream, key: &str) -> StdRng {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(sequence.to_le_bytes());
    hasher.update(stream.tag());
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    StdRng::from_seed(hasher.finalize().into())
}

/// Draws a 32-digit lowercase hex string for ids such as `batch_req_...`.
pub(crate) fn random_hex(rng: &mut StdRng) -> String {
    let value: u128 = rng.random();
    format!("{value:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_rng_same_inputs_same_draws() {
        let first: u64 = stream_rng(7, 1, Stream::Content, "a").random();
        let second: u64 = stream_rng(7, 1, Stream::Content, "a").random();
        assert_eq!(first, second);
    }

    #[test]
    fn stream_rng_differs_by_each_input() {
        let base: u64 = stream_rng(7, 1, Stream::Content, "a").random();
        let other_seed: u64 = stream_rng(8, 1, Stream::Content, "a").random();
        let other_sequence: u64 = stream_rng(7, 2, Stream::Content, "a").random();
        let other_stream: u64 = stream_rng(7, 1, Stream::Outcome, "a").random();
        let other_key: u64 = stream_rng(7, 1, Stream::Content, "b").random();
        assert_ne!(base, other_seed);
        assert_ne!(base, other_sequence);
        assert_ne!(base, other_stream);
        assert_ne!(base, other_key);
    }
}
