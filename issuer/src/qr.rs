//! Drawing a ticket code as a QR symbol: byte mode, error correction level M,
//! a quiet zone of 4 modules, as PNG (1-bit grey) or SVG.

use std::fmt::Write as _;

use qrcode::bits::Bits;
use qrcode::canvas::{Canvas, MaskPattern};
use qrcode::{Color, EcLevel, Version};

use crate::Error;

/// Modules of light margin around the symbol, as the QR standard asks.
pub const QUIET_ZONE: usize = 4;

const MASKS: [MaskPattern; 8] = [
    MaskPattern::Checkerboard,
    MaskPattern::HorizontalLines,
    MaskPattern::VerticalLines,
    MaskPattern::DiagonalLines,
    MaskPattern::LargeCheckerboard,
    MaskPattern::Fields,
    MaskPattern::Diamonds,
    MaskPattern::Meadow,
];

/// A finished QR symbol: `width` x `width` modules, row-major, `true` for dark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub version: Version,
    pub width: usize,
    pub dark: Vec<bool>,
}

/// Encodes `text` in byte mode at level M, in the smallest version that holds it.
///
/// An automatic encoder might switch to alphanumeric mode for runs of
/// upper-case letters and digits; the VT1 spec asks for byte mode. The
/// `qrcode` crate builds the codewords and draws the modules; the mask is
/// chosen here, with the standard's penalty rules over a flat bitmap, because
/// the crate's own mask search was 90 % of the time of issuing a ticket.
pub fn encode(text: &str) -> Result<Symbol, Error> {
    for v in 1..=40 {
        let version = Version::Normal(v);
        let mut bits = Bits::new(version);
        if bits.push_byte_data(text.as_bytes()).is_err()
            || bits.push_terminator(EcLevel::M).is_err()
        {
            continue;
        }
        let data = bits.into_bytes();
        let (codewords, ec) = qrcode::ec::construct_codewords(&data, version, EcLevel::M)
            .map_err(|e| Error::Invalid(format!("QR encoding failed: {e}")))?;
        let mut canvas = Canvas::new(version, EcLevel::M);
        canvas.draw_all_functional_patterns();
        canvas.draw_data(&codewords, &ec);
        let width = version.width() as usize;
        let best = MASKS
            .iter()
            .map(|&mask| {
                let mut c = canvas.clone();
                c.apply_mask(mask);
                let dark: Vec<bool> = c
                    .into_colors()
                    .into_iter()
                    .map(|m| m == Color::Dark)
                    .collect();
                (penalty(&dark, width), dark)
            })
            .min_by_key(|(score, _)| *score);
        if let Some((_, dark)) = best {
            return Ok(Symbol {
                version,
                width,
                dark,
            });
        }
    }
    Err(Error::Invalid(format!(
        "{} bytes do not fit in a QR code",
        text.len()
    )))
}

/// The mask penalty of ISO/IEC 18004 section 7.8.3: runs of five or more,
/// 2x2 blocks, finder-like 1:1:3:1:1 patterns, and dark/light imbalance.
fn penalty(dark: &[bool], width: usize) -> u32 {
    let at = |x: usize, y: usize| dark[y * width + x];
    let mut score = 0u32;
    let mut column = vec![false; width];
    for i in 0..width {
        score += line_penalty(&dark[i * width..(i + 1) * width]);
        column
            .iter_mut()
            .enumerate()
            .for_each(|(y, c)| *c = at(i, y));
        score += line_penalty(&column);
    }
    for y in 0..width - 1 {
        for x in 0..width - 1 {
            let c = at(x, y);
            if c == at(x + 1, y) && c == at(x, y + 1) && c == at(x + 1, y + 1) {
                score += 3;
            }
        }
    }
    let dark_count = dark.iter().filter(|&&d| d).count();
    let percent = dark_count * 100 / dark.len();
    score + 10 * (percent.abs_diff(50) / 5) as u32
}

/// The penalties of one row or column: 3 + (n - 5) for each run of n >= 5
/// modules of one colour, and 40 for each dark-light-dark-dark-dark-light-dark
/// with four light modules before or after it.
fn line_penalty(cells: &[bool]) -> u32 {
    let mut score = 0;
    let mut run = 0;
    let mut window = 0u16;
    for (j, &cell) in cells.iter().enumerate() {
        run = if j > 0 && cell == cells[j - 1] {
            run + 1
        } else {
            1
        };
        let next_differs = cells.get(j + 1) != Some(&cell);
        if next_differs && run >= 5 {
            score += run - 2;
        }
        window = ((window << 1) | u16::from(cell)) & 0x7ff;
        if j >= 10 && (window == 0b000_0101_1101 || window == 0b101_1101_0000) {
            score += 40;
        }
    }
    score
}

/// A 1-bit greyscale PNG of `symbol`, `scale` pixels a module, with the quiet zone.
pub fn png(symbol: &Symbol, scale: usize) -> Result<Vec<u8>, Error> {
    let scale = scale.max(1);
    let modules = symbol.width;
    let side = (modules + 2 * QUIET_ZONE) * scale;
    let row_bytes = side.div_ceil(8);
    // 1 is white in a 1-bit greyscale PNG: start all white, clear the dark pixels.
    let mut pixels = vec![0xffu8; row_bytes * side];
    for my in 0..modules {
        for mx in 0..modules {
            if !symbol.dark[my * modules + mx] {
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

/// An SVG of `symbol` with the quiet zone, one unit a module, one path for
/// every dark run of a row.
pub fn svg(symbol: &Symbol) -> String {
    let side = symbol.width + 2 * QUIET_ZONE;
    let mut path = String::new();
    for y in 0..symbol.width {
        let row = &symbol.dark[y * symbol.width..(y + 1) * symbol.width];
        let mut x = 0;
        while x < row.len() {
            if !row[x] {
                x += 1;
                continue;
            }
            let start = x;
            while x < row.len() && row[x] {
                x += 1;
            }
            let _ = write!(
                path,
                "M{} {}h{}v1h-{}z",
                start + QUIET_ZONE,
                y + QUIET_ZONE,
                x - start,
                x - start
            );
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" viewBox=\"0 0 {side} {side}\" \
         width=\"{px}\" height=\"{px}\" shape-rendering=\"crispEdges\">\
         <rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/><path fill=\"#000\" d=\"{path}\"/></svg>\n",
        px = side * 8
    )
}

#[cfg(test)]
mod tests {
    use qrcode::Version;

    #[test]
    fn codes_are_byte_mode_at_level_m() {
        // 152 bytes of upper-case letters: byte mode at level M needs version 8;
        // an encoder free to pick alphanumeric mode would fit it in version 6.
        let text = format!("VT1:{}", "A".repeat(148));
        let code = super::encode(&text).unwrap();
        assert_eq!(code.version, Version::Normal(8));
        // One byte more no longer fits version 8.
        assert_eq!(
            super::encode(&format!("{text}A")).unwrap().version,
            Version::Normal(9)
        );
    }

    #[test]
    fn png_has_a_four_module_quiet_zone() {
        let code = super::encode("VT1:test").unwrap();
        let png = super::png(&code, 3).unwrap();
        let img = image::load_from_memory(&png).unwrap().into_luma8();
        let side = (code.width + 8) * 3;
        assert_eq!((img.width() as usize, img.height() as usize), (side, side));
        // The outer 4 modules are white, the finder pattern's corner just inside is dark.
        assert!(
            (0..12).all(|i| img.get_pixel(i, i).0[0] == 255 && img.get_pixel(i, 0).0[0] == 255)
        );
        assert_eq!(img.get_pixel(12, 12).0[0], 0);
    }
}

#[cfg(test)]
mod mask_tests {
    use super::*;

    #[test]
    fn penalty_counts_runs_blocks_finders_and_balance() {
        // Runs: 5 alike cost 3, 7 alike cost 5; 4 alike cost nothing.
        assert_eq!(line_penalty(&[true; 5]), 3);
        assert_eq!(
            line_penalty(&[false, true, true, true, true, true, true, true]),
            5
        );
        assert_eq!(line_penalty(&[true, true, true, true, false]), 0);
        // A finder-like pattern with four light modules after it, and before it.
        let after = [
            true, false, true, true, true, false, true, false, false, false, false,
        ];
        assert_eq!(line_penalty(&after), 40);
        let mut before = after;
        before.reverse();
        assert_eq!(line_penalty(&before), 40);
        // Only three light modules: no finder penalty.
        assert_eq!(line_penalty(&after[..10]), 0);
        // A 5x5 all-light symbol: 10 runs of 5 (3 each), 16 blocks (3 each),
        // 0 % dark (100 points).
        assert_eq!(penalty(&[false; 25], 5), 30 + 48 + 100);
        // A checkerboard has no runs or blocks; 13 of 25 dark is 52 %.
        let board: Vec<bool> = (0..25).map(|i| (i % 5 + i / 5) % 2 == 0).collect();
        assert_eq!(penalty(&board, 5), 0);
    }
}
