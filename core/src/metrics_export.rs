//! One way for every rtc service to export its Prometheus metrics.
//!
//! Each service instance builds a recorder of its own instead of installing
//! a global one, so several instances (socket nodes, load balancer replicas)
//! can run in one test process and each `/metrics` shows only its own
//! figures. Labelled counters whose label values are known in advance are
//! [`CounterFamily`]s: every series exists from the start, so `rate()` and
//! alerts work before the first event and a scrape shows every family.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The labels of one series, as `(label, value)` pairs.
pub type Labels<'a> = &'a [(&'static str, &'static str)];

/// Declares an enum of label values with `as_str` and `LABELS` (every
/// value, in declaration order), so the code that counts and the code that
/// zero-initialises the series share one closed list.
#[macro_export]
macro_rules! label_values {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $label:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every label value, in declaration order.
            pub const LABELS: &'static [&'static str] = &[$($label),+];

            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $label),+ }
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> Self {
                value.as_str()
            }
        }
    };
}

/// A service's own Prometheus recorder and the handle that renders it.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Registry {
    /// A recorder with the `# HELP` text of each metric in `help`, whose
    /// histograms named in `buckets` (full metric names) have those bucket
    /// bounds; other histograms render as summaries.
    pub fn new(help: &[(&'static str, &'static str)], buckets: &[(&str, &[f64])]) -> Self {
        let mut builder = PrometheusBuilder::new();
        for (name, bounds) in buckets {
            builder = builder
                .set_buckets_for_metric(Matcher::Full((*name).to_owned()), bounds)
                .unwrap_or_else(|e| panic!("buckets of {name}: {e}"));
        }
        let recorder = builder.build_recorder();
        let registry = Self { handle: recorder.handle(), recorder: Arc::new(recorder) };
        for (name, text) in help {
            registry.describe(name, text);
        }
        registry
    }

    /// The `# HELP` text of a metric.
    pub fn describe(&self, name: &'static str, help: &'static str) {
        // The exporter keeps one description per name whatever the type.
        self.recorder.describe_counter(name.into(), None, SharedString::const_str(help));
    }

    pub fn counter(&self, name: &'static str, labels: Labels) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    pub fn gauge(&self, name: &'static str, labels: Labels) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &META)
    }

    pub fn histogram(&self, name: &'static str, labels: Labels) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &META)
    }

    /// A counter with one label, every series of `values` registered at 0.
    pub fn family(
        &self,
        name: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = &'static str>,
    ) -> CounterFamily {
        let series = values.into_iter().map(|v| (v, self.counter(name, &[(label, v)]))).collect();
        CounterFamily { registry: self.clone(), name, label, series }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn key(name: &'static str, labels: Labels) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::from_static_parts(k, v)).collect::<Vec<_>>())
}

/// A counter with one label whose values are a closed list, registered up
/// front: counting only looks the value up.
pub struct CounterFamily {
    registry: Registry,
    name: &'static str,
    label: &'static str,
    series: Vec<(&'static str, Counter)>,
}

impl CounterFamily {
    /// Counts one event labelled `value`, which should be in the family's
    /// list: a value outside it is a bug (the list and the code drifted
    /// apart) that fails debug builds and is still counted in release ones.
    pub fn increment(&self, value: impl Into<&'static str>) {
        let value = value.into();
        match self.series.iter().find(|(v, _)| *v == value) {
            Some((_, counter)) => counter.increment(1),
            None => {
                if cfg!(debug_assertions) {
                    panic!("{}: {}=\"{value}\" is not in its list", self.name, self.label);
                }
                self.registry.counter(self.name, &[(self.label, value)]).increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    label_values! {
        /// Test values.
        enum Colour { Red => "red", Blue => "blue" }
    }

    #[test]
    fn families_exist_from_the_start_and_buckets_apply() {
        let a = Registry::new(&[], &[("t_seconds", &[0.1, 1.0])]);
        let b = Registry::new(&[], &[]);
        a.describe("t_events_total", "Events, by colour");
        assert_eq!(Colour::LABELS, [Colour::Red.as_str(), Colour::Blue.as_str()]);
        let family = a.family("t_events_total", "colour", Colour::LABELS.iter().copied());
        family.increment(Colour::Red);
        a.histogram("t_seconds", &[]).record(0.5);
        let text = a.render();
        assert!(text.contains("# HELP t_events_total Events, by colour"), "{text}");
        assert!(text.contains(r#"t_events_total{colour="red"} 1"#), "{text}");
        assert!(text.contains(r#"t_events_total{colour="blue"} 0"#), "{text}");
        assert!(text.contains(r#"t_seconds_bucket{le="1"} 1"#), "{text}");
        assert!(!b.render().contains("t_events_total"), "each registry is its own");
    }
}
