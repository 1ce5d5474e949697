//! Integration tests of the data layer's refusals and reports: truncated images, the pixel
//! limit (decompression bombs), GIF decoding, directory walks that list what they skip, and
//! the loader's unreadable-image accounting.

use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use std::path::{Path, PathBuf};
use vitgpu::data::{
    decode_image, load_rgb, walk_images, Batch, Dataset, Loader, PixelLimit, PreprocessorConfig,
    Sample, Source, Unreadable,
};

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(file)
}

/// A fresh scratch directory for files a test writes itself.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitgpu-data-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The error of `load_rgb(path)`, which must name the file.
fn load_err(path: &Path) -> String {
    let e = match load_rgb(path) {
        Ok(img) => panic!(
            "{} decoded ({}x{}) but should be refused",
            path.display(),
            img.width(),
            img.height()
        ),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.starts_with("cannot read image ") && e.contains(&path.display().to_string()),
        "error does not name the file: {e}"
    );
    e
}

/// Writes the first `len` bytes of `src` to `dir/name`.
fn truncated_copy(src: &[u8], len: usize, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, &src[..len]).unwrap();
    p
}

#[test]
fn truncated_jpegs_are_refused_like_pil() {
    let dir = scratch("trunc-jpeg");
    for file in ["rocket.jpg", "cat_small.jpg"] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        assert_eq!(
            &bytes[bytes.len() - 2..],
            [0xFF, 0xD9],
            "{file} ends with EOI"
        );
        let whole = load_rgb(&fixture(file)).unwrap();
        // Cut inside the entropy-coded data, and just the end-of-image marker missing (libjpeg
        // still gets every scanline there, but PIL reads to the EOI and refuses the file).
        for len in [bytes.len() / 2, bytes.len() * 9 / 10, bytes.len() - 2] {
            let p = truncated_copy(&bytes, len, &dir, &format!("{len}_{file}"));
            let e = load_err(&p);
            assert!(
                e.contains("truncated") && e.contains("Premature end of JPEG file"),
                "{file} cut to {len} bytes: {e}"
            );
        }
        // Data after the EOI marker is ignored, by libjpeg and PIL alike.
        let mut padded = bytes.clone();
        padded.extend_from_slice(b"trailing bytes");
        let p = dir.join(format!("padded_{file}"));
        std::fs::write(&p, &padded).unwrap();
        assert!(load_rgb(&p).unwrap() == whole, "{file} with trailing data");
    }
    // corrupt.jpg is rocket.jpg's first 300 bytes and 1,200 random ones: libjpeg's error.
    let e = load_err(&fixture("corrupt.jpg"));
    assert!(e.contains("libjpeg: ") && e.contains("corrupt JPEG"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A GIF of `w` x `h` whose first frame is a pattern over a 4-colour palette (so that its data
/// does not compress to a few bytes), and with `two_frames`, a second frame all red.
/// Returns the first frame's pixels.
fn write_gif(path: &Path, w: u32, h: u32, two_frames: bool) -> RgbImage {
    let colours = [[0u8, 0, 0], [255, 255, 255], [10, 200, 30], [90, 40, 250]];
    let first = RgbaImage::from_fn(w, h, |x, y| {
        let c = colours[((x * 7 + y * y * 3 + x * y) % 4) as usize];
        Rgba([c[0], c[1], c[2], 255])
    });
    let mut frames = vec![image::Frame::new(first.clone())];
    if two_frames {
        frames.push(image::Frame::new(RgbaImage::from_pixel(
            w,
            h,
            Rgba([255, 0, 0, 255]),
        )));
    }
    let file = std::fs::File::create(path).unwrap();
    image::codecs::gif::GifEncoder::new(file)
        .encode_frames(frames)
        .unwrap();
    RgbImage::from_fn(w, h, |x, y| {
        let p = first.get_pixel(x, y).0;
        Rgb([p[0], p[1], p[2]])
    })
}

#[test]
fn truncated_lossless_files_are_refused() {
    let dir = scratch("trunc-lossless");
    let gif = dir.join("source.gif");
    write_gif(&gif, 64, 48, false);
    for src in [
        fixture("cat.png"),
        fixture("gray.png"),
        fixture("logo_rgba.png"),
        fixture("cat.webp"),
        fixture("cat.bmp"),
        fixture("cat.tiff"),
        gif,
    ] {
        let bytes = std::fs::read(&src).unwrap();
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        // Inside the pixel data: past every header, short of the last pixels.
        for len in [bytes.len() / 2, bytes.len() * 9 / 10] {
            let p = truncated_copy(&bytes, len, &dir, &format!("{len}_{name}"));
            let e = load_err(&p);
            assert!(e.contains("truncated"), "{name} cut to {len} bytes: {e}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gif_decodes_its_first_frame() {
    let dir = scratch("gif");
    let p = dir.join("anim.gif");
    let want = write_gif(&p, 7, 5, true);
    let got = load_rgb(&p).unwrap();
    assert!(got == want, "first frame differs");
    // The format comes from the content, and a walk takes .gif files.
    let w = walk_images(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(w.images, vec![p]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A PNG of one colour, built row by row (nothing of its size in memory): each row is filter
/// byte 0 + `width * 4` bytes of RGBA.
fn write_flat_png(path: &Path, width: u32, height: u32, rgba: [u8; 4]) {
    use std::io::Write;
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no filter, no interlace
    let mut row = vec![0u8];
    for _ in 0..width {
        row.extend_from_slice(&rgba);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    for _ in 0..height {
        z.write_all(&row).unwrap();
    }
    let idat = z.finish().unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}

#[test]
fn pixel_limit_warns_then_refuses() {
    let dir = scratch("limit");
    let limit = PixelLimit {
        warn_above: 1000,
        refuse_above: 2000,
    };
    let small = dir.join("small.png");
    write_flat_png(&small, 40, 25, [1, 2, 3, 255]); // 1000 pixels: at the warning threshold
    let d = decode_image(&small, &limit).unwrap();
    assert_eq!(d.image.dimensions(), (40, 25));
    assert_eq!(d.warning, None);
    let big = dir.join("big.png");
    write_flat_png(&big, 50, 40, [1, 2, 3, 255]); // 2000: warned, decoded
    let d = decode_image(&big, &limit).unwrap();
    assert!(d.image.pixels().all(|p| p.0 == [1, 2, 3]));
    let w = d.warning.expect("a warning above warn_above");
    assert!(
        w.contains("2000 pixels") && w.contains("decompression bomb"),
        "{w}"
    );
    let bomb = dir.join("bomb.png");
    write_flat_png(&bomb, 50, 41, [1, 2, 3, 255]); // 2050: refused
    let e = format!("{:#}", decode_image(&bomb, &limit).unwrap_err());
    assert!(
        e.contains(&bomb.display().to_string())
            && e.contains("decompression bomb")
            && e.contains("limit of 2000 pixels"),
        "{e}"
    );
    // JPEG is checked from its header too: rocket.jpg is 640x427 = 273,280 pixels.
    let e = format!(
        "{:#}",
        decode_image(&fixture("rocket.jpg"), &limit).unwrap_err()
    );
    assert!(
        e.contains("640x427") && e.contains("decompression bomb"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let dir = scratch("bomb");
    // A PNG whose header claims 20000x20000 (400 MP) but whose data is empty: refused before
    // any pixel is decoded or allocated, under PIL's default limit.
    let p = dir.join("claims_400mp.png");
    let mut png = std::fs::read(fixture("gray.png")).unwrap();
    png[16..20].copy_from_slice(&20000u32.to_be_bytes());
    png[20..24].copy_from_slice(&20000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    std::fs::write(&p, &png).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("20000x20000 = 400000000 pixels")
            && e.contains("decompression bomb")
            && e.contains("178956970"),
        "{e}"
    );
    // A JPEG whose frame header claims 60000x60000.
    let mut jpg = std::fs::read(fixture("cat_small.jpg")).unwrap();
    let sof = jpg
        .windows(2)
        .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2))
        .expect("a SOF marker");
    jpg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    let p = dir.join("claims_3600mp.jpg");
    std::fs::write(&p, &jpg).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("60000x60000") && e.contains("decompression bomb"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// 12000 x 12000 RGBA (576 MB decoded) is within PIL's limit: it decodes, with PIL's warning.
/// (The `image` crate's default 512 MiB allocation limit used to refuse it.)
#[test]
fn large_valid_png_decodes() {
    let dir = scratch("large");
    let p = dir.join("12000.png");
    let t = std::time::Instant::now();
    write_flat_png(&p, 12000, 12000, [200, 100, 50, 128]);
    let written = t.elapsed();
    let d = decode_image(&p, &PixelLimit::PIL).unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "written in {written:?}, decoded in {:?}",
        t.elapsed() - written
    );
    assert_eq!(d.image.dimensions(), (12000, 12000));
    assert!(d
        .warning
        .as_ref()
        .is_some_and(|w| w.contains("144000000 pixels")));
    assert_eq!(d.image.get_pixel(11999, 11999).0, [200, 100, 50]);
    assert_eq!(d.image.get_pixel(0, 0).0, [200, 100, 50]);
    drop(d);
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn walks_list_what_they_skip() {
    use std::os::unix::fs::symlink;
    let dir = scratch("walk");
    RgbImage::new(2, 2).save(dir.join("a.png")).unwrap();
    write_gif(&dir.join("b.gif"), 2, 2, false);
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    symlink(dir.join("missing.png"), dir.join("gone.png")).unwrap();
    symlink("loop.png", dir.join("loop.png")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    RgbImage::new(2, 2)
        .save_with_format(dir.join("sub/c.jpg"), ImageFormat::Jpeg)
        .unwrap();
    symlink("..", dir.join("sub/up")).unwrap();

    let w = walk_images(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(
        w.images,
        ["a.png", "b.gif", "sub/c.jpg"].map(|f| dir.join(f)),
        "images"
    );
    let skipped: Vec<(String, &str)> = w
        .skipped
        .iter()
        .map(|s| {
            let rel = s.path.strip_prefix(&dir).unwrap().display().to_string();
            (rel, s.reason.as_str())
        })
        .collect();
    let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["gone.png", "loop.png", "notes.txt", "sock", "sub/up"],
        "{skipped:#?}"
    );
    let reason = |n: &str| skipped.iter().find(|(k, _)| k == n).unwrap().1;
    assert!(reason("gone.png").contains("broken symbolic link"));
    assert!(reason("loop.png").contains("symbolic link cannot be followed"));
    assert!(reason("notes.txt").contains("not an image file (extension .txt"));
    assert!(reason("sock").contains("not a regular file"));
    assert!(reason("sub/up").contains("already walked"));
    assert_eq!(w.total(), 8);

    // Inputs given by name: a broken link is an error naming it, a file is kept as given.
    let e = format!("{:#}", walk_images(&[dir.join("gone.png")]).unwrap_err());
    assert!(
        e.contains("gone.png") && e.contains("broken symbolic link"),
        "{e}"
    );
    let notes = walk_images(&[dir.join("notes.txt")]).unwrap();
    assert_eq!(notes.images, vec![dir.join("notes.txt")]);
    assert!(walk_images(&[dir.join("nope")]).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn image_folder_lists_skipped_entries() {
    use std::os::unix::fs::symlink;
    let dir = scratch("folder");
    let elsewhere = scratch("folder-bird");
    for (class, file) in [("cat", "a.png"), ("dog", "b.png")] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        RgbImage::new(2, 2)
            .save(dir.join(class).join(file))
            .unwrap();
    }
    RgbImage::new(2, 2).save(elsewhere.join("c.png")).unwrap();
    // A class folder that is a symbolic link is a class, as in torchvision's ImageFolder.
    symlink(&elsewhere, dir.join("bird")).unwrap();
    std::fs::write(dir.join("cat/readme.txt"), "x").unwrap();
    std::fs::write(dir.join("README.md"), "x").unwrap();
    symlink(dir.join("nothing"), dir.join("dog/broken.png")).unwrap();

    let ds = Dataset::image_folder(&dir, 0.0, 0).unwrap();
    assert_eq!(ds.classes, ["bird", "cat", "dog"]);
    assert_eq!(ds.train.len(), 3);
    let mut skipped: Vec<String> = ds
        .skipped
        .iter()
        .map(|s| s.path.strip_prefix(&dir).unwrap().display().to_string())
        .collect();
    skipped.sort();
    assert_eq!(skipped, ["README.md", "cat/readme.txt", "dog/broken.png"]);
    let readme = ds.skipped.iter().find(|s| s.path.ends_with("README.md"));
    assert!(readme.unwrap().reason.contains("not inside a class folder"));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&elsewhere).ok();
}

#[test]
fn loader_reports_unreadable_images() {
    let file = |f: &str, label| Sample::new(Source::File(fixture(f)), label);
    let samples = vec![
        file("corrupt.jpg", 0),
        file("not_an_image.png", 1),
        file("cat_small.jpg", 0),
        file("corrupt.jpg", 1),
    ];
    let pre = PreprocessorConfig::default().with_size(8, 8);
    let loader = Loader::start(samples.clone(), vec![0, 1, 2, 3], 2, pre, false, 0);
    let (first, second) = (loader.next().unwrap(), loader.next().unwrap());
    // First batch: nothing readable, an error naming both files.
    assert_eq!((first.labels.len(), first.requested()), (0, 2));
    let e = format!("{:#}", first.check_readable().unwrap_err());
    assert!(
        e.contains("none of the 2 images")
            && e.contains("corrupt.jpg: cannot read image")
            && e.contains("not_an_image.png"),
        "{e}"
    );
    // Second batch: one of two readable, which is fine.
    assert_eq!(second.labels, [0]);
    assert_eq!(second.indices, [2]);
    assert_eq!(second.failed.len(), 1);
    second.check_readable().unwrap();

    // Over a run, each unreadable file is counted once.
    let mut u = Unreadable::default();
    for b in [&first, &second, &first] {
        u.add(&b.failed);
    }
    assert_eq!(u.len(), 2);
    assert!(u
        .summary()
        .starts_with("2 unreadable images were skipped: "));
    u.check_not_all(4, "the training split").unwrap();
    let e = u.check_not_all(2, "the training split").unwrap_err();
    assert!(e
        .to_string()
        .contains("none of the 2 images of the training split"));

    // Cached features: a sample without features is reported the same way.
    let feats = vec![None, Some(vec![1.0, 2.0])];
    let b = Batch::from_features(&feats, &[0, 1], &samples[..2]);
    assert_eq!((b.labels.len(), b.failed.len()), (1, 1));
    let b = Batch::from_features(&feats, &[0], &samples[..2]);
    assert!(b.check_readable().is_err());
    // An empty batch is not an error.
    assert!(Batch::from_features(&feats, &[], &samples)
        .check_readable()
        .is_ok());
}

/// A scratch folder holding `n` empty "images" img/000.png.. (CSV reading checks only that
/// the files exist) and the CSV files given as (name, text).
fn csv_dir(tag: &str, n: usize, files: &[(&str, &str)]) -> PathBuf {
    let d = scratch(tag);
    std::fs::create_dir_all(d.join("img")).unwrap();
    for i in 0..n {
        std::fs::write(d.join(format!("img/{i:03}.png")), b"").unwrap();
    }
    for (name, text) in files {
        std::fs::write(d.join(name), text).unwrap();
    }
    d
}

fn paths_of(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .map(|s| {
            let p = s.describe();
            p[p.len() - 7..].to_string()
        })
        .collect()
}

/// The three CSV forms: labels sorted by name (as ImageFolder classes), paths relative to the
/// CSV's folder, quoted fields, a spreadsheet's BOM, `;`-separated labels (none allowed) and
/// 0/1 columns; --val-fraction 0 keeps every row in file order (what --no-shuffle trains on).
#[test]
fn csv_forms_labels_sorted_and_rows_in_file_order() {
    use vitgpu::data::{CsvForm, CsvSplits, CsvTable};
    let d = csv_dir(
        "csvforms",
        4,
        &[
            (
                "single.csv",
                "\u{feff}path,label,notes\nimg/002.png,zebra,x\n\"img/000.png\",ant,\"a, b\"\nimg/001.png,zebra,\nimg/003.png,moth,\n",
            ),
            (
                "multi.csv",
                "path,labels\nimg/000.png,cat;dog\nimg/001.png,\nimg/002.png, dog ; bird\nimg/003.png,cat\n",
            ),
            (
                "cols.csv",
                "path,tumor,edema,normal\nimg/000.png,1,0,0\nimg/001.png,0,0,0\nimg/002.png,1,1,0\nimg/003.png,0,0,1\n",
            ),
        ],
    );
    let splits = |f: &str| CsvSplits {
        train: d.join(f),
        val_fraction: 0.0,
        ..Default::default()
    };
    let ds = Dataset::from_csv(&splits("single.csv")).unwrap();
    assert_eq!(ds.classes, ["ant", "moth", "zebra"]);
    assert!(!ds.multi_label && ds.validation.is_empty());
    assert_eq!(
        paths_of(&ds.train),
        ["002.png", "000.png", "001.png", "003.png"]
    );
    let labels: Vec<usize> = ds.train.iter().map(|s| s.label).collect();
    assert_eq!(labels, [2, 0, 2, 1]);
    assert!(ds.train.iter().all(|s| s.labels.is_none()));
    assert!(ds.train[0].describe().starts_with(d.to_str().unwrap()));

    let ds = Dataset::from_csv(&splits("multi.csv")).unwrap();
    assert_eq!(ds.classes, ["bird", "cat", "dog"]);
    assert!(ds.multi_label);
    let pos: Vec<Vec<usize>> = ds.train.iter().map(|s| s.positives().to_vec()).collect();
    assert_eq!(pos, vec![vec![1, 2], vec![], vec![0, 2], vec![1]]);

    let t = CsvTable::read(&d.join("cols.csv"), None).unwrap();
    assert_eq!(
        t.form,
        CsvForm::Columns(vec!["tumor".into(), "edema".into(), "normal".into()])
    );
    let ds = Dataset::from_csv(&splits("cols.csv")).unwrap();
    assert_eq!(ds.classes, ["edema", "normal", "tumor"]);
    let pos: Vec<Vec<usize>> = ds.train.iter().map(|s| s.positives().to_vec()).collect();
    assert_eq!(pos, vec![vec![2], vec![], vec![0, 2], vec![1]]);
    std::fs::remove_dir_all(&d).ok();
}

/// Bad CSV rows are errors naming the file and the row (the header is row 1): a missing
/// image, a label the training CSV does not have, a cell that is not 0/1, an empty label, a
/// missing column, an empty group.
#[test]
fn csv_errors_name_the_row() {
    use vitgpu::data::CsvSplits;
    let d = csv_dir(
        "csverrors",
        3,
        &[
            (
                "train.csv",
                "path,label\nimg/000.png,cat\nimg/001.png,dog\n",
            ),
            (
                "missing.csv",
                "path,label\nimg/000.png,cat\nimg/009.png,dog\nimg/001.png,dog\n",
            ),
            (
                "val.csv",
                "path,label\nimg/000.png,cat\nimg/001.png,dog\nimg/002.png,bird\n",
            ),
            ("cols.csv", "path,a,b\nimg/000.png,1,0\nimg/001.png,0,yes\n"),
            ("empty.csv", "path,label\nimg/000.png,cat\nimg/001.png,\n"),
            ("nopath.csv", "file,label\nimg/000.png,cat\n"),
            (
                "groups.csv",
                "path,label,patient\nimg/000.png,cat,p1\nimg/001.png,dog,\n",
            ),
        ],
    );
    let err = |train: &str, val: Option<&str>, group: Option<&str>| {
        let s = CsvSplits {
            train: d.join(train),
            validation: val.map(|v| d.join(v)),
            group_column: group.map(str::to_string),
            val_fraction: 0.0,
            ..Default::default()
        };
        format!("{:#}", Dataset::from_csv(&s).unwrap_err())
    };
    let e = err("missing.csv", None, None);
    assert!(
        e.contains("missing.csv")
            && e.contains("row 3")
            && e.contains("009.png")
            && e.contains("does not exist"),
        "{e}"
    );
    let e = err("train.csv", Some("val.csv"), None);
    assert!(
        e.contains("val.csv")
            && e.contains("row 4")
            && e.contains("unknown label 'bird'")
            && e.contains("cat, dog"),
        "{e}"
    );
    let e = err("cols.csv", None, None);
    assert!(
        e.contains("row 3") && e.contains("`b`") && e.contains("'yes'"),
        "{e}"
    );
    let e = err("empty.csv", None, None);
    assert!(e.contains("row 3") && e.contains("empty"), "{e}");
    let e = err("nopath.csv", None, None);
    assert!(
        e.contains("no `path` column") && e.contains("file,label"),
        "{e}"
    );
    let e = err("groups.csv", None, Some("patient"));
    assert!(e.contains("row 3") && e.contains("patient"), "{e}");
    let e = err("train.csv", None, Some("site"));
    assert!(
        e.contains("--group-column site") && e.contains("no such column"),
        "{e}"
    );
    std::fs::remove_dir_all(&d).ok();
}

/// `--group-column`: whatever the seed and fraction, single- or multi-label, every group's
/// rows land on one side; the validation share is near the fraction, each label appears on
/// both sides where it can (stratified), and both sides keep the file's row order.
#[test]
fn a_group_never_straddles_the_validation_split() {
    use vitgpu::data::CsvSplits;
    // 60 rows, 17 patients of 1-6 rows; labels follow the row, so groups mix labels.
    let mut single = String::from("path,label,patient\n");
    let mut multi = String::from("path,labels,patient\n");
    let mut patient = Vec::new();
    let (mut p, mut left) = (0, 1);
    for i in 0..60 {
        if left == 0 {
            p += 1;
            left = 1 + (p * 7) % 6;
        }
        left -= 1;
        patient.push(format!("p{p}"));
        let l = ["a", "b", "c"][i % 3];
        single += &format!("img/{i:03}.png,{l},p{p}\n");
        let m = match i % 4 {
            0 => "a;b",
            1 => "",
            2 => "c",
            _ => "b;c",
        };
        multi += &format!("img/{i:03}.png,{m},p{p}\n");
    }
    let d = csv_dir(
        "csvgroups",
        60,
        &[("single.csv", &single), ("multi.csv", &multi)],
    );
    let groups = patient
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(groups >= 15, "{groups} groups");
    for file in ["single.csv", "multi.csv"] {
        for seed in [0, 1, 7, 42] {
            for fraction in [0.1, 0.2, 0.3] {
                let s = CsvSplits {
                    train: d.join(file),
                    val_fraction: fraction,
                    seed,
                    group_column: Some("patient".into()),
                    ..Default::default()
                };
                let ds = Dataset::from_csv(&s).unwrap();
                let row = |s: &Sample| {
                    s.describe()[s.describe().len() - 7..][..3]
                        .parse::<usize>()
                        .unwrap()
                };
                let train: Vec<usize> = ds.train.iter().map(row).collect();
                let val: Vec<usize> = ds.validation.iter().map(row).collect();
                assert_eq!(train.len() + val.len(), 60);
                assert!(
                    train.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1])
                );
                let side = |rows: &[usize]| {
                    rows.iter()
                        .map(|&r| patient[r].clone())
                        .collect::<std::collections::BTreeSet<_>>()
                };
                let (tg, vg) = (side(&train), side(&val));
                assert!(
                    tg.is_disjoint(&vg),
                    "{file} seed {seed} fraction {fraction}: {:?} on both sides",
                    tg.intersection(&vg).collect::<Vec<_>>()
                );
                let share = val.len() as f64 / 60.0;
                assert!(
                    (share - fraction).abs() <= 0.08,
                    "{file} seed {seed}: validation share {share} for {fraction}"
                );
                for l in 0..ds.classes.len() {
                    let has = |v: &[Sample]| v.iter().any(|s| s.positives().contains(&l));
                    assert!(
                        has(&ds.train) && has(&ds.validation),
                        "{file} seed {seed} fraction {fraction}: label {l} not on both sides"
                    );
                }
            }
        }
    }
    // Without groups a single-label CSV splits per class as an image folder does.
    let s = CsvSplits {
        train: d.join("single.csv"),
        val_fraction: 0.2,
        seed: 3,
        ..Default::default()
    };
    let ds = Dataset::from_csv(&s).unwrap();
    for c in 0..3 {
        assert_eq!(ds.validation.iter().filter(|s| s.label == c).count(), 4);
    }
    std::fs::remove_dir_all(&d).ok();
}
