//! SVG plots of a run, drawn with `plotters` (SVG backend only, no font
//! stack: text is left to the SVG viewer).
//!
//! - `latency.svg`: histogram of handshake latencies.
//! - `trusted_pairs.svg`: pairs trusting each other over time.
//! - `relay_queue.svg`: envelopes queued at relays over time.
//!
//! This module only reads a finished report and writes files; it must never
//! be needed for a run's result (a plot that fails is a warning).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Report;

const SIZE: (u32, u32) = (900, 520);

/// Writes every plot into `dir`; returns the files written.
pub fn write_all(dir: &Path, report: &Report, latencies: &[u64]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let label = format!(
        "{} ({}, seed {})",
        report.scenario, report.mode, report.seed
    );

    let path = dir.join("latency.svg");
    latency_histogram(&path, &label, latencies).map_err(|e| format!("latency.svg: {e}"))?;
    files.push(path);

    let secs: Vec<f64> = report
        .series
        .t_ms
        .iter()
        .map(|t| *t as f64 / 1000.0)
        .collect();
    let path = dir.join("trusted_pairs.svg");
    line(
        &path,
        &format!("Trusted pairs over time — {label}"),
        "pairs trusting each other",
        &secs,
        &report.series.trusted_pairs,
        &BLUE,
    )
    .map_err(|e| format!("trusted_pairs.svg: {e}"))?;
    files.push(path);

    let path = dir.join("relay_queue.svg");
    let title = if report.nodes.relays == 0 {
        format!("Relay queue over time — {label} (no relays)")
    } else {
        format!("Relay queue over time — {label}")
    };
    line(
        &path,
        &title,
        "envelopes queued at relays",
        &secs,
        &report.series.relay_queue,
        &RED,
    )
    .map_err(|e| format!("relay_queue.svg: {e}"))?;
    files.push(path);
    Ok(files)
}

/// Bins for a latency histogram: up to 40 equal bins up to the 99.5th
/// percentile; the tail beyond goes into the last bin.
pub fn bins(latencies: &[u64]) -> (u64, Vec<u64>) {
    if latencies.is_empty() {
        return (1, vec![0]);
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let hi = sorted[((sorted.len() as f64 * 0.995) as usize).min(sorted.len() - 1)].max(1);
    let count = 40u64;
    let width = hi.div_ceil(count).max(1);
    let mut b = vec![0u64; count as usize];
    for &v in latencies {
        let k = ((v / width) as usize).min(b.len() - 1);
        b[k] += 1;
    }
    (width, b)
}

fn latency_histogram(path: &Path, label: &str, latencies: &[u64]) -> Result<(), String> {
    let (width, counts) = bins(latencies);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x_max = width * counts.len() as u64;
    let y_max = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Handshake latency — {label}"), ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..x_max, 0u64..y_max + y_max / 10 + 1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("request → trusted (ms, last bin holds the tail)")
        .y_desc("handshakes")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(counts.iter().enumerate().map(|(k, &c)| {
            let x0 = k as u64 * width;
            Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn line(
    path: &Path,
    title: &str,
    y_desc: &str,
    xs: &[f64],
    ys: &[u64],
    color: &RGBColor,
) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x_max = xs.last().copied().unwrap_or(1.0).max(1.0);
    let y_max = ys.iter().copied().max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0u64..y_max + y_max / 10 + 1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            xs.iter().copied().zip(ys.iter().copied()),
            color.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_every_sample() {
        let v: Vec<u64> = (0..1000).collect();
        let (w, b) = bins(&v);
        assert!(w >= 1);
        assert_eq!(b.iter().sum::<u64>(), 1000);
        assert_eq!(bins(&[]).1, vec![0]);
    }
}
