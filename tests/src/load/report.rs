//! Collects figures and prints them as a table and JSON.

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The figure divided by the named baseline, when one applies.
    pub ratio: Option<f64>,
    pub baseline: Option<String>,
    pub goal: Option<String>,
}

/// All figures of a run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub figures: Vec<Figure>,
}

impl Report {
    /// Records a figure without a baseline.
    pub fn add(&mut self, scenario: &str, name: &str, value: f64, unit: &str) {
        self.add_ratio(scenario, name, value, unit, None, None);
    }

    /// Records a figure with its ratio to a baseline (no ratio when the baseline is unknown or
    /// zero) and the goal it is held against.
    pub fn add_ratio(
        &mut self,
        scenario: &str,
        name: &str,
        value: f64,
        unit: &str,
        baseline: Option<(&str, f64)>,
        goal: Option<&str>,
    ) {
        let ratio = baseline.and_then(|(_, b)| (b > 0.0).then(|| value / b));
        let figure = Figure {
            scenario: scenario.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            ratio,
            baseline: baseline.map(|(n, _)| n.to_owned()),
            goal: goal.map(str::to_owned),
        };
        eprintln!("  {}", line(&figure));
        self.figures.push(figure);
    }

    /// The value of a figure already recorded.
    pub fn value(&self, scenario: &str, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.scenario == scenario && f.name == name)
            .map(|f| f.value)
    }

    /// The table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<12} {:<44} {:>14} {:<8} {:>9}  {}\n",
            "scenario", "figure", "value", "unit", "ratio", "baseline / goal"
        ));
        for f in &self.figures {
            out.push_str(&line(f));
            out.push('\n');
        }
        out
    }
}

fn line(f: &Figure) -> String {
    let ratio = f.ratio.map(|r| format!("{r:.3}")).unwrap_or_default();
    let mut note = f.baseline.clone().unwrap_or_default();
    if let Some(goal) = &f.goal {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str("goal ");
        note.push_str(goal);
    }
    format!(
        "{:<12} {:<44} {:>14} {:<8} {:>9}  {}",
        f.scenario,
        f.name,
        human(f.value),
        f.unit,
        ratio,
        note
    )
}

fn human(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // The epsilon keeps 99.9% of 1000 at rank 999 despite binary rounding.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 500.0);
        assert_eq!(percentile(&v, 99.0), 990.0);
        assert_eq!(percentile(&v, 99.9), 999.0);
        assert_eq!(percentile(&v, 100.0), 1000.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn ratios() {
        let mut r = Report::default();
        r.add_ratio("x", "a", 5.0, "GB/s", Some(("loopback", 10.0)), None);
        r.add_ratio("x", "b", 5.0, "GB/s", Some(("loopback", 0.0)), None);
        assert_eq!(r.figures[0].ratio, Some(0.5));
        assert_eq!(r.figures[1].ratio, None);
        assert!(r.table().contains("0.500"));
    }
}
