//! A tiny writer for the Prometheus text exposition format, shared by every
//! component's `/metrics` endpoint.

use std::fmt::Write;

#[derive(Default)]
pub struct MetricsText(String);

impl MetricsText {
    /// One sample; `labels` is a list of `(name, value)` pairs.
    pub fn sample(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        if !self.0.contains(&format!("# TYPE {name} ")) {
            let _ = writeln!(self.0, "# HELP {name} {help}");
            let _ = writeln!(self.0, "# TYPE {name} {kind}");
        }
        let _ = write!(self.0, "{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let _ = write!(self.0, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.0, " {value}");
        self
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.sample(name, "counter", help, &[], value as f64)
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.sample(name, "gauge", help, &[], value as f64)
    }

    pub fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_help_type_once_and_labels() {
        let mut m = super::MetricsText::default();
        m.sample(
            "x_bytes_total",
            "counter",
            "Bytes.",
            &[("source", "peer")],
            3.0,
        )
        .sample(
            "x_bytes_total",
            "counter",
            "Bytes.",
            &[("source", "origin")],
            4.0,
        );
        let s = m.finish();
        assert_eq!(s.matches("# TYPE").count(), 1);
        assert!(s.contains("x_bytes_total{source=\"origin\"} 4"));
    }
}
