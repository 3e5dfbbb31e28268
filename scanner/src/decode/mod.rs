//! Finding and reading QR codes in pictures.

use std::borrow::Cow;
use std::path::Path;

mod binarize;
mod detect;

use binarize::Luma;

/// Why a picture gave no code.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot open picture: {0}")]
    Open(#[from] image::ImageError),
    #[error("no QR code found")]
    NotFound,
    #[error(
        "the picture is {width}x{height} pixels; at most {MAX_PIXELS} pixels (and {MAX_SIDE} a side) \
         are read: scale it down"
    )]
    TooLarge { width: u32, height: u32 },
}

/// Most pixels a picture may have (a 40-megapixel photo); its size is read
/// from the header before anything is decoded, so a small file that claims
/// a huge picture costs nothing.
pub const MAX_PIXELS: u64 = 40_000_000;
/// Longest side of a picture, in pixels.
pub const MAX_SIDE: u32 = 12_000;

/// How hard to look for a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effort {
    /// Every attempt, slow fallbacks included: for a picture given once
    /// (`decode_file`, `scan --image`).
    Thorough,
    /// For camera frames, many a second and most with no code: only the
    /// cheap attempts, so an empty frame is given up on quickly; the next
    /// frame is another chance.
    Live,
}

/// Every QR code's text found in a greyscale picture of `width` x `height`
/// pixels, row-major, looking thoroughly ([`Effort::Thorough`]).
pub fn decode_luma(width: usize, height: usize, luma: &[u8]) -> Vec<String> {
    decode_luma_with(width, height, luma, Effort::Thorough)
}

/// Every QR code's text found in a greyscale picture, looking as hard as
/// `effort` says.
///
/// Cheap attempts come first so easy frames stay fast: a finder-pattern
/// detector on a locally thresholded picture, dark-on-light then light-on-dark
/// (dark-mode screens), then on the picture halved (large frames) or doubled
/// (small frames, tiny modules). With [`Effort::Live`] that is all.
/// Otherwise slower fallbacks follow: large frames doubled too (up to
/// 1280x720), a plain local mean threshold, and rqrr's own detector.
pub fn decode_luma_with(width: usize, height: usize, luma: &[u8], effort: Effort) -> Vec<String> {
    let Some(len) = width.checked_mul(height) else {
        return Vec::new();
    };
    if width == 0 || height == 0 || luma.len() < len {
        return Vec::new();
    }
    let img = Luma {
        width,
        height,
        data: Cow::Borrowed(&luma[..len]),
    };
    // The decoders below are meant never to panic; should one still do so on
    // some odd picture, that picture simply yields no code.
    std::panic::catch_unwind(|| attempts(&img, effort)).unwrap_or_default()
}

/// The finder-pattern detector on `img` locally thresholded, dark-on-light
/// then light-on-dark (dark-mode screens).
fn hybrid_both(img: &Luma<'_>) -> Vec<String> {
    let thresholds = binarize::Thresholds::hybrid(img);
    for invert in [false, true] {
        let grey = detect::Grey {
            img,
            thresholds: &thresholds,
            invert,
        };
        let found = detect::read(&thresholds.apply(img, invert), Some(&grey));
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

fn attempts(img: &Luma<'_>, effort: Effort) -> Vec<String> {
    let found = hybrid_both(img);
    if !found.is_empty() {
        return found;
    }
    // Noise and blur: average 2x2 blocks (large frames only).
    let large = img.width >= 400 && img.height >= 400;
    if large {
        let found = hybrid_both(&binarize::half(img));
        if !found.is_empty() {
            return found;
        }
    }
    // Tiny modules: interpolate to twice the size; on live frames only for
    // small frames, where it is cheap.
    let side = img.width.max(img.height);
    let doubled = (!large && side <= 1000) || (effort == Effort::Thorough && side <= 1280);
    if doubled && img.width >= 21 && img.height >= 21 {
        let found = hybrid_both(&binarize::double(img));
        if !found.is_empty() {
            return found;
        }
    }
    if effort == Effort::Live {
        return Vec::new();
    }
    // Plain local mean over a small window: sharper edges on heavy blur.
    for invert in [false, true] {
        let found = detect::read(&binarize::local_mean(img, 10, 2, invert), None);
        if !found.is_empty() {
            return found;
        }
    }
    for invert in [false, true] {
        let found = rqrr_grey(img, invert);
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// rqrr's own detector and thresholding.
fn rqrr_grey(img: &Luma<'_>, invert: bool) -> Vec<String> {
    let (w, data) = (img.width, &img.data[..]);
    let flip = if invert { 255 } else { 0 };
    let mut prepared =
        rqrr::PreparedImage::prepare_from_greyscale(w, img.height, |x, y| data[y * w + x] ^ flip);
    texts(prepared.detect_grids())
}

fn texts<G: rqrr::BitGrid>(grids: Vec<rqrr::Grid<G>>) -> Vec<String> {
    let mut out = Vec::new();
    for grid in grids {
        if let Ok((_, text)) = grid.decode()
            && !out.contains(&text)
        {
            out.push(text);
        }
    }
    out
}

/// Opens a picture (PNG or JPEG) and reads every QR code in it.
pub fn decode_file(path: &Path) -> Result<Vec<String>, DecodeError> {
    let open = || -> Result<_, image::ImageError> {
        Ok(image::ImageReader::open(path)?.with_guessed_format()?)
    };
    let (width, height) = open()?.into_dimensions()?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS || width.max(height) > MAX_SIDE {
        return Err(DecodeError::TooLarge { width, height });
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // An RGBA picture of the largest size, and a little more.
    limits.max_alloc = Some(MAX_PIXELS * 4 + (16 << 20));
    reader.limits(limits);
    let luma = reader.decode()?.into_luma8();
    let texts = decode_luma(luma.width() as usize, luma.height() as usize, luma.as_raw());
    if texts.is_empty() {
        return Err(DecodeError::NotFound);
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
    }

    /// The text the manifest of tests/data gives for picture `name` ("" for
    /// a frame with no code).
    fn expected(name: &str) -> String {
        let raw = std::fs::read_to_string(data_dir().join("manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
        manifest
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["file"] == name)
            .unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Pictures under tests/data (made with shared/qr-bench/make_set.py's
    /// drawing functions) that plain rqrr, as the scanner used before, misses.
    fn fixture(name: &str) -> (String, Vec<String>) {
        let found = decode_file(&data_dir().join(name)).unwrap_or_default();
        (expected(name), found)
    }

    /// Reads picture `name` under tests/data (those made by
    /// `scanner/benches/qr-bench/make_set.py tests/data --fixtures --seed 8`)
    /// with `effort`, and checks it gives the manifest's text, or nothing
    /// for a frame with no code.
    fn check(name: &str, effort: Effort) {
        let img = image::open(data_dir().join(name)).unwrap().into_luma8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let found = decode_luma_with(w, h, img.as_raw(), effort);
        let want = expected(name);
        if want.is_empty() {
            assert!(
                found.is_empty(),
                "{name} ({effort:?}) has no code: {found:?}"
            );
        } else {
            assert_eq!(found, [want], "{name} ({effort:?})");
        }
    }

    #[test]
    fn reads_a_dim_blurred_dark_mode_screen() {
        let (text, found) = fixture("dark_mode_low_contrast.png");
        assert_eq!(found, [text]);
    }

    #[test]
    fn reads_a_tilted_blurred_unevenly_lit_code() {
        let (text, found) = fixture("tilted_blurred_dim.png");
        assert_eq!(found, [text]);
    }

    #[test]
    fn reads_modules_under_two_pixels_from_a_phone_held_far_away() {
        for name in ["tiny_modules_far_phone.jpg", "tiny_modules_far_phone_2.jpg"] {
            check(name, Effort::Thorough);
            check(name, Effort::Live);
        }
    }

    #[test]
    fn reads_codes_seen_at_45_degrees_through_the_finder_corners() {
        for name in [
            "strong_perspective_45_degrees.jpg",
            "strong_perspective_45_degrees_2.jpg",
        ] {
            check(name, Effort::Thorough);
            check(name, Effort::Live);
        }
    }

    #[test]
    fn a_cluttered_frame_with_no_code_gives_nothing_on_the_live_path() {
        // How fast it gives up is measured by the decode bench, not here.
        check("empty_cluttered_frame.jpg", Effort::Live);
        check("empty_cluttered_frame.jpg", Effort::Thorough);
    }

    #[test]
    fn odd_buffers_give_nothing_and_do_not_panic() {
        assert!(decode_luma(0, 0, &[]).is_empty());
        assert!(decode_luma(10, 10, &[0; 50]).is_empty());
        assert!(decode_luma(usize::MAX, 2, &[0; 8]).is_empty());
        for (w, h) in [(1, 1), (1, 300), (300, 1), (21, 21), (64, 48)] {
            assert!(decode_luma(w, h, &vec![0; w * h]).is_empty());
            assert!(decode_luma(w, h, &vec![255; w * h]).is_empty());
            let stripes: Vec<u8> = (0..w * h)
                .map(|i| if i % 7 < 3 { 0 } else { 255 })
                .collect();
            assert!(decode_luma(w, h, &stripes).is_empty());
        }
    }
}
