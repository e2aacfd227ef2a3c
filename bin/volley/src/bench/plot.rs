//! `--plot FILE.svg`: delivered (or accepted) per second over time above each part's CPU.

use std::path::Path;

use plotters::prelude::*;

use super::report::RunResult;

/// Rates between consecutive samples of a cumulative counter, over windows of at least
/// `window` seconds so that 20 ms polls do not draw noise.
fn rates(samples: &[(f64, f64)], window: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut start = match samples.first() {
        Some(first) => *first,
        None => return out,
    };
    for &(t, v) in samples {
        if t - start.0 >= window {
            out.push((t, (v - start.1) / (t - start.0)));
            start = (t, v);
        }
    }
    out
}

/// Draws `run` into an SVG at `path`.
pub fn draw(path: &Path, run: &RunResult) -> anyhow::Result<()> {
    let (what, timeline) = match (&run.broadcast, &run.ingest) {
        (Some(b), _) => ("delivered/s (fakes' counters)", &b.timeline),
        (_, Some(i)) => ("accepted requests/s", &i.timeline),
        _ => anyhow::bail!("nothing to plot: the run has no broadcast or ingest"),
    };
    let counter: Vec<(f64, f64)> = timeline.iter().map(|(t, n)| (*t, *n as f64)).collect();
    let rate = rates(&counter, 0.25);
    let mut parts: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    if let Some(first) = run.cpu_timeline.first() {
        for name in first.cpu_s.keys() {
            let series: Vec<(f64, f64)> = run
                .cpu_timeline
                .iter()
                .map(|s| (s.t, s.cpu_s.get(name).copied().unwrap_or(0.0)))
                .collect();
            let percent: Vec<(f64, f64)> = rates(&series, 0.25)
                .into_iter()
                .map(|(t, r)| (t, r * 100.0))
                .collect();
            parts.push((name.clone(), percent));
        }
    }
    let t_max = rate
        .iter()
        .chain(parts.iter().flat_map(|(_, s)| s))
        .map(|(t, _)| *t)
        .fold(1.0, f64::max);
    let rate_max = rate.iter().map(|(_, r)| *r).fold(1.0, f64::max) * 1.1;
    let cpu_max = parts
        .iter()
        .flat_map(|(_, s)| s)
        .map(|(_, c)| *c)
        .fold(10.0, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("run {}: {what}", run.run), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(what)
        .draw()?;
    chart.draw_series(LineSeries::new(rate, &BLUE))?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption("CPU of each part (% of one core)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..cpu_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("CPU %")
        .draw()?;
    for (index, (name, series)) in parts.into_iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(series, color))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
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

    #[test]
    fn rates_use_windows() {
        let samples = [(0.0, 0.0), (0.1, 10.0), (0.3, 30.0), (0.6, 90.0)];
        assert_eq!(rates(&samples, 0.25), vec![(0.3, 100.0), (0.6, 200.0)]);
        assert!(rates(&[], 0.25).is_empty());
    }
}
