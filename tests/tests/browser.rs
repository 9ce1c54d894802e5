//! The official client's browser bundle in Chromium, from a page of another origin, through
//! sio-proxy to a cluster on Redis: what a front-end developer's users run.

use std::time::Duration;

use sio_tests::{Cluster, Proxy, free_port, run_js};

#[test]
fn a_browser_page_on_another_origin_chats_and_gets_notifications() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (make deps installs it)"
    );
    let page_port = free_port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let c = Cluster::start("browser", 2, &["--cors-origin", &origin]);
    let url = c.redis.url();
    let proxy = Proxy::start(
        "browser",
        "proxy",
        &["--backends-redis", &url, "--redis-prefix", &c.prefix],
    );
    proxy.wait_healthy_backends(2, Duration::from_secs(20));
    for mode in ["polling", "websocket", "upgrade"] {
        run_js(
            "browser.mjs",
            &[
                ("MODE", mode.to_owned()),
                ("URL", proxy.url()),
                ("PAGE_PORT", page_port.to_string()),
                ("CHROMIUM", chromium.clone()),
            ],
        );
    }
}
