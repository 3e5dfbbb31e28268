//! Greyscale helpers: local-threshold binarization, scaling, inversion.

/// A black-and-white picture, one byte a pixel: 1 is dark, 0 is light.
pub(crate) struct Bits {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) data: Vec<u8>,
}

impl Bits {
    /// Whether the pixel at (`x`, `y`) is dark; outside the picture is light.
    #[inline]
    pub(crate) fn dark(&self, x: i64, y: i64) -> bool {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            return false;
        }
        self.data
            .get(y as usize * self.width + x as usize)
            .is_some_and(|&b| b != 0)
    }
}

/// A greyscale picture.
pub(crate) struct Luma<'a> {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) data: std::borrow::Cow<'a, [u8]>,
}

const BLOCK: usize = 8;
const MIN_DYNAMIC_RANGE: u32 = 24;

/// Local-threshold binarization after ZXing's hybrid binarizer (`apply`): a black point
/// per 8x8 block (its mean), and each pixel compared with the mean black point
/// of the 5x5 blocks around its own. Unlike ZXing, flat blocks (no edge in
/// them) are left out of that mean, which keeps low-contrast codes readable;
/// where every block around is flat the pixel is light. `invert` marks light
/// pixels dark instead (for light-on-dark codes).
///
/// The thresholds are kept, one per block (`None` where every block around
/// is flat), so both polarities are made from one pass of block statistics.
pub(crate) struct Thresholds {
    blocks: Vec<Option<u8>>,
    /// Blocks a row.
    across: usize,
}

impl Thresholds {
    pub(crate) fn hybrid(img: &Luma<'_>) -> Thresholds {
        let (w, h) = (img.width, img.height);
        let data = &img.data[..];
        let bw = w.div_ceil(BLOCK);
        let bh = h.div_ceil(BLOCK);
        // Per block: sum of block means over contrasty blocks, and their count.
        let mut mean = vec![0u32; bw * bh];
        let mut edgy = vec![0u32; bw * bh];
        for by in 0..bh {
            let (y0, y1) = (by * BLOCK, (by * BLOCK + BLOCK).min(h));
            for bx in 0..bw {
                let (x0, x1) = (bx * BLOCK, (bx * BLOCK + BLOCK).min(w));
                let (mut sum, mut min, mut max) = (0u32, 255u8, 0u8);
                for y in y0..y1 {
                    for &p in &data[y * w + x0..y * w + x1] {
                        sum += u32::from(p);
                        min = min.min(p);
                        max = max.max(p);
                    }
                }
                let n = ((y1 - y0) * (x1 - x0)) as u32;
                if u32::from(max - min) > MIN_DYNAMIC_RANGE && n > 0 {
                    mean[by * bw + bx] = sum / n;
                    edgy[by * bw + bx] = 1;
                }
            }
        }
        let mut blocks = vec![None; bw * bh];
        for by in 0..bh {
            for bx in 0..bw {
                let (mut sum, mut n) = (0u32, 0u32);
                for yy in by.saturating_sub(2)..(by + 3).min(bh) {
                    let r = yy * bw;
                    for xx in bx.saturating_sub(2)..(bx + 3).min(bw) {
                        sum += mean[r + xx];
                        n += edgy[r + xx];
                    }
                }
                blocks[by * bw + bx] = sum.checked_div(n).map(|t| t.min(255) as u8);
            }
        }
        Thresholds { blocks, across: bw }
    }

    /// The threshold at pixel (`x`, `y`), `None` where the picture is flat.
    pub(crate) fn at(&self, x: usize, y: usize) -> Option<u8> {
        let i = (y / BLOCK) * self.across + x / BLOCK;
        self.blocks.get(i).copied().flatten()
    }

    /// `img` (the picture the thresholds were computed from) in black and white.
    pub(crate) fn apply(&self, img: &Luma<'_>, invert: bool) -> Bits {
        let (w, h) = (img.width, img.height);
        let data = &img.data[..];
        let bw = w.div_ceil(BLOCK);
        let mut out = vec![0u8; w * h];
        for (i, t) in self.blocks.iter().enumerate() {
            let Some(t) = *t else {
                continue; // all light
            };
            let (bx, by) = (i % bw, i / bw);
            let (x0, x1) = (bx * BLOCK, (bx * BLOCK + BLOCK).min(w));
            let (y0, y1) = (by * BLOCK, (by * BLOCK + BLOCK).min(h));
            for y in y0..y1 {
                let src = &data[y * w + x0..y * w + x1];
                let dst = &mut out[y * w + x0..y * w + x1];
                if invert {
                    for (d, &p) in dst.iter_mut().zip(src) {
                        *d = u8::from(p > t);
                    }
                } else {
                    for (d, &p) in dst.iter_mut().zip(src) {
                        *d = u8::from(p <= t);
                    }
                }
            }
        }
        Bits {
            width: w,
            height: h,
            data: out,
        }
    }
}

/// Adaptive mean threshold over a `radius` window (integral image): dark where
/// the pixel is below the local mean by more than `bias` grey levels.
pub(crate) fn local_mean(img: &Luma<'_>, radius: usize, bias: i64, invert: bool) -> Bits {
    let (w, h) = (img.width, img.height);
    let data = &img.data[..];
    let iw = w + 1;
    let mut integral = vec![0u64; iw * (h + 1)];
    for y in 0..h {
        let mut row = 0u64;
        for x in 0..w {
            row += u64::from(data[y * w + x]);
            integral[(y + 1) * iw + x + 1] = integral[y * iw + x + 1] + row;
        }
    }
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        let y0 = y.saturating_sub(radius);
        let y1 = (y + radius + 1).min(h);
        for x in 0..w {
            let x0 = x.saturating_sub(radius);
            let x1 = (x + radius + 1).min(w);
            let area = ((y1 - y0) * (x1 - x0)) as u64;
            let sum = integral[y1 * iw + x1] + integral[y0 * iw + x0]
                - integral[y0 * iw + x1]
                - integral[y1 * iw + x0];
            let p = i64::from(data[y * w + x]) * area as i64;
            let mean = sum as i64;
            let dark = if invert {
                p > mean + bias * area as i64
            } else {
                p < mean - bias * area as i64
            };
            out[y * w + x] = u8::from(dark);
        }
    }
    Bits {
        width: w,
        height: h,
        data: out,
    }
}

/// Halves the picture by averaging 2x2 blocks.
pub(crate) fn half(img: &Luma<'_>) -> Luma<'static> {
    let (w, h) = (img.width / 2, img.height / 2);
    let src = &img.data[..];
    let sw = img.width;
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (2 * y * sw + 2 * x, (2 * y + 1) * sw + 2 * x);
            let s = u32::from(src[a])
                + u32::from(src[a + 1])
                + u32::from(src[b])
                + u32::from(src[b + 1]);
            out.push(((s + 2) / 4) as u8);
        }
    }
    Luma {
        width: w,
        height: h,
        data: out.into(),
    }
}

/// Doubles the picture with bilinear interpolation.
pub(crate) fn double(img: &Luma<'_>) -> Luma<'static> {
    let (sw, sh) = (img.width, img.height);
    let (w, h) = (sw * 2, sh * 2);
    let src = &img.data[..];
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        // Sample position in source coordinates: (y - 0.5) / 2, in quarters.
        let fy = (y as i64 * 2 - 1).max(0);
        let y0 = ((fy / 4) as usize).min(sh - 1);
        let y1 = (y0 + 1).min(sh - 1);
        let wy = (fy % 4) as u32;
        for x in 0..w {
            let fx = (x as i64 * 2 - 1).max(0);
            let x0 = ((fx / 4) as usize).min(sw - 1);
            let x1 = (x0 + 1).min(sw - 1);
            let wx = (fx % 4) as u32;
            let top = u32::from(src[y0 * sw + x0]) * (4 - wx) + u32::from(src[y0 * sw + x1]) * wx;
            let bottom =
                u32::from(src[y1 * sw + x0]) * (4 - wx) + u32::from(src[y1 * sw + x1]) * wx;
            out.push(((top * (4 - wy) + bottom * wy + 8) / 16) as u8);
        }
    }
    Luma {
        width: w,
        height: h,
        data: out.into(),
    }
}
