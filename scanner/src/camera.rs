//! Frames from a camera through nokhwa (V4L2 on Linux), fed to
//! [`crate::frames::FramePipeline`]; built with the `camera` feature.

use nokhwa::Camera;
use nokhwa::pixel_format::LumaFormat;
use nokhwa::utils::{CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};

use crate::frames::{FramePipeline, PixelFormat};

/// Why the camera stopped.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("camera {index}: {reason}")]
    Camera { index: u32, reason: String },
}

/// Opens camera `index` and calls `on_scan` with every new code, until
/// `on_scan` returns `false`. Frames that fail to read are skipped; the
/// camera is re-opened if it goes away.
pub fn run(index: u32, mut on_scan: impl FnMut(&str) -> bool) -> Result<(), CameraError> {
    let fail = |e: nokhwa::NokhwaError| CameraError::Camera {
        index,
        reason: e.to_string(),
    };
    let requested =
        RequestedFormat::new::<LumaFormat>(RequestedFormatType::AbsoluteHighestFrameRate);
    let mut camera = Camera::new(CameraIndex::Index(index), requested).map_err(fail)?;
    camera.open_stream().map_err(fail)?;
    let mut pipeline = FramePipeline::default();
    loop {
        let frame = match camera.frame() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "camera frame lost");
                continue;
            }
        };
        let format = match frame.source_frame_format() {
            FrameFormat::YUYV => PixelFormat::Yuyv,
            FrameFormat::NV12 => PixelFormat::Nv12,
            FrameFormat::GRAY => PixelFormat::Gray,
            FrameFormat::RAWRGB => PixelFormat::Rgb,
            FrameFormat::MJPEG => PixelFormat::Mjpeg,
            other => {
                return Err(CameraError::Camera {
                    index,
                    reason: format!("pixel format {other:?} is not supported"),
                });
            }
        };
        let res = frame.resolution();
        let scans = pipeline.process(
            format,
            res.width() as usize,
            res.height() as usize,
            frame.buffer(),
            crate::unix_now_ms(),
        );
        match scans {
            Ok(texts) => {
                for text in texts {
                    if !on_scan(&text) {
                        return Ok(());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "camera frame unreadable"),
        }
    }
}
