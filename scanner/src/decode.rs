//! Finding and reading QR codes in pictures.

use std::path::Path;

/// Why a picture gave no code.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot open picture: {0}")]
    Open(#[from] image::ImageError),
    #[error("no QR code found")]
    NotFound,
}

/// Every QR code's text found in a greyscale picture of `width` x `height`
/// pixels, row-major. Tries the picture as it is, then inverted (dark-mode
/// screens show light modules on dark).
pub fn decode_luma(width: usize, height: usize, luma: &[u8]) -> Vec<String> {
    if width == 0 || height == 0 || luma.len() < width * height {
        return Vec::new();
    }
    let found = decode_once(width, height, |x, y| luma[y * width + x]);
    if !found.is_empty() {
        return found;
    }
    decode_once(width, height, |x, y| 255 - luma[y * width + x])
}

fn decode_once(width: usize, height: usize, pixel: impl FnMut(usize, usize) -> u8) -> Vec<String> {
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(width, height, pixel);
    prepared
        .detect_grids()
        .into_iter()
        .filter_map(|grid| grid.decode().ok().map(|(_, text)| text))
        .collect()
}

/// Opens a picture (PNG or JPEG) and reads every QR code in it.
pub fn decode_file(path: &Path) -> Result<Vec<String>, DecodeError> {
    let luma = image::ImageReader::open(path)
        .map_err(image::ImageError::IoError)?
        .with_guessed_format()
        .map_err(image::ImageError::IoError)?
        .decode()?
        .into_luma8();
    let texts = decode_luma(luma.width() as usize, luma.height() as usize, luma.as_raw());
    if texts.is_empty() {
        return Err(DecodeError::NotFound);
    }
    Ok(texts)
}
