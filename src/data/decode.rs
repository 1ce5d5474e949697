//! Image decoding as PIL's `Image.open(path).convert("RGB")`: format from the content, libjpeg
//! for JPEG, truncated files refused, and PIL's decompression-bomb pixel limit.

use anyhow::{anyhow, bail, Result};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};
use mozjpeg_sys::{jpeg_common_struct, JWRN_JPEG_EOF};
use std::os::raw::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;

/// PIL's `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`): above it PIL warns
/// (`DecompressionBombWarning`) but decodes.
pub const PIL_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// Pixel-count limits, checked against the file's header before any pixel is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelLimit {
    /// Above this many pixels, decode with a warning.
    pub warn_above: u64,
    /// Above this many pixels, refuse the file as a possible decompression bomb.
    pub refuse_above: u64,
}

impl PixelLimit {
    /// PIL's defaults: warn above `MAX_IMAGE_PIXELS` (89,478,485), refuse above twice that
    /// (178,956,970 pixels, e.g. 13,377 x 13,377), where PIL raises `DecompressionBombError`.
    /// An image at the limit needs at most 1.4 GB decoded (16-bit RGBA) plus 0.5 GB as RGB.
    pub const PIL: PixelLimit = PixelLimit {
        warn_above: PIL_MAX_IMAGE_PIXELS,
        refuse_above: 2 * PIL_MAX_IMAGE_PIXELS,
    };

    /// `Ok(None)` within the limits, `Ok(Some(warning))` above `warn_above`, an error above
    /// `refuse_above` or for an empty image.
    pub fn check(&self, width: u32, height: u32) -> Result<Option<String>> {
        let n = width as u64 * height as u64;
        if n == 0 {
            bail!("image has zero width or height ({width}x{height})");
        }
        if n > self.refuse_above {
            bail!(
                "{width}x{height} = {n} pixels exceeds the limit of {} pixels, so it is refused \
                 as a possible decompression bomb (as PIL refuses images over its limit). If the \
                 image is genuine, downscale it first",
                self.refuse_above
            );
        }
        Ok((n > self.warn_above).then(|| {
            format!(
                "{width}x{height} = {n} pixels is above {} pixels, where PIL warns of a possible \
                 decompression bomb; decoding it anyway (the limit is {} pixels)",
                self.warn_above, self.refuse_above
            )
        }))
    }

    /// Allocation limit for the `image` crate: the pixel count is checked first, so this only
    /// has to admit the largest allowed image at 16-bit RGBA (8 bytes a pixel), the widest
    /// layout PIL reads, plus decoder scratch space.
    fn image_limits(&self) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_alloc = Some(
            self.refuse_above
                .saturating_mul(8)
                .saturating_add(256 << 20),
        );
        l
    }
}

impl Default for PixelLimit {
    fn default() -> Self {
        PixelLimit::PIL
    }
}

#[derive(Debug)]
/// A decoded image and, when it is above [`PixelLimit::warn_above`], the warning to show.
pub struct Decoded {
    /// The pixels as PIL's `convert("RGB")` gives them.
    pub image: RgbImage,
    /// PIL's `DecompressionBombWarning`, in words, if the image is that large.
    pub warning: Option<String>,
}

/// Decode an image file (format detected from its content, not its extension) and convert it
/// to RGB as PIL's `Image.open(path).convert("RGB")` would (see [`dynamic_to_rgb`]); a warning
/// for very large images goes to stderr (see [`decode_image`]). EXIF orientation is not
/// applied (PIL's `Image.open` does not apply it either).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let d = decode_image(path, &PixelLimit::PIL)?;
    if let Some(w) = d.warning {
        eprintln!("warning: {}: {w}", path.display());
    }
    Ok(d.image)
}

/// [`load_rgb`] with explicit pixel limits, returning the large-image warning instead of
/// printing it. Errors name the file and say what is wrong:
/// - a truncated file (JPEG without its end, PNG/WebP/... cut short) is refused, as PIL
///   raises "image file is truncated" and transformers therefore refuses it;
/// - more pixels than `limit.refuse_above` (from the header, before decoding) is refused as
///   a possible decompression bomb;
/// - JPEG is decoded by libjpeg as PIL does, so JPEGs libjpeg rejects are rejected.
///
/// Multi-frame files (GIF, animated WebP) give their first frame, as PIL's `convert` does.
pub fn decode_image(path: &Path, limit: &PixelLimit) -> Result<Decoded> {
    let fail = |reason: String| anyhow!("cannot read image {}: {reason}", path.display());
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut reader = ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(fail(
            "not a recognised image format (expected JPEG, PNG, GIF, WebP, BMP or TIFF content)"
                .into(),
        ));
    };
    if format == ImageFormat::Jpeg {
        match decode_jpeg(path, limit).map_err(fail)? {
            Jpeg::Rgb(d) => return Ok(d),
            // Validated by libjpeg; the colour conversion is left to the `image` crate.
            Jpeg::Cmyk => {}
        }
    }
    reader.limits(limit.image_limits());
    let mut alloc = limit.image_limits();
    // Decoders should report errors, but a malformed file must never take the process down.
    let decoded = catch_unwind(AssertUnwindSafe(|| -> Result<Decoded, String> {
        let decoder = reader.into_decoder().map_err(|e| image_error(&e))?;
        let (w, h) = decoder.dimensions();
        let warning = limit.check(w, h).map_err(|e| format!("{e:#}"))?;
        alloc
            .reserve(decoder.total_bytes())
            .map_err(|e| image_error(&e))?;
        let img = DynamicImage::from_decoder(decoder).map_err(|e| image_error(&e))?;
        Ok(Decoded {
            image: dynamic_to_rgb(img),
            warning,
        })
    }))
    .map_err(|_| fail("the decoder crashed on this file (corrupt image?)".into()))?;
    decoded.map_err(fail)
}

/// The `image` crate's error in words, saying "truncated" when the data ends early.
fn image_error(e: &ImageError) -> String {
    let eof = match e {
        ImageError::IoError(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        other => {
            let s = other.to_string().to_ascii_lowercase();
            s.contains("eof") || s.contains("end of file") || s.contains("truncated")
        }
    };
    match e {
        ImageError::Limits(_) => format!(
            "{e}: decoding it needs more memory than allowed for an image within the pixel limit"
        ),
        _ if eof => format!(
            "image file is truncated ({e}); PIL refuses it too: re-download or re-export the file"
        ),
        _ => format!("{e} (corrupt or truncated file?)"),
    }
}

/// What libjpeg made of a JPEG.
enum Jpeg {
    /// Decoded to RGB (YCbCr, RGB and grayscale files).
    Rgb(Decoded),
    /// A valid CMYK or YCCK file, left to the `image` crate's colour conversion.
    Cmyk,
}

/// Unwind payload of [`jpeg_emit_message`]: libjpeg hit the end of the file early.
struct JpegTruncated;

/// libjpeg reports a premature end of the data only as a warning (JWRN_JPEG_EOF, "Premature
/// end of JPEG file") and pads the rest of the image with grey; PIL raises "image file is
/// truncated" instead, so this warning stops decoding. Other warnings ("Corrupt JPEG data")
/// are silent, as in PIL.
unsafe extern "C-unwind" fn jpeg_emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: libjpeg calls this with `err` pointing at the error manager it was created with.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == JWRN_JPEG_EOF as c_int {
        resume_unwind(Box::new(JpegTruncated));
    }
}

/// libjpeg's fatal errors unwind (mozjpeg-sys is built with unwinding) with the message.
unsafe extern "C-unwind" fn jpeg_error_exit(cinfo: &mut jpeg_common_struct) {
    // libjpeg's JMSG_LENGTH_MAX is 200.
    let mut buf = [0u8; 200];
    // SAFETY: `format_message` writes at most JMSG_LENGTH_MAX bytes into the buffer; the binding
    // declares the buffer as `&[u8; 80]`, which has the same ABI as a pointer.
    let msg = unsafe {
        match (*cinfo.err).format_message {
            Some(f) => {
                let f: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
                    std::mem::transmute(f);
                f(cinfo, buf.as_mut_ptr());
                let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
                String::from_utf8_lossy(&buf[..end]).into_owned()
            }
            None => format!("error code {}", (*cinfo.err).msg_code),
        }
    };
    resume_unwind(Box::new(msg));
}

fn jpeg_error_mgr() -> mozjpeg_sys::jpeg_error_mgr {
    // SAFETY: a zeroed jpeg_error_mgr is what jpeg_std_error expects to fill in.
    unsafe {
        let mut err: mozjpeg_sys::jpeg_error_mgr = std::mem::zeroed();
        mozjpeg_sys::jpeg_std_error(&mut err);
        err.error_exit = Some(jpeg_error_exit);
        err.emit_message = Some(jpeg_emit_message);
        err
    }
}

/// JPEG through libjpeg (mozjpeg, the libjpeg-turbo decoder: ISLOW IDCT, fancy upsampling),
/// which gives PIL's pixels exactly, reading up to the end-of-image marker so that a file cut
/// short is refused as PIL refuses it. Errors are reasons, without the file name.
fn decode_jpeg(path: &Path, limit: &PixelLimit) -> std::result::Result<Jpeg, String> {
    let io = |e: std::io::Error| e.to_string();
    let run = || -> std::result::Result<Jpeg, String> {
        let d = mozjpeg::Decompress::builder()
            .with_err(jpeg_error_mgr())
            .from_path(path)
            .map_err(io)?;
        let (w, h) = d.size();
        let warning = limit
            .check(w as u32, h as u32)
            .map_err(|e| format!("{e:#}"))?;
        if matches!(
            d.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        ) {
            // Decoded only to refuse corrupt or truncated files as PIL does.
            let mut s = d.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK).map_err(io)?;
            s.read_scanlines::<u8>().map_err(io)?;
            s.finish().map_err(io)?;
            return Ok(Jpeg::Cmyk);
        }
        let mut s = d.rgb().map_err(io)?;
        let (w, h) = (s.width() as u32, s.height() as u32);
        let px = s.read_scanlines::<u8>().map_err(io)?;
        s.finish().map_err(io)?;
        let image = RgbImage::from_raw(w, h, px)
            .ok_or_else(|| "libjpeg returned fewer pixels than the image size".to_string())?;
        Ok(Jpeg::Rgb(Decoded { image, warning }))
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(p) if p.is::<JpegTruncated>() => Err(
            "image file is truncated (libjpeg: Premature end of JPEG file); PIL refuses it too: \
             re-download or re-export the file"
                .into(),
        ),
        Err(p) => Err(match p.downcast::<String>() {
            Ok(msg) => format!("libjpeg: {msg} (corrupt JPEG?)"),
            Err(_) => "the JPEG decoder crashed on this file (corrupt JPEG?)".into(),
        }),
    }
}

/// RGB from interleaved samples with `C` channels, one pixel at a time through `f`.
fn rgb_from<T: Copy, const C: usize>(
    w: u32,
    h: u32,
    src: &[T],
    f: impl Fn(&[T]) -> [u8; 3],
) -> RgbImage {
    let mut out = Vec::with_capacity(src.len() / C * 3);
    for p in src.chunks_exact(C) {
        out.extend_from_slice(&f(p));
    }
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

/// Convert a decoded image to 8-bit RGB exactly as PIL's `convert("RGB")` would for the mode
/// PIL opens that file in:
/// - gray (L) is replicated to R=G=B; alpha channels are dropped (no compositing);
/// - 16-bit gray (PIL mode `I;16`/`I`) is *clamped* to 0..=255 (PIL's `I;16 -> RGB`
///   conversion saturates, it does not scale);
/// - 16-bit RGB/RGBA/LA (PIL unpacks these with `RGB;16B`-style rawmodes) keep the high byte
///   (`v >> 8`);
/// - float images (not produced by the formats we target) use the `image` crate's conversion.
pub fn dynamic_to_rgb(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => rgb_from::<u8, 4>(w, h, i.as_raw(), |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(i) => rgb_from::<u8, 1>(w, h, i.as_raw(), |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(i) => rgb_from::<u8, 2>(w, h, i.as_raw(), |p| [p[0]; 3]),
        DynamicImage::ImageLuma16(i) => {
            rgb_from::<u16, 1>(w, h, i.as_raw(), |p| [p[0].min(255) as u8; 3])
        }
        DynamicImage::ImageLumaA16(i) => {
            rgb_from::<u16, 2>(w, h, i.as_raw(), |p| [(p[0] >> 8) as u8; 3])
        }
        DynamicImage::ImageRgb16(i) => rgb_from::<u16, 3>(w, h, i.as_raw(), |p| {
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(i) => rgb_from::<u16, 4>(w, h, i.as_raw(), |p| {
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_limit_follows_pil() {
        let l = PixelLimit::PIL;
        assert_eq!(l.refuse_above, 178_956_970);
        assert_eq!(l.check(9459, 9459).unwrap(), None); // 89,472,681 pixels
        let w = l
            .check(12000, 12000)
            .unwrap()
            .expect("warning above 89.5 MP");
        assert!(w.contains("144000000 pixels"), "{w}");
        let e = l.check(20000, 20000).unwrap_err().to_string();
        assert!(
            e.contains("decompression bomb") && e.contains("178956970"),
            "{e}"
        );
        assert!(l.check(0, 5).is_err());
        // u32 x u32 does not overflow.
        assert!(l.check(u32::MAX, u32::MAX).is_err());
    }
}
