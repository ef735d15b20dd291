//! The instruction sets the kernels are compiled for, as tokens that only
//! run-time detection hands out.
//!
//! A kernel compiled with `#[target_feature(enable = "avx512f,fma")]` is
//! undefined behaviour on a CPU without those features. Every kernel takes
//! an [`Isa`] to choose its variant, and the vector variants of `Isa` carry
//! a token ([`Avx512Token`], [`Avx2Token`]) whose field is private to this
//! module: the detection below is its only constructor. Holding
//! `Isa::Avx512(_)` therefore proves that this CPU runs AVX-512F, AVX2 and FMA,
//! and `Isa::Avx2(_)` that it runs AVX2 and FMA; that proof is the safety
//! condition every `unsafe` call of a vector variant states.

use std::sync::OnceLock;

/// Proof that this CPU runs AVX-512F, AVX2 and FMA (made only by detection).
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
    /// The variant the kernels use: the best this CPU runs, at or below
    /// the one [`INSTRUCTION_SET_ENV`] names, chosen once. A value that
    /// names no variant is reported by [`instruction_set`]; here it falls
    /// back to the best variant.
    pub(crate) fn detected() -> Isa {
        *SELECTED.get_or_init(|| Isa::from_env().unwrap_or_else(|_| Isa::available()[0]))
    }

    /// [`Isa::selected`] with the cap [`INSTRUCTION_SET_ENV`] names.
    fn from_env() -> Result<Isa, InstructionSetError> {
        Isa::selected(std::env::var(INSTRUCTION_SET_ENV).ok().as_deref())
    }

    /// The best variant this CPU runs at or below the one named `cap`
    /// (`None`: the best of all).
    fn selected(cap: Option<&str>) -> Result<Isa, InstructionSetError> {
        let available = Isa::available();
        let Some(cap) = cap else { return Ok(available[0]) };
        let rank = |name: &str| Isa::NAMES.iter().position(|n| *n == name);
        let wanted = rank(cap).ok_or_else(|| InstructionSetError { value: cap.to_string() })?;
        let at_or_below = available.into_iter().find(|isa| rank(isa.name()).is_some_and(|r| r >= wanted));
        Ok(at_or_below.expect("the portable variant runs everywhere"))
    }

    /// Every variant this CPU runs, best first.
    pub(crate) fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            let avx2 = fma && std::arch::is_x86_feature_detected!("avx2");
            // Every AVX-512 CPU runs AVX2; the AVX-512 kernels use AVX2 for
            // their narrow parts, so the token proves both.
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Isa::Avx512(Avx512Token(())));
            }
            if avx2 {
                out.push(Isa::Avx2(Avx2Token(())));
            }
        }
        out.push(Isa::Portable);
        out
    }

    /// Every variant the kernels have, by name, best first, whether or not
    /// this CPU runs it.
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

    /// Floats per vector of positions in the tap products, where the
    /// variant has vectors.
    pub(crate) fn vector_width(self) -> Option<usize> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => Some(16),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => Some(8),
            Isa::Portable => None,
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

/// The variant the kernels use, once chosen.
static SELECTED: OnceLock<Isa> = OnceLock::new();

/// The environment variable that caps the instruction set the kernels use
/// (`avx512`, `avx2` or `portable`): the best variant this CPU runs at or
/// below it serves. Unset: the best this CPU runs. It lets one machine
/// measure or check the kernels a smaller CPU would run; the results of
/// different variants may differ in rounding.
pub const INSTRUCTION_SET_ENV: &str = "ATTRIBUTION_TRENDS_ISA";

/// [`INSTRUCTION_SET_ENV`] names no instruction set.
#[derive(Debug, thiserror::Error)]
#[error("{INSTRUCTION_SET_ENV}={value:?} names no instruction set (one of {})", Isa::NAMES.join(", "))]
pub struct InstructionSetError {
    value: String,
}

/// The instruction set the kernels use on this CPU ("avx512", "avx2" or
/// "portable"), for logs and benchmark reports.
pub fn detected_instruction_set() -> &'static str {
    Isa::detected().name()
}

/// Chooses the kernels' instruction set from the CPU and
/// [`INSTRUCTION_SET_ENV`] and returns its name; an error if the variable
/// names no instruction set. The stages call this first, so that a typo
/// stops them before any work.
pub fn instruction_set() -> Result<&'static str, InstructionSetError> {
    let chosen = Isa::from_env()?;
    Ok(SELECTED.get_or_init(|| chosen).name())
}

/// Defines `$name(isa, args..)`, which runs the body `$body` compiled for
/// the instruction set `isa` names: one body, compiled once per
/// instruction set, so that the compiler vectorises it for each.
macro_rules! for_each_isa {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) = $body:ident) => {
        $(#[$doc])*
        $vis fn $name(isa: $crate::isa::Isa, $($arg: $ty),*) {
            /// # Safety
            /// The CPU must run AVX-512F: callers hold the `Isa` token that
            /// detection makes only where it does.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            /// # Safety
            /// The CPU must run AVX2: as for `avx512`.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            // SAFETY: a vector variant runs only under its `Isa` variant,
            // whose token only detection of its features makes; the bodies
            // index safely.
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    $crate::isa::Isa::Avx512(_) => avx512($($arg),*),
                    #[cfg(target_arch = "x86_64")]
                    $crate::isa::Isa::Avx2(_) => avx2($($arg),*),
                    $crate::isa::Isa::Portable => $body($($arg),*),
                }
            }
        }
    };
}
pub(crate) use for_each_isa;

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
        if std::env::var_os(INSTRUCTION_SET_ENV).is_none() {
            assert_eq!(Isa::detected(), available[0]);
        }
        for isa in &available {
            assert!(Isa::NAMES.contains(&isa.name()));
        }
    }

    /// A cap picks the best variant this CPU runs at or below it; a name of
    /// no variant is an error that lists the names.
    #[test]
    fn a_cap_selects_the_best_variant_at_or_below_it() {
        let available = Isa::available();
        assert_eq!(Isa::selected(None).unwrap(), available[0]);
        assert_eq!(Isa::selected(Some(Isa::NAMES[0])).unwrap(), available[0]);
        assert_eq!(Isa::selected(Some("portable")).unwrap(), Isa::Portable);
        #[cfg(target_arch = "x86_64")]
        {
            let below_avx512 = available.iter().copied().find(|isa| !matches!(isa, Isa::Avx512(_))).unwrap();
            assert_eq!(Isa::selected(Some("avx2")).unwrap(), below_avx512);
        }
        let message = Isa::selected(Some("sse4")).unwrap_err().to_string();
        assert!(message.contains("\"sse4\"") && message.contains("portable"), "{message}");
    }
}
