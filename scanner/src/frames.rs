//! The camera's frame pipeline, independent of any camera: take the luma
//! plane of a frame (directly where the pixel format allows), decode every QR
//! code in it, and debounce, so a code held in front of the lens for a second
//! is one scan, not thirty.

use std::borrow::Cow;

use crate::decode;

/// How a frame's bytes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Y0 U Y1 V, two bytes a pixel: luma is every other byte.
    Yuyv,
    /// A full-resolution Y plane followed by interleaved half-resolution UV:
    /// luma is the first `width * height` bytes, as they are.
    Nv12,
    /// One byte a pixel.
    Gray,
    /// R G B, three bytes a pixel.
    Rgb,
    /// A JPEG picture (webcams' MJPEG mode).
    Mjpeg,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{format:?} frame of {width}x{height} needs {need} bytes, got {got}")]
    Short {
        format: PixelFormat,
        width: usize,
        height: usize,
        need: usize,
        got: usize,
    },
    #[error("MJPEG frame does not decode: {0}")]
    Jpeg(String),
}

/// A greyscale picture: `width * height` bytes, row-major.
pub struct Luma<'a> {
    pub width: usize,
    pub height: usize,
    pub pixels: Cow<'a, [u8]>,
}

/// The luma plane of a frame, borrowed where the format stores it whole.
pub fn luma_plane(
    format: PixelFormat,
    width: usize,
    height: usize,
    data: &[u8],
) -> Result<Luma<'_>, FrameError> {
    let pixels = width.saturating_mul(height);
    let need = match format {
        PixelFormat::Yuyv => pixels.saturating_mul(2),
        PixelFormat::Nv12 => pixels.saturating_add(pixels / 2),
        PixelFormat::Gray => pixels,
        PixelFormat::Rgb => pixels.saturating_mul(3),
        PixelFormat::Mjpeg => 0,
    };
    if data.len() < need {
        return Err(FrameError::Short {
            format,
            width,
            height,
            need,
            got: data.len(),
        });
    }
    let plane: Cow<'_, [u8]> = match format {
        PixelFormat::Nv12 | PixelFormat::Gray => Cow::Borrowed(&data[..pixels]),
        PixelFormat::Yuyv => Cow::Owned(data[..need].iter().step_by(2).copied().collect()),
        PixelFormat::Rgb => Cow::Owned(
            data[..need]
                .chunks_exact(3)
                // ITU-R BT.601 weights, in integers.
                .map(|p| {
                    ((77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2])) >> 8)
                        as u8
                })
                .collect(),
        ),
        PixelFormat::Mjpeg => {
            let img = image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)
                .map_err(|e| FrameError::Jpeg(e.to_string()))?
                .into_luma8();
            return Ok(Luma {
                width: img.width() as usize,
                height: img.height() as usize,
                pixels: Cow::Owned(img.into_raw()),
            });
        }
    };
    Ok(Luma {
        width,
        height,
        pixels: plane,
    })
}

/// Lets a code through once while it stays in view. A code counts as gone
/// once it has not been seen for `hold_ms`; shown again after that, it is a
/// new scan (and the gate will say `already_redeemed` if it is).
pub struct Debouncer {
    hold_ms: u64,
    /// Codes in view: text and when last seen.
    seen: Vec<(String, u64)>,
}

impl Debouncer {
    pub fn new(hold_ms: u64) -> Debouncer {
        Debouncer {
            hold_ms,
            seen: Vec::new(),
        }
    }

    /// Of the codes in one frame at `now_ms`, those that are new scans.
    pub fn filter(&mut self, texts: Vec<String>, now_ms: u64) -> Vec<String> {
        let hold = self.hold_ms;
        self.seen
            .retain(|(_, at)| now_ms.saturating_sub(*at) <= hold);
        let mut fresh = Vec::new();
        for text in texts {
            match self.seen.iter_mut().find(|(t, _)| *t == text) {
                Some((_, at)) => *at = now_ms,
                None => {
                    self.seen.push((text.clone(), now_ms));
                    fresh.push(text);
                }
            }
        }
        fresh
    }
}

/// Frames in, new scans out.
pub struct FramePipeline {
    debouncer: Debouncer,
}

impl Default for FramePipeline {
    fn default() -> Self {
        FramePipeline::new(1500)
    }
}

impl FramePipeline {
    pub fn new(hold_ms: u64) -> FramePipeline {
        FramePipeline {
            debouncer: Debouncer::new(hold_ms),
        }
    }

    /// Decodes one frame taken at `now_ms` and returns the codes that are new scans.
    ///
    /// Frames are read with [`decode::Effort::Live`]: only the cheap attempts,
    /// so a frame with no code (most of a kiosk's) costs a few milliseconds,
    /// not tens; a code missed in one frame is read in one of the next.
    pub fn process(
        &mut self,
        format: PixelFormat,
        width: usize,
        height: usize,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Vec<String>, FrameError> {
        let luma = luma_plane(format, width, height, data)?;
        let texts =
            decode::decode_luma_with(luma.width, luma.height, &luma.pixels, decode::Effort::Live);
        Ok(self.debouncer.filter(texts, now_ms))
    }
}
