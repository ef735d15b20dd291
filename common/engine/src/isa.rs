//! The instruction sets the kernels are compiled for, as tokens that only
//! run-time detection hands out.
//!
//! A kernel compiled with `#[target_feature(enable = "avx512f,fma")]` is
//! undefined behaviour on a CPU without those features. Every kernel takes
//! an [`Isa`] to choose its variant, and the vector variants of `Isa` carry
//! a token ([`Avx512Token`], [`Avx2Token`]) whose field is private to this
//! module: the detection below is its only constructor. Holding
//! `Isa::Avx512(_)` therefore proves that this CPU runs AVX-512F and FMA,
//! and `Isa::Avx2(_)` that it runs AVX2 and FMA; that proof is the safety
//! condition every `unsafe` call of a vector variant states.

use std::sync::OnceLock;

/// Proof that this CPU runs AVX-512F and FMA (made only by detection).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Avx512Token(());

/// Proof that this CPU runs AVX2 and FMA (made only by detection).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Avx2Token(());

/// An instruction set the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512Token),
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2Token),
    /// Plain scalar code: runs everywhere, needs no token.
    Portable,
}

impl Isa {
    /// The best variant this CPU runs, detected once.
    pub(crate) fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| Isa::available()[0])
    }

    /// Every variant this CPU runs, best first.
    pub(crate) fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Isa::Avx512(Avx512Token(())));
            }
            if fma && std::arch::is_x86_feature_detected!("avx2") {
                out.push(Isa::Avx2(Avx2Token(())));
            }
        }
        out.push(Isa::Portable);
        out
    }

    /// Every variant the kernels have, by name, whether or not this CPU
    /// runs it (for reports of what a test exercised).
    #[cfg(test)]
    pub(crate) const NAMES: &'static [&'static str] = &[
        #[cfg(target_arch = "x86_64")]
        "avx512",
        #[cfg(target_arch = "x86_64")]
        "avx2",
        "portable",
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => "avx512",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Output channels per block of [`crate::microkernels::tap_products`]
    /// for a layer of `channels` outputs over `positions` positions per
    /// image; weights are packed in blocks of this many channels. Few
    /// channels (the input relevance of a first layer) get narrower blocks,
    /// which waste fewer padding channels. A single vector of positions
    /// (Winograd's tiles of an 8x8 or smaller plane) gets taller blocks:
    /// with only one input load per tap to share, 8 accumulators are too
    /// few to keep the multiply-adds busy (12 measured 7-45% faster).
    pub(crate) fn channel_block(self, channels: usize, positions: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) if channels > 8 && positions <= 16 => 12,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) if channels > 4 => 8,
            _ => 4,
        }
    }

    /// Output channels per vector of [`crate::microkernels::weight_gradient`]:
    /// the gradient's channel axis is padded to a multiple of this.
    pub(crate) fn gradient_channel_width(self, channels: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) if channels > 16 => 32,
            _ => 16,
        }
    }
}

/// The instruction set the kernels use on this CPU ("avx512", "avx2" or
/// "portable"), for logs and benchmark reports.
pub fn detected_instruction_set() -> &'static str {
    Isa::detected().name()
}

/// The variants a test runs its checks on: every one this CPU runs. When
/// the test ends it says on stderr which variants it exercised and which
/// this CPU lacks, past the test harness's capture (a test that loops over
/// the variants must not pass silently on a CPU without one).
#[cfg(test)]
pub(crate) struct TestedIsas {
    test: &'static str,
    available: Vec<Isa>,
}

#[cfg(test)]
impl TestedIsas {
    pub(crate) fn new(test: &'static str) -> Self {
        TestedIsas { test, available: Isa::available() }
    }

    /// Runs `check` on every variant this CPU runs.
    pub(crate) fn each(&self, mut check: impl FnMut(Isa)) {
        for &isa in &self.available {
            check(isa);
        }
    }
}

#[cfg(test)]
impl Drop for TestedIsas {
    fn drop(&mut self) {
        use std::io::Write;
        let ran: Vec<&str> = self.available.iter().map(|i| i.name()).collect();
        let missing: Vec<&str> = Isa::NAMES.iter().copied().filter(|n| !ran.contains(n)).collect();
        let line = if missing.is_empty() {
            format!("{}: exercised instruction sets {}\n", self.test, ran.join(", "))
        } else {
            format!(
                "{}: exercised instruction sets {}; NOT exercised (this CPU lacks them): {}\n",
                self.test,
                ran.join(", "),
                missing.join(", ")
            )
        };
        // Written to the stream itself, not through `eprintln!`, which the
        // test harness captures.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_lists_portable_last_and_the_best_first() {
        let available = Isa::available();
        assert_eq!(available.last(), Some(&Isa::Portable));
        assert_eq!(Isa::detected(), available[0]);
        for isa in &available {
            assert!(Isa::NAMES.contains(&isa.name()));
        }
    }
}
