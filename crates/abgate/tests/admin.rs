//! The admin API's guard, against a real `abgate serve` on 127.0.0.1: a token given is
//! refused at startup when it is empty, blank or short, on any admin address; the bearer
//! scheme is read in any case, an empty credential is never accepted, and only the API
//! versions that exist are routed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http, start_gateway, start_sim, wait_for, write_mesh, Processes};
use serde_json::json;

/// A token of exactly 16 bytes: the shortest accepted.
const TOKEN: &str = "0123456789abcdef";

/// `abgate serve` on the mesh in `dir` with ephemeral ports and `extra` arguments, run
/// to its exit (it must exit within 15 s): its exit code and standard error.
fn serve_to_exit(dir: &Path, extra: &[&str], env: Option<&str>) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_abgate"));
    command
        .arg("serve")
        .arg("-f")
        .arg(dir.join("mesh.yaml"))
        .arg("--state")
        .arg(dir.join("state.db"))
        .args(["--listen", "127.0.0.1:0", "--admin"])
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("ABGATE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = env {
        command.env("ABGATE_ADMIN_TOKEN", token);
    }
    let mut child = command.spawn().expect("abgate serve starts");
    let status = wait_for(&mut child, Duration::from_secs(15));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(status.is_some(), "abgate serve kept running: {stderr}");
    (status.and_then(|s| s.code()), stderr)
}

#[test]
fn empty_blank_and_short_tokens_are_refused_at_startup_on_every_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The model servers are never reached: startup stops before.
    write_mesh(
        dir.path(),
        common::free_port(),
        common::free_port(),
        false,
        "",
    );
    let file = dir.path().join("token");
    let file_arg = file.to_str().expect("UTF-8 path");
    for admin in ["127.0.0.1:0", "0.0.0.0:0"] {
        for (content, expected) in [
            ("", "is empty"),
            (" \n\t \n", "is empty"),
            ("0123456789abcde\n", "a token of 15 bytes"),
        ] {
            std::fs::write(&file, content).expect("token file");
            let (code, stderr) =
                serve_to_exit(dir.path(), &[admin, "--admin-token-file", file_arg], None);
            assert_eq!(code, Some(1), "{content:?} on {admin}: {stderr}");
            assert!(
                stderr.contains(&format!("the admin token file {file_arg}"))
                    && stderr.contains(expected)
                    && stderr.contains("at least 16 bytes"),
                "{content:?} on {admin}: {stderr}"
            );
        }
        for (value, expected) in [("", "is empty"), ("   ", "is empty"), ("short", "5 bytes")] {
            let (code, stderr) = serve_to_exit(dir.path(), &[admin], Some(value));
            assert_eq!(code, Some(1), "ABGATE_ADMIN_TOKEN={value:?}: {stderr}");
            assert!(
                stderr.contains("ABGATE_ADMIN_TOKEN") && stderr.contains(expected),
                "ABGATE_ADMIN_TOKEN={value:?}: {stderr}"
            );
        }
    }
    assert!(
        !dir.path().join("admin.token").exists(),
        "no token was generated in place of the one refused"
    );
}

#[test]
fn the_bearer_scheme_is_read_in_any_case_and_an_empty_credential_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let v10 = start_sim(&mut processes, "v1-0", 1);
    let v11 = start_sim(&mut processes, "v1-1", 1);
    write_mesh(dir.path(), v10, v11, false, "");
    // Where the harness reads the token from; a trailing newline is not part of it.
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).expect("token");
    let token_file = dir.path().join("admin.token");
    let gateway = start_gateway(
        &mut processes,
        "gateway",
        &dir.path().join("mesh.yaml"),
        &dir.path().join("state.db"),
        &["--admin-token-file", token_file.to_str().expect("UTF-8")],
    );
    let create = |authorization: &str, id: &str| {
        let body = json!({ "id": id, "traffic_split": { "v1-0": 50, "v1-1": 50 } }).to_string();
        http(
            gateway.admin,
            "POST",
            "/api/v1/experiments",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", authorization),
            ],
            &body,
        )
    };
    for (n, scheme) in ["Bearer", "bearer", "BEARER", "bEaReR"].iter().enumerate() {
        let reply = create(&format!("{scheme} {TOKEN}"), &format!("case-{n}"));
        assert_eq!(reply.status, 200, "{scheme}: {reply:#?}");
    }
    for authorization in [
        "Bearer ",
        "Bearer",
        "bearer   ",
        "Bearer 0123456789abcdeX",
        "Basic 0123456789abcdef",
        "0123456789abcdef",
    ] {
        let reply = create(authorization, "refused");
        assert_eq!(reply.status, 401, "{authorization:?}: {reply:#?}");
        assert_eq!(reply.json()["error"]["code"], "unauthorized", "{reply:#?}");
    }
    let (status, list) = gateway.get("/api/v1/experiments");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(4), "{list}");
}

#[test]
fn only_api_versions_that_exist_are_routed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut processes = Processes::new(dir.path());
    let v10 = start_sim(&mut processes, "v1-0", 1);
    let v11 = start_sim(&mut processes, "v1-1", 1);
    write_mesh(dir.path(), v10, v11, false, "");
    let gateway = start_gateway(
        &mut processes,
        "gateway",
        &dir.path().join("mesh.yaml"),
        &dir.path().join("state.db"),
        &[],
    );
    let (status, list) = gateway.get("/api/v1/experiments");
    assert_eq!((status, list), (200, json!([])));
    let (status, _) = gateway.get("/api/v1/openapi.json");
    assert_eq!(status, 200);
    for path in [
        "/api/v2/experiments",
        "/api/v0/experiments",
        "/api/v1x/experiments",
        "/api/experiments",
        "/api/v2/openapi.json",
        "/api/V1/experiments",
    ] {
        let (status, body) = gateway.get(path);
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "GET {path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("/api/v1/")),
            "GET {path}: {body}"
        );
    }
    // A mutation on another version is not created as a v1 one, token or not.
    let body = json!({ "id": "v2-try", "traffic_split": { "v1-0": 50, "v1-1": 50 } }).to_string();
    let (status, reply) =
        gateway.api_as("POST", "/api/v2/experiments", Some(&gateway.token()), &body);
    assert_eq!(status, 404, "{reply}");
    let (_, list) = gateway.get("/api/v1/experiments");
    assert_eq!(list, json!([]));
}
