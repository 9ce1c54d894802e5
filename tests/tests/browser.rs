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

/// bcrypt (cost 4, for speed) of the admin test password.
const ADMIN_HASH: &str = "$2a$04$k7SNVGMqI1/5.eGNCqVuweGF9evMRqHd9OTbSK6MoS8Iz4qeyIlLe";
const ADMIN_PASSWORD: &str = "admin-test-password";

#[test]
fn the_admin_ui_served_by_the_cluster_shows_and_steers_every_node() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (make deps installs it)"
    );
    let ui =
        sio_tests::workspace().join("deploy/admin-ui/node_modules/@socket.io/admin-ui/ui/dist");
    assert!(
        ui.join("index.html").exists(),
        "{} is missing: run deploy/local/deps.sh (npm ci --prefix deploy/admin-ui)",
        ui.display()
    );
    let ui = ui.to_string_lossy().into_owned();
    let test = "admin_ui";
    let c = Cluster::start(
        test,
        3,
        &[
            "--admin-user",
            "admin",
            "--admin-password-hash",
            ADMIN_HASH,
            "--admin-mode",
            "development",
            "--admin-ui-dir",
            &ui,
        ],
    );
    let url = c.redis.url();
    let proxy = Proxy::start(
        test,
        "proxy",
        &["--backends-redis", &url, "--redis-prefix", &c.prefix],
    );
    proxy.wait_healthy_backends(3, Duration::from_secs(20));
    let shots = sio_tests::log_dir(test);
    let ids: Vec<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
    run_js(
        "admin.mjs",
        &[
            ("URL", proxy.url()),
            ("NODES", c.urls()),
            ("NODE_IDS", ids.join(",")),
            ("ADMIN_USER", "admin".to_owned()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
            ("SHOTS", shots.to_string_lossy().into_owned()),
            ("CHROMIUM", chromium),
        ],
    );
    assert!(shots.join("admin-ui.png").exists());
    for node in &c.nodes {
        let log = node.proc.log_text();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", node.id);
    }
    let applied = c
        .nodes
        .iter()
        .filter(|n| n.proc.log_text().contains("admin command applied"))
        .count();
    assert!(applied >= 1, "no node logged the admin commands it applied");
}

/// The admin log-in's lock-out counts the address sio-proxy resolved (`X-Real-IP`), not the
/// `X-Forwarded-For` or `X-Real-IP` a client writes itself (found by the fuzzer: the leftmost
/// `X-Forwarded-For` was believed, so each failure could come from a new "address").
#[test]
fn forged_forwarding_headers_do_not_dodge_the_admin_lock_out() {
    let test = "admin_lockout";
    let c = Cluster::start(
        test,
        1,
        &["--admin-user", "admin", "--admin-password-hash", ADMIN_HASH],
    );
    let url = c.redis.url();
    let proxy = Proxy::start(
        test,
        "proxy",
        &[
            "--backends-redis",
            &url,
            "--redis-prefix",
            &c.prefix,
            "--trust-forwarded",
            "127.0.0.0/8",
        ],
    );
    proxy.wait_healthy_backends(1, Duration::from_secs(20));
    run_js(
        "admin-lockout.mjs",
        &[
            ("URL", proxy.url()),
            ("ADMIN_USER", "admin".to_owned()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
            ("FAILURES", "5".to_owned()),
        ],
    );
}
