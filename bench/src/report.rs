//! Emulator results as a markdown table, JSON and a per-peer completion-time
//! CDF (SVG, one line per system).

use crate::scenarios::{RunResult, Scenario};
use anyhow::Result;
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;

/// `median (min–max)` of `xs`, or the one value.
fn spread(mut xs: Vec<f64>, digits: usize) -> String {
    let median = crate::stats::median(&mut xs);
    match xs.len() {
        0 => "-".into(),
        1 => format!("{:.*}", digits, xs[0]),
        n => {
            format!(
                "{:.*} ({:.*}–{:.*})",
                digits,
                median,
                digits,
                xs[0],
                digits,
                xs[n - 1]
            )
        }
    }
}

/// One row per scenario, system and variant: the median of its runs, with
/// their range.
pub fn markdown(results: &[RunResult], header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(
        s,
        "| scenario | system | variant | runs | slowest / (S/B) | median peer / (S/B) | origin copies | seed host upload / S | origin host upload / S | scenario figure |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let mut groups: Vec<Vec<&RunResult>> = Vec::new();
    for r in results {
        match groups.iter_mut().find(|g| {
            g[0].scenario == r.scenario && g[0].system == r.system && g[0].variant == r.variant
        }) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    for g in groups {
        let r0 = g[0];
        let size = r0.size as f64;
        let of = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
            g.iter().filter_map(|r| f(r)).collect()
        };
        let extra = match r0.scenario {
            Scenario::Heterogeneous => {
                let v = of(&|r| r.slow_hosts_upload.map(|b| b as f64 / size));
                format!("slow hosts uploaded {} S", spread(v, 2))
            }
            Scenario::Zones => {
                let v = of(&|r| r.cross_zone.map(|b| b as f64 / size));
                format!("cross-zone {} S", spread(v, 2))
            }
            Scenario::Churn => format!(
                "{} of {} killed at 50%",
                r0.peer_secs.iter().filter(|p| p.is_none()).count(),
                r0.peers
            ),
            Scenario::Fanout => String::new(),
        };
        let _ = writeln!(
            s,
            "| {:?} | {:?} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r0.scenario,
            r0.system,
            r0.variant.label(r0.system),
            g.len(),
            spread(of(&|r| Some(r.slowest_ratio())), 2),
            spread(of(&|r| Some(r.median_ratio())), 2),
            spread(of(&|r| r.origin_http_bytes.map(|b| b as f64 / size)), 3),
            spread(of(&|r| r.seed_host_upload.map(|b| b as f64 / size)), 2),
            spread(of(&|r| Some(r.origin_host_upload as f64 / size)), 2),
            extra
        );
    }
    s
}

/// One SVG per scenario: fraction of peers done against time / (S/B).
pub fn cdf_svg(results: &[RunResult], scenario: Scenario, path: &Path) -> Result<()> {
    let runs: Vec<&RunResult> = results.iter().filter(|r| r.scenario == scenario).collect();
    if runs.is_empty() {
        return Ok(());
    }
    let xmax = runs.iter().map(|r| r.slowest_ratio()).fold(1.0, f64::max) * 1.05;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{scenario:?}: per-peer completion time"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("completion time / (S/B)")
        .y_desc("fraction of peers done")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, r) in runs.iter().enumerate() {
        let mut t: Vec<f64> = r
            .peer_secs
            .iter()
            .flatten()
            .map(|s| s / r.bound_secs)
            .collect();
        t.sort_by(f64::total_cmp);
        let n = r.peer_secs.len().max(1) as f64;
        let mut pts = vec![(0.0, 0.0)];
        for (k, x) in t.iter().enumerate() {
            pts.push((*x, k as f64 / n));
            pts.push((*x, (k + 1) as f64 / n));
        }
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(match r.variant.label(r.system) {
                v if v.is_empty() => format!("{:?}", r.system),
                v => format!("{:?}, {v}", r.system),
            })
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::System;

    fn result(secs: Vec<Option<f64>>) -> RunResult {
        RunResult {
            scenario: Scenario::Churn,
            system: System::Weightcast,
            variant: crate::scenarios::Variant::default(),
            seed_host_upload: Some(120),
            timeline: Vec::new(),
            peers: secs.len(),
            size: 100,
            bandwidth_bits: 800,
            bound_secs: 1.0,
            peer_secs: secs,
            origin_host_upload: 150,
            origin_http_bytes: Some(100),
            slow_hosts_upload: None,
            cross_zone: None,
            seed_uploads: None,
            peer_tcp: Vec::new(),
        }
    }

    #[test]
    fn ratios_ignore_killed_peers_and_the_table_says_how_many() {
        let r = result(vec![Some(1.0), Some(3.0), None]);
        assert_eq!(r.slowest_ratio(), 3.0);
        assert_eq!(r.mean_ratio(), 2.0);
        let md = markdown(&[r], "header");
        assert!(
            md.contains(
                "| Churn | Weightcast | seed on the origin host | 1 | 3.00 | 2.00 | 1.000 | 1.20 | 1.50 | 1 of 3 killed at 50% |"
            ),
            "{md}"
        );
        let runs = [
            result(vec![Some(1.0), Some(2.0)]),
            result(vec![Some(1.0), Some(4.0)]),
            result(vec![Some(1.0), Some(3.0)]),
        ];
        let md = markdown(&runs, "header");
        assert!(
            md.contains("| 3 | 3.00 (2.00–4.00) |"),
            "the median of three runs: {md}"
        );
    }

    #[test]
    fn cdf_is_written_as_svg() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cdf.svg");
        cdf_svg(&[result(vec![Some(1.0), Some(2.0)])], Scenario::Churn, &p).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("<svg"));
    }
}
