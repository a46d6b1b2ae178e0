// SPDX-License-Identifier: Apache-2.0
//! SVG bar charts for the report: bars grouped along the x axis, one colour per series, the
//! legend beside the plot, an optional dashed reference line. When the values span more than
//! [`LOG_SPAN`]× (tiers of this project differ by 100× and more) the value axis is
//! logarithmic, with a label at every power of ten, so the small bars stay readable.
//!
//! The output depends only on the data: no clock, no system fonts (plotters' built-in text
//! metrics), so a chart rendered twice from the same `results.json` is the same bytes.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Error, Result};

/// Values spanning more than this factor get a logarithmic axis.
pub const LOG_SPAN: f64 = 10.0;

/// Width of the legend column right of the plot, px.
const LEGEND_W: u32 = 190;
/// Height of every chart, px.
const HEIGHT: u32 = 440;

const COLORS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

/// One colour of bars: a name for the legend and a value per group (`None`: no bar).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Index into the palette (a tier keeps its colour in every chart).
    pub color: usize,
    /// One value per group.
    pub values: Vec<Option<f64>>,
}

/// A grouped bar chart.
#[derive(Clone, Debug)]
pub struct BarChart {
    /// Caption.
    pub title: String,
    /// Value axis label (the unit); " (log scale)" is added when the axis is logarithmic.
    pub y_label: String,
    /// X axis groups, in order.
    pub groups: Vec<String>,
    /// Bars per group, in order.
    pub series: Vec<Series>,
    /// A dashed horizontal line at this value, with its legend entry.
    pub reference: Option<(f64, String)>,
}

/// The value axis.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    /// From 0.
    Linear { max: f64 },
    /// From `lo` (a power of ten below the smallest value) to `hi`.
    Log { lo: f64, hi: f64 },
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Report(format!("plot: {e}"))
}

impl BarChart {
    /// Whether any series has a value.
    pub fn has_data(&self) -> bool {
        self.series
            .iter()
            .any(|s| s.values.iter().any(Option::is_some))
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied())
            .chain(self.reference.iter().map(|(v, _)| *v))
            .filter(|v| v.is_finite() && *v > 0.0)
    }

    fn scale(&self) -> Scale {
        let (min, max) = self.values().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if max <= 0.0 {
            return Scale::Linear { max: 1.0 };
        }
        if max / min > LOG_SPAN {
            // A hair below the power of ten, so the axis labels it despite rounding.
            Scale::Log {
                lo: 10f64.powf(min.log10().floor()) * (1.0 - 1e-6),
                hi: max * 1.6,
            }
        } else {
            Scale::Linear { max: max * 1.15 }
        }
    }

    /// Writes the chart as SVG to `path`.
    pub fn render(&self, path: &Path) -> Result<()> {
        let n_series = self.series.len().max(1);
        let longest = self
            .groups
            .iter()
            .map(|g| g.chars().count())
            .max()
            .unwrap_or(0);
        let per_group = (30 + 16 * n_series).max(longest * 7 + 20);
        let plot_w = (100 + self.groups.len() * per_group).clamp(520, 2200) as u32;
        let root = SVGBackend::new(path, (plot_w + LEGEND_W, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (plot, legend) = root.split_horizontally(plot_w);
        match self.scale() {
            Scale::Linear { max } => {
                let fmt = move |v: &f64| linear_label(*v, max);
                self.plot(&plot, 0.0..max, 0.0, &self.y_label, 0, &fmt)?;
            }
            Scale::Log { lo, hi } => {
                let decades = (hi / lo).log10().floor().max(1.0) as usize + 1;
                let label = format!("{} (log scale)", self.y_label);
                let fmt = |v: &f64| log_label(*v);
                self.plot(&plot, (lo..hi).log_scale(), lo, &label, decades, &fmt)?;
            }
        }
        self.legend(&legend)?;
        root.present().map_err(plot_err)
    }

    /// The axes, the bars and the reference line; `base` is where bars start, `y_labels` the
    /// number of value labels (0: plotters' choice).
    fn plot<Y>(
        &self,
        area: &DrawingArea<SVGBackend, Shift>,
        y: Y,
        base: f64,
        y_desc: &str,
        y_labels: usize,
        y_fmt: &dyn Fn(&f64) -> String,
    ) -> Result<()>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let n = self.groups.len().max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, ("sans-serif", 22))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..n as f64, y)
            .map_err(plot_err)?;
        let names = self.groups.clone();
        let x_fmt = move |x: &f64| {
            let f = x - x.floor();
            if (f - 0.5).abs() < 0.01 {
                names.get(x.floor() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .y_desc(y_desc)
            .y_label_formatter(y_fmt)
            .x_labels(n * 2 + 1)
            .x_label_formatter(&x_fmt)
            .x_label_style(("sans-serif", 15))
            .y_label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16));
        if y_labels > 0 {
            mesh.y_labels(y_labels);
        }
        mesh.draw().map_err(plot_err)?;
        let bar = 0.8 / self.series.len().max(1) as f64;
        for (si, s) in self.series.iter().enumerate() {
            let color = COLORS[s.color % COLORS.len()];
            let bars = s.values.iter().enumerate().filter_map(|(gi, v)| {
                let v = (*v).filter(|v| v.is_finite() && *v > base)?;
                let x0 = gi as f64 + 0.1 + si as f64 * bar;
                Some(Rectangle::new(
                    [(x0, base), (x0 + bar * 0.9, v)],
                    color.filled(),
                ))
            });
            chart.draw_series(bars).map_err(plot_err)?;
        }
        if let Some((v, _)) = &self.reference {
            let line = [(0.0, *v), (n as f64, *v)];
            chart
                .draw_series(DashedLineSeries::new(line, 6, 4, BLACK.stroke_width(1)))
                .map_err(plot_err)?;
        }
        Ok(())
    }

    /// The legend column: a swatch and the name of each series, then the reference line.
    fn legend(&self, area: &DrawingArea<SVGBackend, Shift>) -> Result<()> {
        let style = ("sans-serif", 17).into_font();
        let top = 50;
        let entry = |i: usize| top + 22 * i as i32;
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[s.color % COLORS.len()];
            let y = entry(i);
            area.draw(&Rectangle::new([(8, y), (22, y + 14)], color.filled()))
                .map_err(plot_err)?;
            area.draw(&Text::new(s.name.clone(), (30, y), style.clone()))
                .map_err(plot_err)?;
        }
        if let Some((_, name)) = &self.reference {
            let y = entry(self.series.len()) + 7;
            area.draw(&PathElement::new([(8, y), (13, y)], BLACK.stroke_width(1)))
                .map_err(plot_err)?;
            area.draw(&PathElement::new([(17, y), (22, y)], BLACK.stroke_width(1)))
                .map_err(plot_err)?;
            area.draw(&Text::new(name.clone(), (30, y - 7), style))
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// A label of a linear axis whose top is `max`.
fn linear_label(v: f64, max: f64) -> String {
    if max >= 100.0 {
        format!("{v:.0}")
    } else if max >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A label of a log axis: powers of ten as 0.01, 1, 10k, 1M; anything else to 2 digits.
fn log_label(v: f64) -> String {
    let e = v.log10().round();
    if (v - 10f64.powf(e)).abs() > v * 1e-9 {
        return format!("{v:.2}");
    }
    let e = e as i32;
    match e {
        6.. => format!("{}M", 10u64.pow((e - 6) as u32)),
        3..=5 => format!("{}k", 10u64.pow((e - 3) as u32)),
        0..=2 => format!("{}", 10u64.pow(e as u32)),
        _ => format!("{:.*}", (-e) as usize, 10f64.powi(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(values: &[f64], reference: Option<f64>) -> BarChart {
        BarChart {
            title: "t".into(),
            y_label: "IOPS".into(),
            groups: vec!["g".into()],
            series: values
                .iter()
                .enumerate()
                .map(|(i, v)| Series {
                    name: format!("s{i}"),
                    color: i,
                    values: vec![Some(*v)],
                })
                .collect(),
            reference: reference.map(|r| (r, "reference".to_string())),
        }
    }

    #[test]
    fn values_a_hundredfold_apart_get_a_log_axis() {
        assert_eq!(
            chart(&[274.0, 41038.0], None).scale(),
            Scale::Log {
                lo: 100.0 * (1.0 - 1e-6),
                hi: 41038.0 * 1.6
            }
        );
        assert_eq!(
            chart(&[0.0067, 0.44], Some(1.0)).scale(),
            Scale::Log {
                lo: 0.001 * (1.0 - 1e-6),
                hi: 1.6
            }
        );
        assert!(matches!(
            chart(&[5.5, 11.6], None).scale(),
            Scale::Linear { max } if (max - 11.6 * 1.15).abs() < 1e-9
        ));
    }

    #[test]
    fn log_labels_name_the_decades() {
        let labels: Vec<String> = [0.001, 0.1, 1.0, 10.0, 1000.0, 100_000.0, 1e6]
            .iter()
            .map(|v| log_label(*v))
            .collect();
        assert_eq!(labels, ["0.001", "0.1", "1", "10", "1k", "100k", "1M"]);
        assert_eq!(log_label(2.5), "2.50");
    }

    #[test]
    fn rendering_is_deterministic_and_draws_every_bar() {
        let dir = tempfile::tempdir().unwrap();
        let c = chart(&[274.0, 41038.0, 2522.0], Some(1000.0));
        let (a, b) = (dir.path().join("a.svg"), dir.path().join("b.svg"));
        c.render(&a).unwrap();
        c.render(&b).unwrap();
        let svg = std::fs::read_to_string(&a).unwrap();
        assert_eq!(svg, std::fs::read_to_string(&b).unwrap());
        assert!(svg.contains("IOPS (log scale)"), "{svg}");
        for name in ["s0", "s1", "s2", "reference", "100", "10k"] {
            assert!(
                svg.contains(&format!("\n{name}\n</text>")),
                "{name} missing"
            );
        }
    }
}
