//! Renders the HTML report in headless Chromium to a PNG and checks the
//! charts were drawn: the pixels of the bar colours must be there.
//!
//! What it must never do: let Chromium reach the network or keep a profile
//! (a throw-away --user-data-dir, background networking off).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::report::{FLOTILLA_RGB, LOSE_RGB, WIN_RGB};

/// How many pixels of each chart colour the screenshot has.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Drawn {
    pub flotilla_bar_px: u64,
    pub ratio_bar_px: u64,
    pub width: u32,
    pub height: u32,
}

pub fn screenshot(chromium: &Path, html: &Path, png: &Path, height: u32) -> Result<Drawn> {
    let profile = tempfile::Builder::new()
        .prefix("flotilla-bench-chromium-")
        .tempdir()
        .context("creating Chromium's profile dir")?;
    let html =
        std::fs::canonicalize(html).with_context(|| format!("resolving {}", html.display()))?;
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size=1280,{}", height.clamp(600, 16000)))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", chromium.display()))?;
    if !png.exists() {
        bail!(
            "Chromium wrote no screenshot ({}): {}",
            out.status,
            crate::util::tail(&String::from_utf8_lossy(&out.stderr), 10)
        );
    }
    count_colours(png)
}

/// Counts pixels close to the flotilla bar colour and to the ratio colours.
pub fn count_colours(png_path: &Path) -> Result<Drawn> {
    let file =
        std::fs::File::open(png_path).with_context(|| format!("opening {}", png_path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .with_context(|| format!("decoding {}", png_path.display()))?;
    let size = reader
        .output_buffer_size()
        .context("the screenshot is too large to decode")?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .with_context(|| format!("decoding {}", png_path.display()))?;
    let channels = info.color_type.samples();
    if channels < 3 {
        bail!("{} is not an RGB image", png_path.display());
    }
    let close = |p: &[u8], c: (u8, u8, u8)| {
        p[0].abs_diff(c.0) <= 4 && p[1].abs_diff(c.1) <= 4 && p[2].abs_diff(c.2) <= 4
    };
    let mut d = Drawn {
        width: info.width,
        height: info.height,
        ..Drawn::default()
    };
    for px in buf[..info.buffer_size()].chunks_exact(channels) {
        if close(px, FLOTILLA_RGB) {
            d.flotilla_bar_px += 1;
        } else if close(px, WIN_RGB) || close(px, LOSE_RGB) {
            d.ratio_bar_px += 1;
        }
    }
    Ok(d)
}
