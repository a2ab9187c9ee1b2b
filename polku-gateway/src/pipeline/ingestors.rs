//! The ingestors, by the format and the source they serve: which one turns
//! a request's raw bytes into events.

use crate::SubmitError;
use crate::error::IngestorClash;
use polku_core::Ingestor;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The ingestors, by the format and the source they serve. Plugins that
/// register themselves are added and removed while the gateway runs.
#[derive(Debug, Default)]
pub(crate) struct IngestorTable {
    by_format: BTreeMap<String, Arc<dyn Ingestor>>,
    by_source: BTreeMap<String, Arc<dyn Ingestor>>,
    /// Sources and formats that belong to registered plugins.
    plugin_keys: BTreeSet<String>,
}

impl IngestorTable {
    pub(crate) fn new(ingestors: &[Arc<dyn Ingestor>]) -> Result<Self, IngestorClash> {
        let mut t = IngestorTable::default();
        for ing in ingestors {
            for f in ing.formats() {
                let f = f.to_ascii_lowercase();
                if let Some(other) = t.by_format.insert(f.clone(), ing.clone()) {
                    return Err(IngestorClash {
                        kind: "format",
                        key: f,
                        first: other.name().to_owned(),
                        second: ing.name().to_owned(),
                    });
                }
            }
            for s in ing.sources() {
                if let Some(other) = t.by_source.insert(s.clone(), ing.clone()) {
                    return Err(IngestorClash {
                        kind: "source",
                        key: s.clone(),
                        first: other.name().to_owned(),
                        second: ing.name().to_owned(),
                    });
                }
            }
        }
        Ok(t)
    }

    /// Adds a registered plugin's ingestor for its sources and formats,
    /// replacing an earlier plugin's; a key held by a configured ingestor is
    /// refused.
    pub(crate) fn add_plugin(&mut self, ing: Arc<dyn Ingestor>) -> Result<(), String> {
        let sources = ing.sources();
        let formats: Vec<String> = ing
            .formats()
            .iter()
            .map(|f| f.to_ascii_lowercase())
            .collect();
        for s in &sources {
            if self.by_source.contains_key(s) && !self.plugin_keys.contains(&format!("s:{s}")) {
                return Err(format!("source {s:?} is served by a configured ingestor"));
            }
        }
        for f in &formats {
            if self.by_format.contains_key(f) && !self.plugin_keys.contains(&format!("f:{f}")) {
                return Err(format!("format {f:?} is read by a configured ingestor"));
            }
        }
        for s in sources {
            self.plugin_keys.insert(format!("s:{s}"));
            self.by_source.insert(s, ing.clone());
        }
        for f in formats {
            self.plugin_keys.insert(format!("f:{f}"));
            self.by_format.insert(f, ing.clone());
        }
        Ok(())
    }

    /// Removes what a registered plugin served.
    pub(crate) fn remove_plugin(&mut self, sources: &[String], formats: &[String]) {
        for s in sources {
            if self.plugin_keys.remove(&format!("s:{s}")) {
                self.by_source.remove(s);
            }
        }
        for f in formats {
            let f = f.to_ascii_lowercase();
            if self.plugin_keys.remove(&format!("f:{f}")) {
                self.by_format.remove(&f);
            }
        }
    }

    /// The ingestor for a raw body posted to a source's own endpoint: the
    /// ingestor that serves the source, else the one for the content type.
    pub(crate) fn select_source_first(
        &self,
        source: &str,
        format: &str,
    ) -> Result<Arc<dyn Ingestor>, SubmitError> {
        match self.by_source.get(source) {
            Some(i) => Ok(i.clone()),
            None => self.select(source, format),
        }
    }

    /// The ingestor for raw bytes: by format when one is named (a MIME type's
    /// parameters such as `; charset=utf-8` are ignored), else by source.
    pub(crate) fn select(
        &self,
        source: &str,
        format: &str,
    ) -> Result<Arc<dyn Ingestor>, SubmitError> {
        let format = format.split(';').next().unwrap_or("").trim();
        if !format.is_empty() {
            return self
                .by_format
                .get(&format.to_ascii_lowercase())
                .cloned()
                .ok_or_else(|| SubmitError::UnknownFormat {
                    format: format.to_owned(),
                    known: listing(self.by_format.keys()),
                });
        }
        self.by_source
            .get(source)
            .cloned()
            .ok_or_else(|| SubmitError::UnknownSource {
                source_name: source.to_owned(),
                known: listing(self.by_source.keys()),
                formats: listing(self.by_format.keys()),
            })
    }
}

/// Names for an error message: comma-separated, or "none".
fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list = names.map(String::as_str).collect::<Vec<_>>().join(", ");
    if list.is_empty() {
        "none".to_owned()
    } else {
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use bytes::Bytes;
    use polku_core::{IngestError, Ingested};

    #[derive(Debug)]
    struct Fake {
        name: &'static str,
        formats: &'static [&'static str],
        sources: &'static [&'static str],
    }

    #[async_trait]
    impl Ingestor for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn formats(&self) -> Vec<String> {
            self.formats.iter().map(|s| s.to_string()).collect()
        }
        fn sources(&self) -> Vec<String> {
            self.sources.iter().map(|s| s.to_string()).collect()
        }
        async fn ingest(&self, _: &str, _: Bytes) -> Result<Ingested, IngestError> {
            Ok(Ingested::default())
        }
    }

    fn fake(
        name: &'static str,
        formats: &'static [&'static str],
        sources: &'static [&'static str],
    ) -> Arc<dyn Ingestor> {
        Arc::new(Fake {
            name,
            formats,
            sources,
        })
    }

    fn name(r: Result<Arc<dyn Ingestor>, SubmitError>) -> String {
        r.map(|i| i.name().to_owned())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn two_ingestors_for_one_format_or_source_are_refused() {
        let err = IngestorTable::new(&[fake("a", &["json"], &[]), fake("b", &["JSON"], &[])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"json\"") && err.contains("a and b"), "{err}");
        let err = IngestorTable::new(&[fake("a", &[], &["s"]), fake("b", &[], &["s"])])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source \"s\" is served by two ingestors"),
            "{err}"
        );
    }

    #[test]
    fn a_named_format_wins_and_its_parameters_are_ignored() {
        let t = IngestorTable::new(&[
            fake("json", &["application/json"], &[]),
            fake("csv", &[], &["s"]),
        ])
        .unwrap();
        assert_eq!(
            name(t.select("s", "Application/JSON; charset=utf-8")),
            "json"
        );
        assert_eq!(name(t.select("s", "")), "csv", "no format: by source");
        assert_eq!(name(t.select_source_first("s", "application/json")), "csv");
        assert_eq!(
            name(t.select_source_first("other", "application/json")),
            "json"
        );
    }

    #[test]
    fn an_unknown_format_or_source_lists_the_known_ones() {
        let t = IngestorTable::new(&[fake("json", &["json"], &[])]).unwrap();
        let e = name(t.select("s", "xml"));
        assert!(e.contains("xml") && e.contains("json"), "{e}");
        let e = name(t.select("nobody", ""));
        assert!(e.contains("nobody") && e.contains("json"), "{e}");
        let empty = IngestorTable::new(&[]).unwrap();
        assert!(name(empty.select("s", "")).contains("none"));
    }

    #[test]
    fn a_plugin_takes_over_a_plugins_keys_but_never_a_configured_ingestors() {
        let mut t = IngestorTable::new(&[fake("json", &["json"], &["app"])]).unwrap();
        let err = t.add_plugin(fake("p", &["JSON"], &[])).unwrap_err();
        assert!(err.contains("configured"), "{err}");
        let err = t.add_plugin(fake("p", &[], &["app"])).unwrap_err();
        assert!(err.contains("configured"), "{err}");
        t.add_plugin(fake("csv1", &["csv"], &["sensors"])).unwrap();
        t.add_plugin(fake("csv2", &["csv"], &["sensors"])).unwrap();
        assert_eq!(name(t.select("x", "csv")), "csv2", "the newer registration");
        t.remove_plugin(
            &["sensors".into(), "app".into()],
            &["CSV".into(), "json".into()],
        );
        assert!(name(t.select("x", "csv")).starts_with("error"));
        assert!(name(t.select("sensors", "")).starts_with("error"));
        assert_eq!(
            name(t.select("app", "json")),
            "json",
            "configured keys stay"
        );
        assert_eq!(name(t.select("app", "")), "json");
    }
}
