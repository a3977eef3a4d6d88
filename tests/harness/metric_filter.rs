//! CloudWatch Logs' JSON metric filters, as far as the stack's use them, run over audit lines:
//! moto stores the filters `gatehouse-vpc apply` puts on the audit log group but never
//! evaluates them (no metric moves, and TestMetricFilter is not implemented), so the tests
//! count what each filter would count over the lines the daemon wrote and shipped.
//!
//! The subset: `{ TERM && TERM ... }` where a TERM is `$.field = "text"`, optionally in
//! parentheses; a metric value of a number or `$.field`. Anything else is refused loudly, so a
//! filter the stack starts to use beyond it cannot pass unnoticed.

use serde_json::Value;

/// One metric filter as CloudWatch Logs describes it.
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: String,
    pub pattern: String,
    pub metric: String,
    pub value: String,
}

/// The (field, text) terms of `pattern`, all of which must hold.
fn terms(pattern: &str) -> Vec<(String, String)> {
    let inner = pattern
        .trim()
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a JSON filter pattern: {pattern:?}"));
    inner
        .split("&&")
        .map(|term| {
            let term = term.trim();
            let term = term
                .strip_prefix('(')
                .and_then(|t| t.strip_suffix(')'))
                .unwrap_or(term)
                .trim();
            let (field, text) = term
                .split_once('=')
                .unwrap_or_else(|| panic!("term without `=` in {pattern:?}"));
            let field = field.trim();
            let text = text.trim();
            assert!(
                field.starts_with("$.") && !field.contains(['[', '*', ' ']),
                "field {field:?} of {pattern:?} is beyond this evaluator"
            );
            let text = text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or_else(|| panic!("value {text:?} of {pattern:?} is not a string"));
            (field[2..].to_owned(), text.to_owned())
        })
        .collect()
}

/// The field `path` (dotted) of `line`.
fn field<'a>(line: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(line, |v, key| v.get(key))
}

impl Filter {
    /// Whether the filter matches `line` (an audit line's JSON text).
    pub fn matches(&self, line: &str) -> bool {
        let Ok(json) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        terms(&self.pattern)
            .iter()
            .all(|(path, text)| field(&json, path).and_then(Value::as_str) == Some(text))
    }

    /// What the filter adds to its metric for `line`: 0 when it does not match.
    pub fn value_of(&self, line: &str) -> f64 {
        if !self.matches(line) {
            return 0.0;
        }
        match self.value.strip_prefix("$.") {
            Some(path) => serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|json| field(&json, path).and_then(Value::as_f64))
                .unwrap_or(0.0),
            None => self
                .value
                .parse()
                .unwrap_or_else(|_| panic!("metric value {:?}", self.value)),
        }
    }
}

/// The sum of metric `metric` over `lines`, by every filter that publishes to it.
pub fn metric_sum(filters: &[Filter], metric: &str, lines: &[String]) -> f64 {
    filters
        .iter()
        .filter(|f| f.metric == metric)
        .map(|f| lines.iter().map(|l| f.value_of(l)).sum::<f64>())
        .sum()
}
