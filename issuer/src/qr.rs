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

#[cfg(test)]
mod tests {
    use qrcode::{EcLevel, Version};

    #[test]
    fn codes_are_byte_mode_at_level_m() {
        // 152 bytes of upper-case letters: byte mode at level M needs version 8;
        // an encoder free to pick alphanumeric mode would fit it in version 6.
        let text = format!("VT1:{}", "A".repeat(148));
        let code = super::encode(&text).unwrap();
        assert_eq!(code.error_correction_level(), EcLevel::M);
        assert_eq!(code.version(), Version::Normal(8));
        // One byte more no longer fits version 8.
        assert_eq!(
            super::encode(&format!("{text}A")).unwrap().version(),
            Version::Normal(9)
        );
    }

    #[test]
    fn png_has_a_four_module_quiet_zone() {
        let code = super::encode("VT1:test").unwrap();
        let png = super::png(&code, 3).unwrap();
        let img = image::load_from_memory(&png).unwrap().into_luma8();
        let side = (code.width() + 8) * 3;
        assert_eq!((img.width() as usize, img.height() as usize), (side, side));
        // The outer 4 modules are white, the finder pattern's corner just inside is dark.
        assert!(
            (0..12).all(|i| img.get_pixel(i, i).0[0] == 255 && img.get_pixel(i, 0).0[0] == 255)
        );
        assert_eq!(img.get_pixel(12, 12).0[0], 0);
    }
}
