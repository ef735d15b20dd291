//! Strided convolutions as stride-1 convolutions of their input's phases
//! (space to depth).
//!
//! With stride `s`, output `(oy, ox)` reads the padded input at rows
//! `s·oy + ky`. Writing `ky = s·u + a`, that is row `oy + u` of the input's
//! phase `a` (its rows `a, a + s, a + 2s, ...`): the strided convolution is
//! a stride-1, unpadded convolution of the `s²` phase images stacked as
//! channels, with a kernel of side `ceil(k / s)` whose taps are the
//! original kernel's (zero where `s·u + a` is past it). The tuned stride-1
//! kernels then compute it: Winograd's method for a 5x5 kernel at stride 2,
//! which becomes 3x3; otherwise the direct method on the phase kernel's
//! real taps alone (for a 3x3 kernel at stride 2, 9 of its 16 taps per
//! input channel, as many as the strided convolution has, where running it
//! at stride 1 and keeping every second output would cost 36). Every input
//! value lands in one phase position, so the input gradient is the phase
//! gradient put back (computed a phase at a time, each phase's channels
//! with the taps that phase has), and the weight gradient the phase
//! kernel's gradient read back.

use std::mem::MaybeUninit;

use crate::geometry::ConvGeometry;

/// The convolution that gives one phase's channels of the phase gradient
/// (see [`PhaseSplit::transposed_by_phase`]).
pub(crate) struct PhaseGradient {
    pub geometry: ConvGeometry,
    pub weight: Vec<f32>,
    /// The taps its kernel has, as indices into its patch, in order.
    pub taps: Vec<usize>,
}

/// A strided convolution and the stride-1 convolution of its phases.
pub(crate) struct PhaseSplit {
    g: ConvGeometry,
    /// Input channels `s²·C` (phase `(a, b)` of channel `c` is channel
    /// `(a·s + b)·C + c`), kernel `ceil(k / s)`, no padding, on phase
    /// images of `out + kernel - 1` rows and columns.
    pub(crate) phased: ConvGeometry,
    /// Whether every input value is a phase value: not so where the
    /// stride skips rows or columns at the end.
    holds_every_input: bool,
}

impl PhaseSplit {
    pub(crate) fn new(g: &ConvGeometry) -> Self {
        let s = g.stride;
        let kernel = g.kernel.div_ceil(s);
        let phased = ConvGeometry {
            in_channels: s * s * g.in_channels,
            out_channels: g.out_channels,
            kernel,
            padding: 0,
            height: g.out_height() + kernel - 1,
            width: g.out_width() + kernel - 1,
            stride: 1,
        };
        let mut split = PhaseSplit { g: *g, phased, holds_every_input: false };
        let mut held = 0;
        split.each_run(|_, _, count| held += count);
        split.holds_every_input = held == g.in_len();
        split
    }

    /// Calls `f(phase, image, count)` for the runs of phase values that
    /// are input values (not padding, nor past the image), one run per
    /// phase row: the `count` phase values from offset `phase` on are the
    /// input values at `image`, `image + s`, `image + 2s`, ... (offsets
    /// within one image's phases and one image).
    fn each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (g, p, s) = (&self.g, &self.phased, self.g.stride);
        for q in 0..p.in_channels {
            let (phase, c) = (q / g.in_channels, q % g.in_channels);
            let (a, b) = (phase / s, phase % s);
            // Phase column j is input column s·j + b - padding.
            let first = g.padding.saturating_sub(b).div_ceil(s);
            let end = (g.width + g.padding).saturating_sub(b).div_ceil(s).min(p.width);
            if first >= end {
                continue;
            }
            for i in 0..p.height {
                let Some(y) = (s * i + a).checked_sub(g.padding).filter(|&y| y < g.height) else { continue };
                let x = s * first + b - g.padding;
                f((q * p.height + i) * p.width + first, (c * g.height + y) * g.width + x, end - first);
            }
        }
    }

    /// Floats of one image of the strided convolution's input.
    pub(crate) fn image_len(&self) -> usize {
        self.g.in_len()
    }

    /// One image (C·H·W) as its phase images (s²C·H'·W') in `phases`. The
    /// phase values that are padding are zero: the buffer is zero-filled
    /// only when it is new (or of another size), as the same positions
    /// are written for every image. Done per image, the phases stay in the
    /// cache for the pass that reads them (a batch's phases made at once
    /// cost a round trip through memory each way).
    pub(crate) fn image_phases(&self, image: &[f32], phases: &mut Vec<f32>) {
        assert_eq!(image.len(), self.g.in_len(), "strided convolution input of one image");
        if phases.len() != self.phased.in_len() {
            phases.clear();
            phases.resize(self.phased.in_len(), 0.0);
        }
        let s = self.g.stride;
        self.each_run(|at, from, count| {
            let row = &mut phases[at..][..count];
            row.iter_mut().zip(image[from..].iter().step_by(s)).for_each(|(v, &x)| *v = x);
        });
    }

    /// What a pass reads for `image`: the image itself, or with a split its
    /// phases, made in `buffer` (see [`PhaseSplit::image_phases`]).
    pub(crate) fn pass_input<'a>(split: Option<&PhaseSplit>, image: &'a [f32], buffer: &'a mut Vec<f32>) -> &'a [f32] {
        match split {
            Some(split) => {
                split.image_phases(image, buffer);
                buffer
            }
            None => image,
        }
    }

    /// The gradient of one image from the gradient of its phase images,
    /// into slots that need not hold values yet: every input value is one
    /// phase value, and values no phase holds (rows and columns the stride
    /// skips at the end) are zero.
    pub(crate) fn image_gradient(&self, d_phases: &[f32], image: &mut [MaybeUninit<f32>]) {
        assert!(d_phases.len() == self.phased.in_len() && image.len() == self.g.in_len(), "strided gradient of one image");
        if !self.holds_every_input {
            image.iter_mut().for_each(|v| {
                v.write(0.0);
            });
        }
        let s = self.g.stride;
        self.each_run(|at, to, count| {
            let row = &d_phases[at..][..count];
            image[to..].iter_mut().step_by(s).zip(row).for_each(|(v, &d)| {
                v.write(d);
            });
        });
    }

    /// The tap of the original kernel that phase channel `q`'s tap `(u, v)`
    /// is, as `(c, ky, kx)`, if any.
    fn tap(&self, q: usize, u: usize, v: usize) -> Option<(usize, usize, usize)> {
        let (s, c_in, k) = (self.g.stride, self.g.in_channels, self.g.kernel);
        let (phase, c) = (q / c_in, q % c_in);
        let (ky, kx) = (s * u + phase / s, s * v + phase % s);
        (ky < k && kx < k).then_some((c, ky, kx))
    }

    /// The phase kernel `[O][s²C][k'][k']` of a weight `[O][C][k][k]`.
    pub(crate) fn weight(&self, weight: &[f32]) -> Vec<f32> {
        let (g, p) = (&self.g, &self.phased);
        let mut out = vec![0.0f32; p.weight_len()];
        self.each_tap(|o, q, u, v, (c, ky, kx)| {
            out[((o * p.in_channels + q) * p.kernel + u) * p.kernel + v] =
                weight[((o * g.in_channels + c) * g.kernel + ky) * g.kernel + kx];
        });
        out
    }

    /// The gradient of the weight from the gradient of the phase kernel.
    pub(crate) fn weight_gradient(&self, d_phased: &[f32]) -> Vec<f32> {
        let (g, p) = (&self.g, &self.phased);
        let mut out = vec![0.0f32; g.weight_len()];
        self.each_tap(|o, q, u, v, (c, ky, kx)| {
            out[((o * g.in_channels + c) * g.kernel + ky) * g.kernel + kx] =
                d_phased[((o * p.in_channels + q) * p.kernel + u) * p.kernel + v];
        });
        out
    }

    /// The phase kernel's taps that are the original kernel's (the others'
    /// weights are zero), as indices into a phase patch (`(q·k' + u)·k' +
    /// v`), in order: for a 3x3 kernel at stride 2, 9 of every 16.
    pub(crate) fn real_taps(&self) -> Vec<usize> {
        let p = &self.phased;
        (0..p.in_channels)
            .flat_map(|q| (0..p.kernel).flat_map(move |u| (0..p.kernel).map(move |v| (q, u, v))))
            .enumerate()
            .filter(|&(_, (q, u, v))| self.tap(q, u, v).is_some())
            .map(|(t, _)| t)
            .collect()
    }

    /// The input gradient of the phase convolution (its transposed
    /// convolution, see [`ConvGeometry::transposed`]) cut by the phase of
    /// its output channels: per phase, the convolution to its `C` channels,
    /// its weights and the taps its kernel has (indices into its patch, in
    /// order). The phases of one channel read different taps of the
    /// kernel, so each computes only its own: for a 3x3 kernel at stride 2,
    /// 4, 2, 2 and 1 of the 2x2 taps per channel, 9 in all instead of 16.
    pub(crate) fn transposed_by_phase(&self, weight: &[f32]) -> Vec<PhaseGradient> {
        let (_, flipped) = self.phased.transposed(&self.weight(weight));
        let geometry = self.phase_gradient_geometry();
        let per_phase = self.g.in_channels * geometry.patch_len();
        (0..self.g.stride * self.g.stride)
            .map(|phase| PhaseGradient {
                geometry,
                weight: flipped[phase * per_phase..][..per_phase].to_vec(),
                taps: self.phase_gradient_taps(phase),
            })
            .collect()
    }

    /// The geometry of each of [`PhaseSplit::transposed_by_phase`]'s
    /// convolutions: the phase convolution's transposed one, to one
    /// phase's `C` channels.
    pub(crate) fn phase_gradient_geometry(&self) -> ConvGeometry {
        ConvGeometry { out_channels: self.g.in_channels, ..self.phased.transposed_geometry() }
    }

    /// The taps of phase `phase`'s convolution in
    /// [`PhaseSplit::transposed_by_phase`], as indices into its patch, in
    /// order.
    pub(crate) fn phase_gradient_taps(&self, phase: usize) -> Vec<usize> {
        let k = self.phased.kernel;
        let q = phase * self.g.in_channels;
        // Tap (o, a, b) of the transposed kernel is tap (k-1-a, k-1-b) of
        // the phase kernel, for every output channel o.
        (0..self.phase_gradient_geometry().patch_len())
            .filter(|&t| {
                let (a, b) = ((t / k) % k, t % k);
                self.tap(q, k - 1 - a, k - 1 - b).is_some()
            })
            .collect()
    }

    /// Calls `f(o, q, u, v, original tap)` for every phase tap that is one
    /// of the original kernel's.
    fn each_tap(&self, mut f: impl FnMut(usize, usize, usize, usize, (usize, usize, usize))) {
        let p = &self.phased;
        for o in 0..p.out_channels {
            for q in 0..p.in_channels {
                for u in 0..p.kernel {
                    for v in 0..p.kernel {
                        if let Some(tap) = self.tap(q, u, v) {
                            f(o, q, u, v, tap);
                        }
                    }
                }
            }
        }
    }
}
