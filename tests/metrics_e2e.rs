//! `--metrics` on a real node and a real relay, scraped with a real HTTP client
//! while a handshake and a relayed delivery happen.

mod common;

use common::TestNode;
use common::metrics::{metrics_url, sample, scrape};

#[test]
fn node_and_relay_metrics_move_with_a_handshake_and_a_relayed_delivery() {
    let mut relay = TestNode::init();
    relay.start_relay(&["--metrics", "127.0.0.1:0"]);
    let relay_url = metrics_url(&relay);

    // B is private behind the relay; A dials B through it.
    let mut a = TestNode::init();
    let mut b = TestNode::init();
    a.start_with(&["--metrics", "127.0.0.1:0"]);
    b.start_with(&[
        "--private",
        "--relay",
        &relay.ticket(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    b.wait_registered(1);
    let (a_url, b_url) = (metrics_url(&a), metrics_url(&b));

    let before_b = scrape(&b_url);
    let before_relay = scrape(&relay_url);
    assert_eq!(
        sample(&before_b, "kith_pending_requests"),
        0.0,
        "{before_b}"
    );
    assert_eq!(
        sample(&before_relay, "kith_relay_links{state=\"registered\"}"),
        1.0,
        "{before_relay}"
    );

    let sent = a.json(&["request", &b.ticket(), "-j", "metrics"]);
    assert_eq!(sent["path"], "relayed", "{sent}");
    b.wait_for_state(&a.node_id, "incoming_pending");

    let after_b = scrape(&b_url);
    assert_eq!(
        sample(
            &after_b,
            "kith_envelopes_handled_total{outcome=\"pending\"}"
        ),
        1.0,
        "{after_b}"
    );
    assert_eq!(sample(&after_b, "kith_pending_requests"), 1.0, "{after_b}");
    assert_eq!(
        sample(&after_b, "kith_peers{state=\"incoming-pending\"}"),
        1.0
    );
    assert!(
        sample(&after_b, "kith_store_commit_seconds_count") >= 1.0,
        "{after_b}"
    );
    assert_eq!(
        sample(&after_b, "kith_connections{path=\"relay_link\"}"),
        1.0,
        "{after_b}"
    );

    let after_relay = scrape(&relay_url);
    let forwarded = |t: &str| sample(t, "kith_relay_envelopes{outcome=\"forwarded\"}");
    assert!(
        forwarded(&after_relay) > forwarded(&before_relay),
        "{after_relay}"
    );

    let a_text = scrape(&a_url);
    assert_eq!(
        sample(&a_text, "kith_peers{state=\"outgoing-pending\"}"),
        1.0,
        "{a_text}"
    );

    // Anything but GET /metrics is a 404.
    let other = ureq::get(&a_url.replace("/metrics", "/")).call();
    assert!(
        matches!(other, Err(ureq::Error::StatusCode(404))),
        "{other:?}"
    );
}

#[test]
fn metrics_are_off_by_default_and_default_to_loopback() {
    let mut a = TestNode::init();
    a.start();
    assert!(!a.log().contains("metrics on"), "{}", a.log());
    let help = a.run_ok(&["run", "--help"]);
    assert!(help.contains("127.0.0.1:9464"), "{help}");
}
