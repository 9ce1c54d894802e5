//! Who may read what (issue 11), with real nodes, Redis, a real HTTP join hook and the
//! official client in polling, websocket and upgrade modes: room claims and the join hook,
//! the admin-only dashboard, the sender of `chat-message`, RS256/ES256 keys made by the test,
//! standard claims, tokens expiring during a session, and start-up refusals.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sio_tests::{
    Cluster, MODES, Node, Proc, free_port, hook_server, http_get, log_dir, metric, run_js,
    wait_until,
};

fn scenario(name: &str, mode: &str, env: &[(&str, String)]) -> String {
    let mut all = vec![("SCENARIO", name.to_owned()), ("MODE", mode.to_owned())];
    all.extend(env.iter().cloned());
    run_js("authz.mjs", &all)
}

#[test]
fn room_joins_follow_the_token_claims_and_reconnects_recheck_them() {
    let c = Cluster::start("authz-claims", 2, &[]);
    for mode in MODES {
        scenario("claims", mode, &[("URLS", c.urls())]);
    }
    let m: String = c.nodes.iter().map(Node::metrics).collect();
    assert!(
        metric(&m, "sio_event_errors_total", &[("code", "forbidden")]) >= 12.0,
        "{m}"
    );
    assert!(
        metric(&m, "sio_restored_rooms_dropped_total", &[]) >= 6.0,
        "{m}"
    );
}

#[test]
fn room_auth_open_and_auth_none_are_for_development() {
    let open = Node::start("authz-open", "n1", &["--room-auth", "open"]);
    let none = Node::start("authz-none", "n2", &["--auth", "none"]);
    for mode in MODES {
        scenario("open", mode, &[("URL", open.url())]);
        scenario("none", mode, &[("URL", none.url())]);
    }
    assert!(
        open.proc
            .log_text()
            .contains("--room-auth open: every client may join every room; development only")
    );
    assert!(
        none.proc
            .log_text()
            .contains("--auth none: clients are trusted")
    );
}

#[test]
fn chat_message_names_its_sender() {
    let n = Node::start("authz-chat", "n1", &[]);
    for mode in MODES {
        scenario("chatSender", mode, &[("URL", n.url())]);
    }
}

#[test]
fn dashboard_is_for_admin_tokens_only() {
    let n = Node::start("authz-dashboard", "n1", &["--dashboard-interval", "300ms"]);
    for mode in MODES {
        scenario("dashboard", mode, &[("URL", n.url())]);
    }
    let m = n.metrics();
    assert!(
        metric(
            &m,
            "sio_auth_failures_total",
            &[("namespace", "/dashboard"), ("reason", "not_admin")]
        ) >= 9.0,
        "{m}"
    );
}

#[test]
fn the_join_hook_decides_what_the_claims_do_not() {
    let test = "authz-hook";
    let (_hook, hook_url) = hook_server(test);
    let url = format!("{hook_url}/join");
    let c = Cluster::start(
        test,
        1,
        &[
            "--join-hook-url",
            &url,
            "--join-hook-timeout",
            "500ms",
            "--join-hook-cache-ttl",
            "1s",
        ],
    );
    for mode in MODES {
        scenario(
            "hook",
            mode,
            &[("URL", c.nodes[0].url()), ("HOOK", hook_url.clone())],
        );
    }
    let m = c.nodes[0].metrics();
    for (outcome, least) in [
        ("allowed", 3.0),
        ("denied", 9.0),
        ("timeout", 6.0),
        ("error", 3.0),
    ] {
        assert!(
            metric(&m, "sio_join_hook_requests_total", &[("outcome", outcome)]) >= least,
            "{outcome}: {m}"
        );
    }
    for outcome in ["allowed", "denied"] {
        assert!(
            metric(
                &m,
                "sio_join_hook_cache_hits_total",
                &[("outcome", outcome)]
            ) >= 3.0,
            "cached {outcome}: {m}"
        );
    }
    assert!(
        metric(&m, "sio_restored_rooms_dropped_total", &[]) >= 3.0,
        "{m}"
    );
}

/// Fresh key pairs for this run (tests/js/keys.mjs).
fn keys(test: &str) -> PathBuf {
    let dir = log_dir(test).join("keys");
    let _ = std::fs::remove_dir_all(&dir);
    run_js("keys.mjs", &[("KEY_DIR", dir.display().to_string())]);
    dir
}

fn key(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn rs256_and_es256_tokens_pass_with_their_key_and_nothing_else_does() {
    let test = "authz-algorithms";
    let dir = keys(test);
    // the algorithm follows the key type when not given
    let rs = Node::start_bare(
        test,
        "rs256",
        &["--jwt-public-key", &key(&dir, "rsa.pub.pem")],
    );
    let es = Node::start_bare(
        test,
        "es256",
        &[
            "--jwt-public-key",
            &key(&dir, "ec.pub.pem"),
            "--jwt-algorithm",
            "ES256",
        ],
    );
    let urls = format!("{},{}", rs.url(), es.url());
    for mode in MODES {
        scenario(
            "algorithms",
            mode,
            &[
                ("URLS", urls.clone()),
                ("KEY_DIR", dir.display().to_string()),
            ],
        );
    }
    let m = rs.metrics();
    assert!(
        metric(
            &m,
            "sio_auth_failures_total",
            &[("reason", "invalid_token")]
        ) >= 15.0,
        "{m}"
    );
}

#[test]
fn issuer_audience_and_not_before_are_checked() {
    let strict = Node::start(
        "authz-claims-std",
        "strict",
        &[
            "--jwt-issuer",
            "https://idp.test",
            "--jwt-audience",
            "sio-chat",
        ],
    );
    let plain = Node::start("authz-claims-std", "plain", &[]);
    let urls = format!("{},{}", strict.url(), plain.url());
    for mode in MODES {
        scenario("standardClaims", mode, &[("URLS", urls.clone())]);
    }
}

#[test]
fn expired_tokens_disconnect_and_clients_come_back_with_a_fresh_one() {
    let c = Cluster::start("authz-expiry", 1, &["--jwt-leeway", "0s"]);
    for mode in MODES {
        scenario("expiry", mode, &[("URL", c.nodes[0].url())]);
    }
    let m = c.nodes[0].metrics();
    assert!(
        metric(
            &m,
            "sio_token_expiry_disconnects_total",
            &[("namespace", "/")]
        ) >= 6.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sio_token_expiry_disconnects_total",
            &[("namespace", "/notifications")]
        ) >= 3.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sio_auth_failures_total",
            &[("reason", "expired_token")]
        ) >= 3.0,
        "{m}"
    );
}

/// Starts a node that must refuse its configuration: exit code 2 and `message` in its output.
fn refused_at_start(test: &str, id: &str, args: &[&str], message: &str) {
    let mut n = Node::spawn_bare(test, id, args);
    let status = n.proc.wait_exit(Duration::from_secs(20));
    let log = n.proc.log_text();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{id}: {log}");
    assert!(
        log.contains(message),
        "{id}: expected {message:?} in:\n{log}"
    );
}

#[test]
fn unusable_keys_and_short_secrets_are_refused_at_start_up() {
    let test = "authz-startup";
    let dir = keys(test);
    refused_at_start(
        test,
        "short",
        &["--jwt-secret", "only-31-bytes-long-secret-value"],
        "--jwt-secret is 31 bytes long; HS256 needs at least 32 (generate one with `openssl rand -base64 48`)",
    );
    refused_at_start(
        test,
        "p384",
        &["--jwt-public-key", &key(&dir, "ec384.pub.pem")],
        "an EC key on another curve than P-256",
    );
    refused_at_start(
        test,
        "mismatch",
        &[
            "--jwt-public-key",
            &key(&dir, "rsa.pub.pem"),
            "--jwt-algorithm",
            "ES256",
        ],
        "it is an RSA key of 2048 bits but --jwt-algorithm is ES256",
    );
    refused_at_start(
        test,
        "private",
        &["--jwt-public-key", &key(&dir, "rsa.pem")],
        "it is a private key",
    );
    refused_at_start(
        test,
        "ambiguous",
        &[
            "--jwt-public-key",
            &key(&dir, "rsa.pub.pem"),
            "--jwt-secret",
            sio_tests::JWT_SECRET,
        ],
        "choose with --jwt-algorithm",
    );
    refused_at_start(test, "nokey", &[], "--auth jwt needs a key");
    // the conformance server authenticates nobody: it needs no secret
    let conformance = Node::start_bare(test, "conformance", &["--conformance"]);
    assert_eq!(http_get(conformance.addr, "/readyz").unwrap().0, 200);
}

const NODE_JWT_SECRET: &str = "jwt-secret-0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c";
const NODE_API_KEY: &str = "api-key-5a4b3c2d1e0f9a8b";
const REDIS_PASSWORD: &str = "redis-password-7d6c5b4a39";
const SENTINEL_PASSWORD: &str = "sentinel-password-3e2f1a0b";
const HOOK_TOKEN: &str = "hook-token-1a2b3c4d5e6f";
const SID_SECRET: &str = "sid-secret-9a8b7c6d5e4f3a2b";
const SECRETS: [&str; 6] = [
    NODE_JWT_SECRET,
    NODE_API_KEY,
    REDIS_PASSWORD,
    SENTINEL_PASSWORD,
    HOOK_TOKEN,
    SID_SECRET,
];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

/// Runs a binary to completion with `env` and `args`; returns (exit code, stdout + stderr).
fn run_bin(name: &str, env: &[(&str, String)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(sio_tests::bin(name));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args);
    let out = cmd.output().expect("run binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn secrets_never_reach_logs_errors_or_help() {
    let test = "authz-secrets";
    let closed = free_port(); // nothing listens there
    let sentinel_url = format!(
        "redis-sentinel://:{REDIS_PASSWORD}@127.0.0.1:{closed}/0?sentinelServiceName=main&sentinelPassword={SENTINEL_PASSWORD}"
    );
    let hook_url = format!("http://127.0.0.1:{closed}/join?token={HOOK_TOKEN}");
    let node_env = vec![
        ("SIO_JWT_SECRET", NODE_JWT_SECRET.to_owned()),
        ("SIO_API_KEY", NODE_API_KEY.to_owned()),
        ("SIO_REDIS_URL", sentinel_url.clone()),
        ("SIO_JOIN_HOOK_URL", hook_url.clone()),
    ];

    // --help with every secret in the environment
    let (code, help) = run_bin("sio-node", &node_env, &["--help"]);
    assert_eq!(code, Some(0), "{help}");
    assert!(
        help.contains("SIO_JWT_SECRET") && help.contains("SIO_REDIS_URL"),
        "{help}"
    );
    assert_no_secret("sio-node --help", &help);

    // bad configurations, with the secrets set
    for (args, expected) in [
        (vec!["--lease-ttl", "1s"], "--lease-ttl must be at least 3s"),
        (
            vec!["--redis-url", "http://u:redis-password-7d6c5b4a39@h:1"],
            "--redis-url must start with redis://",
        ),
        (
            vec!["--redis-url", "redis://:redis-password-7d6c5b4a39@[::1"],
            "--redis-url is not a URL",
        ),
        (
            vec!["--join-hook-url", "ftp://u:hook-token-1a2b3c4d5e6f@h/"],
            "--join-hook-url must be an http:// or https:// URL",
        ),
    ] {
        let (code, out) = run_bin("sio-node", &node_env, &args);
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert!(
            out.contains(expected),
            "{args:?}: expected {expected:?} in {out}"
        );
        assert_no_secret(&format!("sio-node {args:?}"), &out);
    }

    // Redis unreachable (a sentinel URL with passwords in user info and query)
    let (code, out) = run_bin(
        "sio-node",
        &node_env,
        &["--listen", &format!("127.0.0.1:{}", free_port())],
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("redis-sentinel://:***@127.0.0.1"), "{out}");
    assert_no_secret("sio-node with Redis unreachable", &out);

    // A running node with a password-protected Redis: bad tokens, a wrong API key, a join
    // hook that cannot be reached
    let redis_port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &redis_port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        REDIS_PASSWORD,
    ]);
    let _redis = Proc::spawn("redis", cmd, log_dir(test).join("redis.log"));
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}");
    let mut node = Node::spawn_bare(
        test,
        "n1",
        &[
            "--jwt-secret",
            NODE_JWT_SECRET,
            "--api-key",
            NODE_API_KEY,
            "--redis-url",
            &redis_url,
            "--join-hook-url",
            &hook_url,
        ],
    );
    node.wait_ready(Duration::from_secs(20));
    scenario(
        "badInputs",
        "websocket",
        &[
            ("URL", node.url()),
            ("JWT_SECRET", NODE_JWT_SECRET.to_owned()),
        ],
    );
    node.proc.signal("TERM");
    let _ = node.proc.wait_exit(Duration::from_secs(30));
    let log = node.proc.log_text();
    assert!(log.contains("redis://:***@127.0.0.1"), "{log}");
    assert!(log.contains("join hook is unreachable"), "{log}");
    assert!(log.contains("token=***"), "{log}");
    assert_no_secret("sio-node's log", &log);

    // The proxy: --help, a bad registry URL, an unreachable registry
    let proxy_env = vec![
        ("SIO_PROXY_SID_SECRET", SID_SECRET.to_owned()),
        ("SIO_PROXY_BACKENDS_REDIS", sentinel_url.clone()),
    ];
    let (code, help) = run_bin("sio-proxy", &proxy_env, &["--help"]);
    assert_eq!(code, Some(0), "{help}");
    assert!(help.contains("SIO_PROXY_SID_SECRET"), "{help}");
    assert_no_secret("sio-proxy --help", &help);
    let (code, out) = run_bin(
        "sio-proxy",
        &[("SIO_PROXY_SID_SECRET", SID_SECRET.to_owned())],
        &[
            "--backends-redis",
            "redis://:redis-password-7d6c5b4a39@[::1",
        ],
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("--backends-redis"), "{out}");
    assert_no_secret("sio-proxy with a bad --backends-redis", &out);
    let mut cmd = Command::new(sio_tests::bin("sio-proxy"));
    let port = free_port();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(proxy_env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--discovery-interval", "200ms"]);
    let mut proxy = Proc::spawn("proxy", cmd, log_dir(test).join("proxy.log"));
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            http_get(addr, "/healthz"),
            Ok((200, _))
        )),
        "{}",
        proxy.log_text()
    );
    // a few discovery rounds against the unreachable registry
    assert!(
        wait_until(Duration::from_secs(10), || proxy
            .log_text()
            .contains("registry")),
        "{}",
        proxy.log_text()
    );
    proxy.kill();
    assert_no_secret("sio-proxy's log", &proxy.log_text());
}
