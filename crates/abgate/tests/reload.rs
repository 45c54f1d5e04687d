//! `abgate serve` reloads its configuration when a file changes and on SIGHUP, on one
//! worker (the current-thread runtime, which reloads on the blocking pool) and on two;
//! a configuration with errors is refused and the running one stays.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{http, model_of, start_gateway, start_sim, write_mesh, Processes, HOST};

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// The model that answers a chat sent to the gateway's default route.
fn answering_model(gateway: std::net::SocketAddr) -> String {
    let reply = http(
        gateway,
        "POST",
        "/v1/chat/completions",
        &[("Host", HOST), ("Content-Type", "application/json")],
        CHAT,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["model"].as_str().expect("a model").to_owned()
}

/// Points the default route of `config/mesh.yaml` at `subset`.
fn route_to(config: &Path, subset: &str) {
    let path = config.join("mesh.yaml");
    let text = std::fs::read_to_string(&path).expect("config read");
    let changed = text.replace("subset: v1-0}", &format!("subset: {subset}}}"));
    let changed = changed.replace("subset: v1-1}", &format!("subset: {subset}}}"));
    std::fs::write(&path, changed).expect("config written");
}

/// Polls until `want` answers or 10 s pass.
fn wait_for_model(gateway: std::net::SocketAddr, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = answering_model(gateway);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, never {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reloads_on(workers: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let mut processes = Processes::new(dir.path());
    let v10 = start_sim(&mut processes, "v1-0", 1);
    let v11 = start_sim(&mut processes, "v1-1", 1);
    write_mesh(&config, v10, v11, false, "");
    let state = dir.path().join("state.db");
    let gw = start_gateway(
        &mut processes,
        "gateway",
        &config,
        &state,
        &["--workers", workers],
    );
    assert_eq!(answering_model(gw.http), model_of("v1-0"));

    // A changed file is picked up.
    route_to(&config, "v1-1");
    wait_for_model(gw.http, &model_of("v1-1"));

    // A file with an error is refused: the running configuration stays.
    let path = config.join("mesh.yaml");
    let good = std::fs::read_to_string(&path).expect("config read");
    std::fs::write(
        &path,
        good.replace("http:\n  - name: default", "http:\n  - nmae: default"),
    )
    .expect("config written");
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..5 {
        assert_eq!(answering_model(gw.http), model_of("v1-1"));
    }

    // SIGHUP reloads too (the watcher is not needed): restore the file, then signal.
    std::fs::write(&path, good.replace("subset: v1-1}", "subset: v1-0}")).expect("written");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    wait_for_model(gw.http, &model_of("v1-0"));

    processes.stop(gw.index);
    let log = std::fs::read_to_string(processes.logs.join("gateway.log")).unwrap_or_default();
    assert!(log.contains("reload refused"), "{log}");
}

#[test]
fn one_worker_reloads_on_change_and_sighup_and_keeps_the_config_on_errors() {
    reloads_on("1");
}

#[test]
fn two_workers_reload_likewise() {
    reloads_on("2");
}
