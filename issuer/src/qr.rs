//! Drawing a ticket code as a QR symbol: byte mode, error correction level M,
//! a quiet zone of 4 modules, as PNG (1-bit grey) or SVG.

use qrcode::bits::Bits;
use qrcode::render::svg;
use qrcode::{Color, EcLevel, QrCode, Version};

use crate::Error;

/// Modules of light margin around the symbol, as the QR standard asks.
pub const QUIET_ZONE: usize = 4;

/// Encodes `text` in byte mode at level M, in the smallest version that holds it.
/// (An automatic encoder might switch to alphanumeric mode for runs of
/// upper-case letters and digits; the VT1 spec asks for byte mode.)
pub fn encode(text: &str) -> Result<QrCode, Error> {
    for v in 1..=40 {
        let mut bits = Bits::new(Version::Normal(v));
        if bits.push_byte_data(text.as_bytes()).is_err()
            || bits.push_terminator(EcLevel::M).is_err()
        {
            continue;
        }
        return QrCode::with_bits(bits, EcLevel::M)
            .map_err(|e| Error::Invalid(format!("QR encoding failed: {e}")));
    }
    Err(Error::Invalid(format!(
        "{} bytes do not fit in a QR code",
        text.len()
    )))
}

/// A 1-bit greyscale PNG of `code`, `scale` pixels a module, with the quiet zone.
pub fn png(code: &QrCode, scale: usize) -> Result<Vec<u8>, Error> {
    let scale = scale.max(1);
    let modules = code.width();
    let side = (modules + 2 * QUIET_ZONE) * scale;
    let row_bytes = side.div_ceil(8);
    let colors = code.to_colors();
    // 1 is white in a 1-bit greyscale PNG: start all white, clear the dark pixels.
    let mut pixels = vec![0xffu8; row_bytes * side];
    for my in 0..modules {
        for mx in 0..modules {
            if colors[my * modules + mx] != Color::Dark {
                continue;
            }
            let (x0, y0) = ((mx + QUIET_ZONE) * scale, (my + QUIET_ZONE) * scale);
            for y in y0..y0 + scale {
                let row = &mut pixels[y * row_bytes..(y + 1) * row_bytes];
                for x in x0..x0 + scale {
                    row[x / 8] &= !(0x80 >> (x % 8));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(side * side / 32 + 256);
    let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::Fast);
    let failed = |e: png::EncodingError| Error::Invalid(format!("PNG encoding failed: {e}"));
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&pixels).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(out)
}

/// An SVG of `code` with the quiet zone.
pub fn svg(code: &QrCode) -> String {
    code.render::<svg::Color<'_>>()
        .quiet_zone(true)
        .module_dimensions(8, 8)
        .build()
}
