//! Deterministic pseudo-text: request RNGs, output tokens and prompt-size estimates.

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// The vocabulary of simulated output: one word is one token.
/// Its length is a power of two so a word is picked with a mask, without bias.
const WORDS: [&str; 64] = [
    "the", "model", "says", "hello", "world", "data", "token", "stream", "fast", "slow", "river",
    "stone", "light", "cloud", "green", "blue", "red", "quiet", "bright", "small", "large",
    "apple", "tree", "road", "city", "ocean", "wind", "fire", "paper", "glass", "music", "story",
    "north", "south", "east", "west", "spring", "summer", "autumn", "winter", "happy", "simple",
    "clear", "round", "sharp", "soft", "early", "late", "open", "close", "alpha", "beta", "gamma",
    "delta", "test", "value", "answer", "reason", "thought", "signal", "bridge", "garden",
    "window", "mirror",
];

/// Longest word in [`WORDS`], plus its leading space.
pub(crate) const MAX_TOKEN_LEN: usize = 8;

/// Draws the text of output token `index`: a word, with a leading space after the first.
/// Words need no JSON escaping.
pub(crate) fn push_token(out: &mut impl Extend<u8>, rng: &mut SmallRng, index: u32) {
    let word = WORDS[(rng.next_u32() as usize) & (WORDS.len() - 1)];
    if index > 0 {
        out.extend(*b" ");
    }
    out.extend(word.bytes());
}

/// The whole completion text of `n` tokens, as [`push_token`] streams it.
pub(crate) fn completion_text(rng: &mut SmallRng, n: u32) -> String {
    let mut bytes = Vec::with_capacity(n as usize * MAX_TOKEN_LEN);
    for i in 0..n {
        push_token(&mut bytes, rng, i);
    }
    // Every word is ASCII; the fallback never happens.
    String::from_utf8(bytes).unwrap_or_default()
}

/// The RNG of request number `counter` of a server whose base seed is `seed`.
pub(crate) fn request_rng(seed: u64, counter: u64) -> SmallRng {
    SmallRng::seed_from_u64(splitmix64(seed ^ splitmix64(counter)))
}

/// SplitMix64's finaliser: spreads consecutive inputs over the whole 64-bit range.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The prompt-token estimate of a text: its whitespace-separated words.
pub(crate) fn count_words(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

/// A 64-bit FNV-1a hash, stable across runs and platforms.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// A unit-length pseudo-random vector of `dim` floats, determined by `hash`.
pub(crate) fn embedding(hash: u64, dim: usize) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(hash);
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            // 24 random bits mapped onto [-1, 1).
            let unit = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
            unit * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Standard base64 (with padding) of the little-endian bytes of `values`,
/// as OpenAI's `encoding_format: "base64"` returns them.
pub(crate) fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_fit_max_len() {
        assert!(WORDS.iter().all(|w| w.len() < MAX_TOKEN_LEN));
        assert!(WORDS
            .iter()
            .all(|w| w.bytes().all(|b| b.is_ascii_lowercase())));
    }

    #[test]
    fn text_is_reproducible() {
        let a = completion_text(&mut request_rng(7, 3), 10);
        let b = completion_text(&mut request_rng(7, 3), 10);
        let c = completion_text(&mut request_rng(7, 4), 10);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.split(' ').count(), 10);
        assert!(!a.starts_with(' '));
    }

    #[test]
    fn counts_words() {
        assert_eq!(count_words("  hello   big\nworld "), 3);
        assert_eq!(count_words(""), 0);
    }

    #[test]
    fn embedding_is_unit_and_stable() {
        let a = embedding(42, 8);
        assert_eq!(a, embedding(42, 8));
        assert_ne!(a, embedding(43, 8));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn base64_matches_reference() {
        // 1.0f32 = 00 00 80 3f; 2.0f32 = 00 00 00 40
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(base64_f32(&[]), "");
    }
}
