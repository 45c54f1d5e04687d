//! `abgate serve` reloads its configuration when a file changes and on SIGHUP, on one
//! worker (the current-thread runtime, which reloads on the blocking pool) and on two.
//! SIGHUP is proven alone: the watcher waits an hour for the files to settle, so only
//! the signal can have read the change.
//! A reload waits for the files to settle; one that adds errors the running
//! configuration lacks is refused (and counted) and the running one stays; deleting or
//! emptying a file is a change like any other.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{http, model_of, start_gateway, start_sim, write_mesh, Gateway, Processes, HOST};

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

    processes.stop(gw.index);
    let log = std::fs::read_to_string(processes.logs.join("gateway.log")).unwrap_or_default();
    assert!(log.contains("reload refused"), "{log}");
}

#[test]
fn one_worker_reloads_on_change_and_keeps_the_config_on_errors() {
    reloads_on("1");
}

#[test]
fn two_workers_reload_likewise() {
    reloads_on("2");
}

/// Sends SIGHUP to the gateway.
fn hang_up(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -HUP {}", gw.pid);
}

fn sighup_reloads_on(workers: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    // The watcher sees the change but would read it only after an hour of quiet.
    let (gw, routes) = gateway_with_routes_apart(
        dir.path(),
        &mut processes,
        &["--workers", workers, "--reload-settle", "1h"],
    );

    std::fs::write(&routes, routes_to("llama-3.1-8b-routes", "v1-1")).expect("written");
    for _ in 0..5 {
        assert_eq!(answering_model(gw.http), model_of("v1-0"));
    }
    assert_eq!(reloads(&gw), (0, 0), "nothing reloads before the signal");

    hang_up(&gw);
    wait_for_reloads(&gw, (1, 0));
    assert_eq!(answering_model(gw.http), model_of("v1-1"));

    // Each signal is one reload, even of unchanged files.
    hang_up(&gw);
    wait_for_reloads(&gw, (2, 0));
    assert_eq!(answering_model(gw.http), model_of("v1-1"));
}

#[test]
fn one_worker_reloads_on_sighup_before_the_watcher_would() {
    sighup_reloads_on("1");
}

#[test]
fn two_workers_reload_on_sighup_likewise() {
    sighup_reloads_on("2");
}

/// `abgate_config_reloads_total` as `(applied, refused)`.
fn reloads(gw: &Gateway) -> (u64, u64) {
    let reply = http(gw.admin, "GET", "/metrics", &[], "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let count = |result: &str| {
        let prefix = format!("abgate_config_reloads_total{{result=\"{result}\"}} ");
        reply
            .body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
            .parse()
            .expect("a count")
    };
    (count("applied"), count("refused"))
}

/// Polls until the reload counter reaches `want` `(applied, refused)`, at most 10 s.
fn wait_for_reloads(gw: &Gateway, want: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = reloads(gw);
        if got == want {
            return;
        }
        assert!(
            got.0 <= want.0 && got.1 <= want.1,
            "reloads (applied, refused) went past {want:?}: {got:?}"
        );
        assert!(
            Instant::now() < deadline,
            "reloads stayed {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The seed mesh with its VirtualService moved from `mesh.yaml` into `routes.yaml`.
fn mesh_with_routes_apart(config: &Path, v10: u16, v11: u16) -> PathBuf {
    write_mesh(config, v10, v11, false, "");
    let mesh = config.join("mesh.yaml");
    let text = std::fs::read_to_string(&mesh).expect("mesh");
    let split = text
        .find("apiVersion: networking.istio.io/v1\nkind: VirtualService")
        .expect("the VirtualService document");
    let (rest, routes) = text.split_at(split);
    std::fs::write(&mesh, rest.trim_end().trim_end_matches("---")).expect("mesh written");
    let path = config.join("routes.yaml");
    std::fs::write(&path, routes).expect("routes written");
    path
}

/// A VirtualService `name` for the seed host whose default route goes to `subset`.
fn routes_to(name: &str, subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: production}}
spec:
  hosts: [{HOST}]
  http:
  - name: default
    route:
    - destination: {{host: {HOST}, subset: {subset}}}
"
    )
}

/// A VirtualService `llama-typo` for its own host, routing to a subset no
/// DestinationRule defines: an error (IST0101) that is not a resource the loader rejects.
fn broken_routes() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: llama-typo, namespace: production}}
spec:
  hosts: [typo.example]
  http:
  - route:
    - destination: {{host: {HOST}, subset: v9}}
"
    )
}

/// A gateway on the seed mesh with the routes in their own file; the fixture's parts.
fn gateway_with_routes_apart(
    dir: &Path,
    processes: &mut Processes,
    extra: &[&str],
) -> (Gateway, PathBuf) {
    let config = dir.join("config");
    std::fs::create_dir(&config).expect("config dir");
    let v10 = start_sim(processes, "v1-0", 1);
    let v11 = start_sim(processes, "v1-1", 1);
    let routes = mesh_with_routes_apart(&config, v10, v11);
    let gw = start_gateway(processes, "gateway", &config, &dir.join("state.db"), extra);
    assert_eq!(answering_model(gw.http), model_of("v1-0"));
    (gw, routes)
}

#[test]
fn a_reload_that_adds_an_error_is_refused_and_traffic_keeps_the_old_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let (gw, routes) = gateway_with_routes_apart(dir.path(), &mut processes, &[]);

    // The default route moves to v1-1, and a second VirtualService brings an error the
    // running configuration lacks.
    let changed = format!(
        "{}---\n{}",
        routes_to("llama-3.1-8b-routes", "v1-1"),
        broken_routes()
    );
    std::fs::write(&routes, &changed).expect("written");
    wait_for_reloads(&gw, (0, 1));
    for _ in 0..5 {
        assert_eq!(answering_model(gw.http), model_of("v1-0"));
    }

    // A valid change applies.
    std::fs::write(&routes, routes_to("llama-3.1-8b-routes", "v1-1")).expect("written");
    wait_for_reloads(&gw, (1, 1));
    assert_eq!(answering_model(gw.http), model_of("v1-1"));

    processes.stop(gw.index);
    let log = std::fs::read_to_string(processes.logs.join("gateway.log")).expect("log");
    let refusal = log
        .lines()
        .find(|l| l.contains("reload refused") && l.contains("IST0101"))
        .unwrap_or_else(|| panic!("the refusal names the finding: {log}"));
    assert!(
        refusal.contains("llama-typo") && refusal.contains("subset"),
        "{refusal}"
    );
}

#[test]
fn errors_the_running_configuration_already_had_do_not_block_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let v10 = start_sim(&mut processes, "v1-0", 1);
    let v11 = start_sim(&mut processes, "v1-1", 1);
    let routes = mesh_with_routes_apart(&config, v10, v11);
    // Started with the error in place (without --strict that is allowed).
    let broken = config.join("broken.yaml");
    std::fs::write(&broken, broken_routes()).expect("written");
    let gw = start_gateway(
        &mut processes,
        "gateway",
        &config,
        &dir.path().join("state.db"),
        &[],
    );

    // Lines added above the error move it; it is the same finding, so the reload applies.
    std::fs::write(
        &broken,
        format!("# moved down\n# by two lines\n{}", broken_routes()),
    )
    .expect("written");
    wait_for_reloads(&gw, (1, 0));
    std::fs::write(&routes, routes_to("llama-3.1-8b-routes", "v1-1")).expect("written");
    wait_for_reloads(&gw, (2, 0));
    assert_eq!(answering_model(gw.http), model_of("v1-1"));
}

#[test]
fn deleting_or_emptying_the_file_of_a_virtual_service_removes_its_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let (gw, routes) = gateway_with_routes_apart(dir.path(), &mut processes, &[]);
    let chat = |gw: &Gateway| {
        http(
            gw.http,
            "POST",
            "/v1/chat/completions",
            &[("Host", HOST), ("Content-Type", "application/json")],
            CHAT,
        )
        .status
    };

    std::fs::remove_file(&routes).expect("deleted");
    wait_for_reloads(&gw, (1, 0));
    assert_eq!(chat(&gw), 404);

    // Back, then emptied: emptying is a change like deleting.
    std::fs::write(&routes, routes_to("llama-3.1-8b-routes", "v1-1")).expect("written");
    wait_for_reloads(&gw, (2, 0));
    assert_eq!(answering_model(gw.http), model_of("v1-1"));
    std::fs::write(&routes, "").expect("emptied");
    wait_for_reloads(&gw, (3, 0));
    assert_eq!(chat(&gw), 404);
}

#[test]
fn a_file_written_in_two_stages_is_read_once_it_has_settled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let (gw, routes) =
        gateway_with_routes_apart(dir.path(), &mut processes, &["--reload-settle", "1500ms"]);

    // As scp or an editor writes: the first half, a pause well inside the settle time,
    // the rest. Half a VirtualService is broken YAML; read then, it would be refused.
    let full = routes_to("llama-3.1-8b-routes", "v1-1");
    let (first, second) = full.split_at(full.len() / 2);
    let mut file = std::fs::File::create(&routes).expect("opened");
    file.write_all(first.as_bytes()).expect("first half");
    file.sync_all().expect("synced");
    std::thread::sleep(Duration::from_millis(300));
    file.write_all(second.as_bytes()).expect("second half");
    drop(file);

    wait_for_model(gw.http, &model_of("v1-1"));
    // One reload, of the whole file: the half was never loaded.
    assert_eq!(reloads(&gw), (1, 0));
}

#[test]
fn deleting_a_named_file_removes_its_routes_but_losing_every_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    let v10 = start_sim(&mut processes, "v1-0", 1);
    let v11 = start_sim(&mut processes, "v1-1", 1);
    let routes = mesh_with_routes_apart(&config, v10, v11);
    let mesh = config.join("mesh.yaml");
    let routes_arg = routes.to_str().expect("UTF-8 path");
    let gw = start_gateway(
        &mut processes,
        "gateway",
        &mesh,
        &dir.path().join("state.db"),
        &["-f", routes_arg],
    );
    assert_eq!(answering_model(gw.http), model_of("v1-0"));
    let status = |gw: &Gateway| {
        http(
            gw.http,
            "POST",
            "/v1/chat/completions",
            &[("Host", HOST), ("Content-Type", "application/json")],
            CHAT,
        )
        .status
    };

    std::fs::remove_file(&routes).expect("deleted");
    wait_for_reloads(&gw, (1, 0));
    assert_eq!(status(&gw), 404);

    // Routes back; then every named file gone: not an edit, refused, routes stay.
    std::fs::write(&routes, routes_to("llama-3.1-8b-routes", "v1-1")).expect("written");
    wait_for_reloads(&gw, (2, 0));
    assert_eq!(answering_model(gw.http), model_of("v1-1"));
    std::fs::rename(&config, dir.path().join("config-moved")).expect("moved away");
    wait_for_reloads(&gw, (2, 1));
    assert_eq!(answering_model(gw.http), model_of("v1-1"));
}
