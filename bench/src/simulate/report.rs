//! The simulation's results as a markdown table and as SVG plots: the
//! completion-time CDF of one run, and slowest / T* against N for a sweep.

use super::world::SimResult;
use anyhow::Result;
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;
use weightcast_types::byte_size;

/// One row per run: every figure the issue asks for, as ratios to T*.
pub fn markdown(results: &[SimResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| N | size | piece | B | S/B s | T* s | slowest s | slowest / T* | p50 / T* | p99 / T* | origin copies | seed copies | complete | wall s |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let t = r.t_star;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | **{:.3}** | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.1} |",
            r.peers,
            byte_size::format(r.size),
            byte_size::format(r.piece_size),
            bits(r.bandwidth_bits),
            r.s_over_b,
            t,
            r.slowest(),
            r.slowest() / t,
            r.quantile(0.5) / t,
            r.quantile(0.99) / t,
            r.origin_copies(),
            r.seed_copies(),
            if r.all_complete() {
                format!("{}/{}", r.peers - r.killed, r.peers - r.killed)
            } else {
                format!(
                    "{}/{} ({} failed, {} unfinished)",
                    r.peer_secs.iter().flatten().count(),
                    r.peers - r.killed,
                    r.failed.len(),
                    r.unfinished
                )
            },
            r.wall_secs
        );
    }
    s
}

/// `25 Gbit/s`-style.
pub fn bits(b: u64) -> String {
    if b >= 1_000_000_000 && b.is_multiple_of(1_000_000_000) {
        format!("{} Gbit/s", b / 1_000_000_000)
    } else if b >= 1_000_000 {
        format!("{} Mbit/s", b / 1_000_000)
    } else {
        format!("{b} bit/s")
    }
}

/// Fraction of receivers done against completion time / T*.
pub fn cdf_svg(r: &SimResult, path: &Path) -> Result<()> {
    let t = r.t_star;
    let xmax = (r.slowest() / t).max(1.25) * 1.05;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} peers, {}, {}: completion times",
                r.peers,
                byte_size::format(r.size),
                bits(r.bandwidth_bits)
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("completion time / T*")
        .y_desc("fraction of peers done")
        .draw()?;
    let mut times: Vec<f64> = r.peer_secs.iter().flatten().map(|s| s / t).collect();
    times.sort_by(f64::total_cmp);
    let n = r.peer_secs.len().max(1) as f64;
    let mut pts = vec![(0.0, 0.0)];
    for (k, x) in times.iter().enumerate() {
        pts.push((*x, k as f64 / n));
        pts.push((*x, (k + 1) as f64 / n));
    }
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))?
        .label("weightcast (simulated)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    for (x, label, color) in [
        (r.s_over_b / t, "S/B", BLACK),
        (1.0, "T*", GREEN),
        (1.2, "target 1.2 T*", RED),
    ] {
        chart
            .draw_series(LineSeries::new(vec![(x, 0.0), (x, 1.0)], color.mix(0.6)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Slowest / T* (and the median peer's) against N, log scale.
pub fn ratio_svg(results: &[SimResult], path: &Path) -> Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let nmax = results.iter().map(|r| r.peers).max().unwrap_or(10) as f64 * 1.5;
    let ymax = results
        .iter()
        .map(|r| r.slowest() / r.t_star)
        .fold(1.3, f64::max)
        * 1.1;
    let first = &results[0];
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} at {}: completion / T* against N",
                byte_size::format(first.size),
                bits(first.bandwidth_bits)
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((5f64..nmax).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("receivers N")
        .y_desc("time / T*")
        .draw()?;
    let series = |f: &dyn Fn(&SimResult) -> f64| -> Vec<(f64, f64)> {
        results.iter().map(|r| (r.peers as f64, f(r))).collect()
    };
    let slowest = series(&|r| r.slowest() / r.t_star);
    let median = series(&|r| r.quantile(0.5) / r.t_star);
    let s_over_b = series(&|r| r.s_over_b / r.t_star);
    for (pts, label, color) in [
        (slowest, "slowest / T*", BLUE),
        (median, "median / T*", MAGENTA),
        (s_over_b, "S/B / T*", BLACK),
    ] {
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .draw_series(LineSeries::new(vec![(5.0, 1.2), (nmax, 1.2)], RED.mix(0.7)))?
        .label("target 1.2")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.7)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The swarm over time: goodput (share of N·B moving), busy upload slots,
/// and the share of receivers done, starved (nothing in flight) or
/// without a parent.
pub fn timeline_svg(r: &SimResult, path: &Path) -> Result<()> {
    let t = r.t_star;
    let xmax = (r.slowest() / t).max(1.25) * 1.05;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} peers, {}, {}: the swarm over time",
                r.peers,
                byte_size::format(r.size),
                bits(r.bandwidth_bits)
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1.05)?;
    chart
        .configure_mesh()
        .x_desc("time / T*")
        .y_desc("fraction")
        .draw()?;
    let n = r.peers.max(1) as f64;
    let series: [Series<'_>; 5] = [
        ("goodput / (N·B)", BLUE, &|s| s.goodput),
        ("upload slots busy", RED, &|s| s.upload_slots_busy),
        ("peers done", BLACK, &|s| s.done as f64 / n),
        ("peers starved", MAGENTA, &|s| s.starved as f64 / n),
        ("peers without a parent", GREEN, &|s| {
            s.parentless as f64 / n
        }),
    ];
    for (label, color, f) in series {
        let pts: Vec<(f64, f64)> = r.timeline.iter().map(|s| (s.secs / t, f(s))).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A timeline plot's line: its label, colour and what it reads off a sample.
type Series<'a> = (&'a str, RGBColor, &'a dyn Fn(&super::world::Sample) -> f64);
