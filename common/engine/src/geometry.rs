//! The shapes of the layers the kernels compute: a convolution with
//! symmetric zero padding and stride 1 or 2 and a 2x2 pool, and where their images
//! lie in padded buffers. Kept apart from the kernels so that the direct
//! convolution and Winograd's method both build on them without depending
//! on each other.

use crate::microkernels::{Rows, POSITION_BLOCK};

/// Shape of a convolution with `padding` zeros on every side and a
/// `stride` (1 or 2). The layouts below (padded images, virtual positions,
/// taps) are those of the stride-1 kernels; a strided convolution is
/// computed as a stride-1 convolution of its input's phases (`strided`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub padding: usize,
    pub height: usize,
    pub width: usize,
    pub stride: usize,
}

impl ConvGeometry {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Floats of one input image.
    pub fn in_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Floats of one output image.
    pub fn out_len(&self) -> usize {
        self.out_channels * self.out_plane()
    }

    pub(crate) fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Length of one receptive field: in_channels · kernel².
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    pub fn weight_len(&self) -> usize {
        self.out_channels * self.patch_len()
    }

    /// Floats from one row of the zero-padded input to the next: the
    /// image's width and one run of `padding` zeros, before the row's
    /// pixels. The zeros before row `r + 1` serve as row `r`'s padding on
    /// the right too (a tap reaches at most `padding` columns past either
    /// edge, and `padding < kernel`), so the kernels compute `padding`
    /// fewer virtual positions per output row than with a run on each side.
    pub(crate) fn padded_width(&self) -> usize {
        debug_assert!(self.padding < self.kernel, "the shared padding run needs padding below the kernel size");
        self.width + self.padding
    }

    pub(crate) fn padded_plane(&self) -> usize {
        (self.height + 2 * self.padding) * self.padded_width()
    }

    /// Output positions as the microkernels compute them: every output row
    /// runs over the padded width (the columns past `out_width` are virtual
    /// and discarded), rounded up to whole blocks.
    pub(crate) fn virtual_positions(&self) -> usize {
        (self.out_height() * self.padded_width()).next_multiple_of(POSITION_BLOCK)
    }

    /// The real output positions among the virtual ones: a row of
    /// `out_width` every padded width.
    pub(crate) fn output_rows(&self) -> Rows {
        Rows { count: self.out_height(), pitch: self.padded_width(), width: self.out_width() }
    }

    /// Where tap `(c, ky, kx)` of the kernel reads, relative to the output
    /// position, in the padded image.
    pub(crate) fn tap_offsets(&self) -> Vec<usize> {
        let (k, row, plane) = (self.kernel, self.padded_width(), self.padded_plane());
        (0..self.in_channels).flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| c * plane + ky * row + kx))).collect()
    }

    /// Floats of a padded image, with room for the virtual positions of the
    /// last rows.
    pub(crate) fn padded_len(&self) -> usize {
        let last_tap = (self.in_channels - 1) * self.padded_plane() + (self.kernel - 1) * (self.padded_width() + 1);
        (last_tap + self.virtual_positions()).max(self.in_channels * self.padded_plane())
    }

    /// Copies one image into the middle of a padded buffer, followed by a
    /// row of ones (one per virtual position, at
    /// [`ConvGeometry::padded_len`]) when `ones_after` is set: the weight
    /// gradient's extra tap there is the bias gradient. The buffer is
    /// filled only when it is new (or of another geometry): the copy
    /// overwrites the whole interior and never touches the zero border or
    /// the ones, so a buffer reused for the next image needs no clearing.
    pub(crate) fn pad_image(&self, image: &[f32], padded: &mut Vec<f32>, ones_after: bool) {
        let ones = if ones_after { self.virtual_positions() } else { 0 };
        if padded.len() != self.padded_len() + ones {
            padded.clear();
            padded.resize(self.padded_len(), 0.0);
            padded.resize(self.padded_len() + ones, 1.0);
        }
        copy_rows(image, (self.height, self.width), self.padded_layout(), padded);
    }

    /// Where the image's rows lie in a padded buffer.
    pub(crate) fn padded_layout(&self) -> RowLayout {
        (self.padded_plane(), self.padded_width(), self.padding * (self.padded_width() + 1))
    }

    /// Every tap of the kernel, as indices into a patch (`(c·k + ky)·k + kx`).
    pub(crate) fn all_taps(&self) -> Vec<usize> {
        (0..self.patch_len()).collect()
    }

    /// The weights `[out][tap]` of the kernel's taps `taps` (indices into
    /// a patch) as the forward microkernel reads them: `[channel
    /// block][tap][channel in block]`, zero past the last channel.
    pub(crate) fn pack_weights(&self, weight: &[f32], block: usize, taps: &[usize]) -> Vec<f32> {
        let blocks = self.out_channels.div_ceil(block);
        let mut packed = vec![0.0f32; blocks * taps.len() * block];
        for (o, row) in weight.chunks_exact(self.patch_len()).enumerate() {
            for (i, &t) in taps.iter().enumerate() {
                packed[((o / block) * taps.len() + i) * block + o % block] = row[t];
            }
        }
        packed
    }

    /// The geometry of [`ConvGeometry::transposed`].
    pub(crate) fn transposed_geometry(&self) -> ConvGeometry {
        debug_assert_eq!(self.stride, 1, "the transposed layout is that of a stride-1 convolution");
        ConvGeometry {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            kernel: self.kernel,
            padding: self.kernel - 1 - self.padding,
            height: self.out_height(),
            width: self.out_width(),
            stride: 1,
        }
    }

    /// The convolution whose forward pass is this one's input gradient:
    /// channels swapped, kernel flipped, padding `k - 1 - p`, on the output's
    /// plane.
    pub(crate) fn transposed(&self, weight: &[f32]) -> (ConvGeometry, Vec<f32>) {
        let (transposed, k) = (self.transposed_geometry(), self.kernel);
        let mut flipped = vec![0.0f32; weight.len()];
        for o in 0..self.out_channels {
            for c in 0..self.in_channels {
                for ky in 0..k {
                    for kx in 0..k {
                        flipped[((c * self.out_channels + o) * k + (k - 1 - ky)) * k + (k - 1 - kx)] =
                            weight[((o * self.in_channels + c) * k + ky) * k + kx];
                    }
                }
            }
        }
        (transposed, flipped)
    }
}

/// Where an image's rows lie in a buffer, `(plane, row, first)`: row `y`
/// of channel `c` starts at `c·plane + y·row + first`.
pub(crate) type RowLayout = (usize, usize, usize);

/// Copies an image (C·H·W, planes of `height x width`) into a padded
/// buffer laid out as `layout`. Only the image's own entries are written,
/// so a reused buffer keeps its border.
pub(crate) fn copy_rows(image: &[f32], (height, width): (usize, usize), layout: RowLayout, padded: &mut [f32]) {
    let (plane, row, first) = layout;
    for (c, channel) in image.chunks_exact(height * width).enumerate() {
        for (y, src) in channel.chunks_exact(width).enumerate() {
            padded[c * plane + y * row + first..][..width].copy_from_slice(src);
        }
    }
}

/// Shape of a 2x2, stride-2 pool (max or average) over `channels` planes of `height x
/// width` (odd trailing rows and columns are dropped, as in PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl PoolGeometry {
    pub fn out_height(&self) -> usize {
        self.height / 2
    }

    pub fn out_width(&self) -> usize {
        self.width / 2
    }

    pub fn in_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn out_len(&self) -> usize {
        self.channels * self.out_height() * self.out_width()
    }

    /// The four inputs (indices within one image) of every window, in
    /// output order (channel, row, column).
    pub(crate) fn windows(&self) -> impl Iterator<Item = [usize; 4]> + '_ {
        (0..self.channels).flat_map(move |c| {
            (0..self.out_height()).flat_map(move |oy| {
                (0..self.out_width())
                    .map(move |ox| [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| self.window(c, oy, ox, dy, dx)))
            })
        })
    }

    /// Index (within one image) of the input of each 2x2 window's corner `(dy, dx)`.
    pub(crate) fn window(&self, c: usize, oy: usize, ox: usize, dy: usize, dx: usize) -> usize {
        (c * self.height + 2 * oy + dy) * self.width + 2 * ox + dx
    }
}
