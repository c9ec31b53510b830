//! The rollout view's completion-time plot: the share of a task's peers
//! done against the seconds since the task's first registration, as an
//! inline SVG drawn on the server (no script, no inline style: the
//! console's Content-Security-Policy allows neither).

use std::fmt::Write as _;

const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 180.0;
/// Room for the axes' labels.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 30.0;
const TOP: f64 = 10.0;
const RIGHT: f64 = 16.0;

/// The plot for completion times (milliseconds) of `done_ms`, out of
/// `peers` peers in all; `None` while nobody has finished.
pub fn svg(done_ms: &[u64], peers: usize) -> Option<String> {
    if done_ms.is_empty() || peers == 0 {
        return None;
    }
    let mut times = done_ms.to_vec();
    times.sort_unstable();
    let last_s = *times.last()? as f64 / 1000.0;
    let x_max = nice_ceiling(last_s.max(0.001));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |s: f64| LEFT + s / x_max * plot_w;
    let y = |share: f64| TOP + (1.0 - share) * plot_h;
    // A step line: flat until each peer's time, then up by one peer.
    let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
    for (i, ms) in times.iter().enumerate() {
        let s = *ms as f64 / 1000.0;
        let before = i as f64 / peers as f64;
        let after = (i + 1) as f64 / peers as f64;
        let _ = write!(
            points,
            " {:.1},{:.1} {:.1},{:.1}",
            x(s),
            y(before),
            x(s),
            y(after)
        );
    }
    let median = times[(times.len() - 1) / 2] as f64 / 1000.0;
    let label = format!(
        "Completion times: {} of {peers} peers done, the first after {:.1} s, the median after {median:.1} s, the last after {last_s:.1} s",
        times.len(),
        times[0] as f64 / 1000.0,
    );
    let mut out = format!(
        r##"<figure class="cdf"><svg id="cdf" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{label}" data-done="{done}" data-peers="{peers}">"##,
        done = times.len(),
    );
    // Axes, grid and labels.
    let _ = write!(
        out,
        r##"<g stroke="#d0d7de" stroke-width="1"><line x1="{l}" y1="{t}" x2="{l}" y2="{b}"/><line x1="{l}" y1="{b}" x2="{r}" y2="{b}"/><line x1="{l}" y1="{m}" x2="{r}" y2="{m}" stroke-dasharray="3 3"/><line x1="{l}" y1="{t}" x2="{r}" y2="{t}" stroke-dasharray="3 3"/></g>"##,
        l = LEFT,
        t = TOP,
        b = HEIGHT - BOTTOM,
        r = WIDTH - RIGHT,
        m = y(0.5),
    );
    let _ = write!(
        out,
        r##"<g fill="#57606a" font-size="11"><text x="{lx}" y="{ty}" text-anchor="end">100%</text><text x="{lx}" y="{my}" text-anchor="end">50%</text><text x="{lx}" y="{by}" text-anchor="end">0</text><text x="{l}" y="{xl}">0 s</text><text x="{r}" y="{xl}" text-anchor="end">{x_max} s</text><text x="{c}" y="{xl}" text-anchor="middle">seconds since the first peer asked</text></g>"##,
        lx = LEFT - 6.0,
        ty = TOP + 4.0,
        my = y(0.5) + 4.0,
        by = HEIGHT - BOTTOM + 4.0,
        l = LEFT,
        r = WIDTH - RIGHT,
        c = LEFT + plot_w / 2.0,
        xl = HEIGHT - 10.0,
    );
    let _ = write!(
        out,
        r##"<polyline fill="none" stroke="#1a7f37" stroke-width="2" points="{points}"/></svg><figcaption>Peers done over time ({label}).</figcaption></figure>"##,
    );
    Some(out)
}

/// The smallest of 1, 2, 5 × 10^k at or above `v`: an axis end people read.
fn nice_ceiling(v: f64) -> f64 {
    let mut step = 10f64.powf(v.log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * step >= v {
                return m * step;
            }
        }
        step *= 10.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_plot_until_a_peer_is_done() {
        assert_eq!(svg(&[], 3), None);
    }

    #[test]
    fn the_plot_steps_up_once_per_finished_peer() {
        let s = svg(&[3000, 1000], 4).expect("a plot");
        assert!(s.contains(r#"data-done="2" data-peers="4""#), "{s}");
        // 1 start point + 2 points per finished peer.
        let points = s
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 5, "{points}");
        assert!(s.contains("the first after 1.0 s"), "{s}");
        assert!(s.contains("the last after 3.0 s"), "{s}");
        assert!(
            s.contains(">5 s</text>"),
            "the axis ends at a round 5 s: {s}"
        );
    }

    #[test]
    fn axis_ends_are_round() {
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(21.5), 50.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
    }
}
