//! The HdrHistogram percentile-distribution text format (`.hgrm`), as HdrHistogram's
//! `outputPercentileDistribution` and wrk2 print it, so the files open in the usual plotters.
//!
//! Values are written in **microseconds** with three decimals (the histograms hold ns), with
//! five percentile ticks per half-distance, and the usual `#[Mean ...]` footer.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Nanoseconds per output unit (microseconds).
pub const UNIT_NS: f64 = 1000.0;
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Renders `h` (values in ns) as a percentile distribution in microseconds.
pub fn render(h: &Histogram<u64>) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / UNIT_NS;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.digits$} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.digits$} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / UNIT_NS,
            h.stdev() / UNIT_NS,
            h.max() as f64 / UNIT_NS,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.digits$}, StdDeviation   = {stdev:12.digits$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.digits$}, Total count    = {:12}]",
        h.len()
    );
    let sub_buckets = 2u64.pow((2.0 * 10f64.powi(digits as i32)).log2().ceil() as u32);
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn format_matches_hdrhistogram_output() {
        let mut h = new_histogram();
        for us in 1..=100u64 {
            h.record(us * 1000).unwrap();
        }
        let text = render(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // First row: the smallest value at percentile 0, count 1, 1/(1-0) = 1.
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        // The median row.
        assert!(
            lines.contains(&"      50.015 0.500000000000         50           2.00"),
            "{text}"
        );
        // The last data row is at percentile 1 and has no fourth column.
        let last = lines[lines.len() - 4];
        assert_eq!(last, "     100.031 1.000000000000        100");
        assert_eq!(
            lines[lines.len() - 3],
            "#[Mean    =       50.504, StdDeviation   =       28.866]"
        );
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =      100.031, Total count    =          100]"
        );
        assert_eq!(
            lines[lines.len() - 1],
            format!(
                "#[Buckets = {:12}, SubBuckets     =         2048]",
                h.buckets()
            )
        );
        // Every data row parses as value, percentile, count (and 1/(1-p) before the end).
        for row in &lines[2..lines.len() - 3] {
            let cols: Vec<f64> = row.split_whitespace().map(|c| c.parse().unwrap()).collect();
            assert!(cols.len() == 4 || cols.len() == 3, "{row}");
        }
    }

    #[test]
    fn empty_histogram_still_has_header_and_footer() {
        let text = render(&new_histogram());
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =            0]"));
    }
}
