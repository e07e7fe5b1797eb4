//! Figures as SVG (plotters), written atomically.

use std::path::Path;

use whittle_boards::files::write_atomically;

use plotters::prelude::*;

/// One named line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(127, 127, 127),
];

/// A line chart with optional horizontal reference lines (e.g. dense accuracy, target).
pub fn line_chart_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    references: &[(String, f64)],
) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let ys = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(references.iter().map(|r| r.1));
        let (x_min, x_max) = bounds(xs);
        let (y_min, y_max) = bounds(ys);
        let y_pad = ((y_max - y_min) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, (y_min - y_pad)..(y_max + y_pad))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(plot_error)?;
        for (index, line) in series.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(line.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|&p| Circle::new(p, 3, color.filled())),
                )
                .map_err(plot_error)?;
        }
        for (index, (name, y)) in references.iter().enumerate() {
            let color = COLORS[(series.len() + index) % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    [(x_min, *y), (x_max, *y)],
                    color.stroke_width(1),
                ))
                .map_err(plot_error)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(1))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    write_atomically(path, svg.as_bytes())?;
    Ok(())
}

/// A heat map of kept rank per (layer × matrix type): `keep[kind][layer]` in [0, 1]
/// (1 = dense), the "bottleneck matrices" picture.
pub fn rank_map_svg(
    path: &Path,
    title: &str,
    kinds: &[&str],
    keep: &[Vec<f64>],
    labels: &[Vec<String>],
    q4: &[Vec<bool>],
) -> anyhow::Result<()> {
    let n_layers = keep.first().map_or(0, Vec::len);
    let width = 60 + 34 * n_layers as u32 + 40;
    // The title shrinks to fit the map (about 0.55 em a character).
    let title_size =
        (f64::from(width) / (0.55 * title.chars().count().max(1) as f64)).clamp(9.0, 18.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 120 + 40 * kinds.len() as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", title_size))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0..n_layers, 0..kinds.len())
            .map_err(plot_error)?;
        let kind_names: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("layer")
            .x_labels(n_layers.min(30))
            .y_labels(kinds.len())
            .y_label_formatter(&|y| kind_names.get(*y).cloned().unwrap_or_default())
            .draw()
            .map_err(plot_error)?;
        for (kind_idx, row) in keep.iter().enumerate() {
            for (layer_idx, &value) in row.iter().enumerate() {
                let shade = (255.0 * (1.0 - value.clamp(0.0, 1.0))) as u8;
                let at_4_bits = q4.get(kind_idx).and_then(|r| r.get(layer_idx)) == Some(&true);
                let color = match at_4_bits {
                    true => RGBColor(shade, 160 + (u16::from(shade) * 95 / 255) as u8, shade),
                    false => RGBColor(shade, shade, 255),
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(layer_idx, kind_idx), (layer_idx + 1, kind_idx + 1)],
                        color.filled(),
                    )))
                    .map_err(plot_error)?;
                if let Some(label) = labels.get(kind_idx).and_then(|r| r.get(layer_idx)) {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            label.clone(),
                            (layer_idx, kind_idx + 1),
                            ("sans-serif", 10),
                        )))
                        .map_err(plot_error)?;
                }
            }
        }
        root.present().map_err(plot_error)?;
    }
    write_atomically(path, svg.as_bytes())?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (min, max) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if min.is_finite() && max > min {
        (min, max)
    } else if min.is_finite() {
        (min - 0.5, min + 0.5)
    } else {
        (0.0, 1.0)
    }
}

fn plot_error<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the figure failed: {error:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_series() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("figures").join("chart.svg");
        let series = vec![
            Series {
                name: "output_aligned".into(),
                points: vec![(0.3, 0.5), (0.6, 0.8), (1.0, 0.87)],
            },
            Series {
                name: "svd".into(),
                points: vec![(0.3, 0.5), (0.6, 0.5), (1.0, 0.87)],
            },
        ];
        line_chart_svg(
            &path,
            "accuracy",
            "keep",
            "acc",
            &series,
            &[("dense".into(), 0.87)],
        )?;
        let svg = std::fs::read_to_string(&path)?;
        assert!(svg.starts_with("<svg"));
        for name in ["output_aligned", "svd", "dense"] {
            assert!(svg.contains(name), "{name}");
        }
        Ok(())
    }
}
