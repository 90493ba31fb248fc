//! TLS to Redis (`rediss://`): a private CA, a server certificate for 127.0.0.1 and a client
//! certificate, all made per run; Redis requires client certificates.

use std::path::Path;
use std::time::Duration;

use paynotify::redis::target::{Target, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::json;

use crate::support::*;

pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Writes `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`, and `other-ca.pem`
    /// (a CA that signed nothing here).
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert, Issuer::new(params, key))
        };
        let (ca_cert, issuer) = ca("paynotify test CA");
        write("ca.pem", ca_cert.pem());
        write("other-ca.pem", ca("someone else's CA").0.pem());
        let server_key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        write(
            "server.pem",
            params.signed_by(&server_key, &issuer).unwrap().pem(),
        );
        write("server.key", server_key.serialize_pem());
        let client_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "paynotify");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        write(
            "client.pem",
            params.signed_by(&client_key, &issuer).unwrap().pem(),
        );
        write("client.key", client_key.serialize_pem());
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn files(&self, ca: &str) -> TlsFiles {
        TlsFiles {
            ca_file: Some(self.path(ca)),
            client_cert: Some(self.path("client.pem")),
            client_key: Some(self.path("client.key")),
        }
    }
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// A redis-server that speaks TLS on the returned port and requires client certificates.
fn tls_redis(pki: &Pki) -> (RedisServer, u16) {
    let port = paynotify_testkit::free_port().unwrap();
    let redis = RedisServer::start_with_args(vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        arg(&pki.path("server.pem")),
        "--tls-key-file".into(),
        arg(&pki.path("server.key")),
        "--tls-ca-cert-file".into(),
        arg(&pki.path("ca.pem")),
        "--tls-auth-clients".into(),
        "yes".into(),
    ])
    .unwrap();
    (redis, port)
}

async fn ping(target: &Target) -> Result<(), String> {
    let mut conn = tokio::time::timeout(Duration::from_secs(10), target.shared())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_on_rediss_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let (redis, tls_port) = tls_redis(&pki);
    let sink = Sink::start().await;
    let mut c = config(&redis);
    c.redis_url = format!("rediss://127.0.0.1:{tls_port}");
    c.redis_tls = pki.files("ca.pem");
    // Ready means scripts loaded and pub/sub subscriptions live, over TLS.
    let node = Node::start(c).await;
    let (status, body) = node
        .api()
        .post_any(
            "/v1/notifications",
            json!({"id": "over-tls", "url": sink.url("/ok"), "body": "paid"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    node.api()
        .wait_state("over-tls", "delivered", Duration::from_secs(10))
        .await;
    // The key really is in that Redis (read over the plain port).
    let mut plain = redis::Client::open(redis.url()).unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("paynotify*")
        .query(&mut plain)
        .unwrap();
    assert!(!keys.is_empty());
    // Every connection the node made came over TLS: none arrived on the plain port.
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut plain).unwrap();
    let on_plain = format!("laddr=127.0.0.1:{} ", redis.port());
    let over_tls = clients.lines().filter(|l| !l.contains(&on_plain)).count();
    assert!(over_tls >= 2, "{clients}");
    node.stop().await;
}

#[tokio::test]
async fn rediss_refuses_a_server_it_cannot_verify_and_settings_that_do_not_fit() {
    let pki = Pki::new();
    let (_redis, tls_port) = tls_redis(&pki);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    // The right CA and client certificate: connects.
    let ok = Target::open(&url, false, &pki.files("ca.pem")).unwrap();
    ping(&ok).await.unwrap();
    // A CA that did not sign the server's certificate: refused at the handshake.
    let wrong_ca = Target::open(&url, false, &pki.files("other-ca.pem")).unwrap();
    assert!(ping(&wrong_ca).await.is_err());
    // No client certificate, where Redis requires one: refused.
    let anonymous = TlsFiles {
        ca_file: Some(pki.path("ca.pem")),
        ..Default::default()
    };
    assert!(ping(&Target::open(&url, false, &anonymous).unwrap())
        .await
        .is_err());
    // Settings that cannot work are refused before any connection, naming the problem.
    let plain_url = format!("redis://127.0.0.1:{tls_port}");
    let e = Target::open(&plain_url, false, &pki.files("ca.pem"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("rediss://"), "{e}");
    let half = TlsFiles {
        client_cert: Some(pki.path("client.pem")),
        ..Default::default()
    };
    let e = Target::open(&url, false, &half).err().unwrap();
    assert!(e.to_string().contains("go together"), "{e}");
    let missing = TlsFiles {
        ca_file: Some(pki.path("nope.pem")),
        ..Default::default()
    };
    let e = Target::open(&url, false, &missing).err().unwrap();
    assert!(e.to_string().contains("nope.pem"), "{e}");
}
