//! The run's outputs: a plain-text table for the terminal, the JSON report, and an SVG chart of
//! rate and latency over time.

use crate::run::Report;
use crate::stats::{Percentiles, Second};
use crate::LoadgenError;
use std::fmt::Write as _;
use std::path::Path;

fn pct(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1} ms  ({} samples)",
        p.p50, p.p95, p.p99, p.max, p.count
    )
}

/// The end-of-run table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let c = &r.config;
    let target = c
        .rate
        .map(|r| format!("{r:.0} fixes/s"))
        .unwrap_or_else(|| "as fast as acks allow".into());
    let _ = writeln!(
        out,
        "mode {}  devices {}  workers {}  batch {}  target {target}  seed {}",
        c.mode.as_str(),
        c.devices,
        c.workers,
        c.batch,
        c.seed
    );
    let _ = writeln!(
        out,
        "{:<22} {:>12.0} fixes/s  ({} fixes in {:.1} s, {} requests)",
        "offered", r.offered_rate, r.fixes_sent, r.send_secs, r.requests
    );
    let _ = writeln!(
        out,
        "{:<22} {:>12.0} fixes/s  ({} fixes)",
        "acknowledged", r.acked_rate, r.fixes_acked
    );
    let errors = if r.errors.is_empty() {
        "none".to_string()
    } else {
        r.errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "{:<22} {errors}", "errors");
    let _ = writeln!(out, "{:<22} {}", "ingest -> database", pct(&r.ingest_to_db));
    let _ = writeln!(out, "{:<22} {}", "send -> database", pct(&r.send_to_db));
    if r.config.subscribers > 0 {
        let _ = writeln!(
            out,
            "{:<22} {}",
            "ingest -> websocket",
            pct(&r.ingest_to_ws)
        );
        if !r.ws_errors.is_empty() {
            let _ = writeln!(out, "{:<22} {}", "websocket errors", r.ws_errors.join("; "));
        }
    }
    let l = &r.loss;
    let verdict = match (l.acked, l.passed()) {
        (0, _) => "NO DATA",
        (_, true) => "PASS",
        (_, false) => "FAIL",
    };
    let _ = writeln!(
        out,
        "{:<22} {verdict}: {} acked, {} stored once, {} missing, {} duplicated, {} unexpected, {} unacked-but-stored",
        "loss check", l.acked, l.stored_once, l.missing, l.duplicated, l.unexpected, l.unacked_stored
    );
    let quarantine = if l.quarantine_checked {
        format!("{}/{} quarantined", l.bad_quarantined, l.bad_sent)
    } else {
        "quarantine not read".into()
    };
    let _ = writeln!(
        out,
        "{:<22} {} bad fixes sent, {} stored (must be 0), {quarantine}",
        "bad fixes", l.bad_sent, l.bad_stored
    );
    if !l.missing_examples.is_empty() {
        let _ = writeln!(out, "{:<22} {:?}", "missing (examples)", l.missing_examples);
    }
    let _ = writeln!(
        out,
        "{:<22} {:.1} s after sending stopped",
        "settled", r.settle_secs
    );
    out
}

/// Write the JSON report.
pub fn write_json(r: &Report, path: &Path) -> Result<(), LoadgenError> {
    let text = serde_json::to_vec_pretty(r).expect("report serializes");
    std::fs::write(path, text).map_err(|e| LoadgenError::Output {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Write an SVG chart: fixes/s offered and acknowledged (top), p99 latency to the database
/// and to the WebSocket (bottom), per second of the run.
pub fn write_svg(seconds: &[Second], title: &str, path: &Path) -> Result<(), LoadgenError> {
    use plotters::prelude::*;
    let err = |e: String| LoadgenError::Output {
        path: path.display().to_string(),
        reason: e,
    };
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| err(e.to_string()))?;
    let (top, bottom) = root.split_vertically(320);
    let t_max = seconds.last().map(|s| s.t + 1).unwrap_or(1) as f64;
    let rate_max = seconds
        .iter()
        .map(|s| s.offered.max(s.acked))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption("fixes per second", ("sans-serif", 16))
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let series = |f: fn(&Second) -> f64| {
        seconds
            .iter()
            .map(move |s| (s.t as f64, f(s)))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(series(|s| s.offered as f64), &BLUE))
        .map_err(|e| err(e.to_string()))?
        .label("offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(|s| s.acked as f64), &GREEN))
        .map_err(|e| err(e.to_string()))?
        .label("acknowledged")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(e.to_string()))?;

    let lat_max = seconds
        .iter()
        .flat_map(|s| [s.db_p99_ms, s.ws_p99_ms])
        .flatten()
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption("p99 latency per second (ms)", ("sans-serif", 16))
        .build_cartesian_2d(0f64..t_max, 0f64..lat_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let points = |f: fn(&Second) -> Option<f64>| {
        seconds
            .iter()
            .filter_map(move |s| f(s).map(|v| (s.t as f64, v)))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(points(|s| s.db_p99_ms), &RED))
        .map_err(|e| err(e.to_string()))?
        .label("ingest -> database")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(points(|s| s.ws_p99_ms), &MAGENTA))
        .map_err(|e| err(e.to_string()))?
        .label("ingest -> websocket")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_written_as_svg() {
        let seconds: Vec<Second> = (0..5)
            .map(|t| Second {
                t,
                offered: 100 * t,
                acked: 90 * t,
                db_p99_ms: Some(10.0 * t as f64),
                ws_p99_ms: (t > 2).then_some(5.0),
            })
            .collect();
        let path = std::env::temp_dir().join(format!("loadgen-{}.svg", uuid::Uuid::new_v4()));
        write_svg(&seconds, "test", &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("acknowledged"),
            "{}",
            &text[..100.min(text.len())]
        );
    }
}
