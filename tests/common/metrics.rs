//! Scraping a daemon's `--metrics` endpoint with a real HTTP client.

use super::TestNode;

/// The metrics address the daemon printed at start.
pub fn metrics_url(node: &TestNode) -> String {
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("metrics on "))
        .unwrap_or_else(|| panic!("no metrics line in the log:\n{log}"));
    line.trim_start_matches("metrics on ").to_string()
}

pub fn scrape(url: &str) -> String {
    let mut response = ureq::get(url)
        .call()
        .expect("scraping the metrics endpoint");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.body_mut().read_to_string().unwrap()
}

/// The value of one sample line (`name{labels} value`), 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}
