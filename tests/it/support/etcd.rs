//! A real etcd cluster on loopback ports for the group tests: data directories in scratch,
//! every node killed by pid on drop; optionally with TLS client certificates (made with the
//! openssl CLI).

use crate::support::{free_port, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A test CA, etcd's certificate for 127.0.0.1, a client certificate, and a second CA that
/// signed neither (for "wrong CA").
#[allow(dead_code)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[allow(dead_code)]
impl Certs {
    /// Make every certificate in `dir` (EC P-256 keys, valid one day; keys mode 600).
    pub fn make(dir: &Path) -> Certs {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=quiesce test {ca}"),
            );
            let mut args = vec![
                "req", "-x509", "-days", "1", "-subj", &subj, "-keyout", &key, "-out", &pem,
            ];
            args.extend(ec);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(dir, &args);
        }
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, subj) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.pem"),
                format!("/CN=quiesce-{who}"),
            );
            let mut args = vec!["req", "-new", "-subj", &subj, "-keyout", &key, "-out", &csr];
            args.extend(ec);
            openssl(dir, &args);
            let extfile = format!("{who}.ext");
            std::fs::write(dir.join(&extfile), ext).unwrap();
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-days",
                    "1",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-extfile",
                    &extfile,
                    "-out",
                    &pem,
                ],
            );
        }
        for key in ["ca.key", "other-ca.key", "server.key", "client.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        Certs {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.pem"),
        }
    }

    /// The client side: this CA, this client certificate and key.
    pub fn client_files(&self) -> quiesce::group::etcd::TlsFiles {
        quiesce::group::etcd::TlsFiles {
            ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client_cert.clone()),
            key_file: Some(self.client_key.clone()),
        }
    }
}

pub struct EtcdCluster {
    pub nodes: Vec<Option<Child>>,
    /// `127.0.0.1:port` of each node's client listener.
    pub endpoints: Vec<String>,
    _dir: Scratch,
}

impl EtcdCluster {
    /// Start `n` etcd nodes forming one cluster and wait until it accepts writes.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None)
    }

    /// Like [`EtcdCluster::start`]; with `tls`, clients must speak TLS and show a
    /// certificate signed by the test CA (`--client-cert-auth`).
    pub fn start_with(n: usize, tls: Option<&Certs>) -> EtcdCluster {
        EtcdCluster::launch(n, tls.map(|c| (c, true)))
    }

    /// TLS on the client port, but no client certificate asked for (etcd without
    /// `--client-cert-auth`): clients check the server's certificate only.
    pub fn start_tls_server_only(n: usize, certs: &Certs) -> EtcdCluster {
        EtcdCluster::launch(n, Some((certs, false)))
    }

    /// `tls`: the certificates, and whether clients must show one of their own.
    fn launch(n: usize, tls: Option<(&Certs, bool)>) -> EtcdCluster {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let dir = Scratch::new("etcd");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut cluster = EtcdCluster {
            nodes: Vec::new(),
            endpoints: ports
                .iter()
                .map(|(c, _)| match tls {
                    Some(_) => format!("https://127.0.0.1:{c}"),
                    None => format!("127.0.0.1:{c}"),
                })
                .collect(),
            _dir: dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = cluster._dir.join(&format!("n{i}"));
            let log = std::fs::File::create(cluster._dir.join(&format!("n{i}.log"))).unwrap();
            let mut cmd = Command::new("etcd");
            if let Some((c, client_certs)) = tls {
                cmd.arg("--cert-file")
                    .arg(&c.server_cert)
                    .arg("--key-file")
                    .arg(&c.server_key);
                // A trusted CA alone already makes etcd ask clients for a certificate.
                if client_certs {
                    cmd.arg("--trusted-ca-file")
                        .arg(&c.ca)
                        .arg("--client-cert-auth");
                }
            }
            let child = cmd
                .args([
                    "--name",
                    &format!("n{i}"),
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--listen-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &format!("quiesce-test-{}", std::process::id()),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (apt-get install etcd-server)");
            cluster.nodes.push(Some(child));
        }
        let mut etcd = quiesce::group::etcd::Etcd::new(&cluster.endpoints, Duration::from_secs(2));
        if let Some((c, _)) = tls {
            etcd = etcd.with_tls(&c.client_files()).unwrap();
        }
        let start = Instant::now();
        while let Err(e) = etcd.put("/quiesce-test/ping", "1", 0) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd cluster did not come up: {e}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// Kill one node (the cluster keeps its quorum with 2 of 3).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}
