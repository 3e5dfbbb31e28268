//! The camera pipeline on pictures: luma taken from YUYV and NV12 frames, and
//! a code held in view for a second is one scan.

use scanner::frames::{FramePipeline, PixelFormat, luma_plane};

use crate::check::code;

/// A 640x480 grey frame with the QR picture of `text` pasted in.
fn frame_with(text: &str) -> image::GrayImage {
    let symbol = issuer::qr::encode(text).unwrap();
    let png = issuer::qr::png(&symbol, 4).unwrap();
    let qr = image::load_from_memory(&png).unwrap().into_luma8();
    let mut frame = image::GrayImage::from_pixel(640, 480, image::Luma([140]));
    image::imageops::overlay(&mut frame, &qr, 120, 60);
    frame
}

fn yuyv(luma: &image::GrayImage) -> Vec<u8> {
    luma.as_raw().iter().flat_map(|&y| [y, 128]).collect()
}

fn nv12(luma: &image::GrayImage) -> Vec<u8> {
    let mut out = luma.as_raw().clone();
    out.extend(std::iter::repeat_n(128u8, luma.as_raw().len() / 2));
    out
}

#[test]
fn luma_comes_straight_from_yuyv_and_nv12() {
    let frame = frame_with(&code(1, false));
    let data = yuyv(&frame);
    let from_yuyv = luma_plane(PixelFormat::Yuyv, 640, 480, &data).unwrap();
    assert_eq!(&*from_yuyv.pixels, frame.as_raw().as_slice());
    let data = nv12(&frame);
    let from_nv12 = luma_plane(PixelFormat::Nv12, 640, 480, &data).unwrap();
    assert!(
        matches!(from_nv12.pixels, std::borrow::Cow::Borrowed(_)),
        "NV12 luma is not copied"
    );
    assert_eq!(&*from_nv12.pixels, frame.as_raw().as_slice());
}

#[test]
fn a_code_held_in_view_is_one_scan_until_it_leaves() {
    let text = code(2, false);
    let frame = yuyv(&frame_with(&text));
    let blank = yuyv(&image::GrayImage::from_pixel(640, 480, image::Luma([140])));
    let mut pipeline = FramePipeline::new(1000);
    let mut scans = Vec::new();
    // One second of 30 fps with the code in view.
    for i in 0..30 {
        scans.extend(
            pipeline
                .process(PixelFormat::Yuyv, 640, 480, &frame, i * 33)
                .unwrap(),
        );
    }
    assert_eq!(scans, vec![text.clone()]);
    // Taken away for two seconds, then shown again: a second scan.
    for i in 0..4 {
        assert!(
            pipeline
                .process(PixelFormat::Yuyv, 640, 480, &blank, 1000 + i * 500)
                .unwrap()
                .is_empty()
        );
    }
    let again = pipeline
        .process(PixelFormat::Yuyv, 640, 480, &frame, 3100)
        .unwrap();
    assert_eq!(again, vec![text]);
}

#[test]
fn short_or_garbage_frames_are_errors_not_panics() {
    let mut pipeline = FramePipeline::default();
    for format in [
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Gray,
        PixelFormat::Rgb,
    ] {
        let err = pipeline
            .process(format, 640, 480, &[0u8; 100], 0)
            .unwrap_err();
        assert!(err.to_string().contains("got 100"), "{err}");
    }
    assert!(
        pipeline
            .process(PixelFormat::Mjpeg, 640, 480, b"not a jpeg", 0)
            .is_err()
    );
    assert!(
        pipeline
            .process(PixelFormat::Gray, 0, 0, &[], 0)
            .unwrap()
            .is_empty()
    );
    let noise: Vec<u8> = (0..640 * 480)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert!(
        pipeline
            .process(PixelFormat::Gray, 640, 480, &noise, 0)
            .unwrap()
            .is_empty()
    );
}
