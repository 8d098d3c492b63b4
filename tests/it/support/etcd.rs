//! A real etcd cluster on loopback ports for the group tests: data directories in scratch,
//! every node killed by pid on drop.

use crate::support::{free_port, Scratch};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdCluster {
    pub nodes: Vec<Option<Child>>,
    /// `127.0.0.1:port` of each node's client listener.
    pub endpoints: Vec<String>,
    _dir: Scratch,
}

impl EtcdCluster {
    /// Start `n` etcd nodes forming one cluster and wait until it accepts writes.
    pub fn start(n: usize) -> EtcdCluster {
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
                .map(|(c, _)| format!("127.0.0.1:{c}"))
                .collect(),
            _dir: dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = cluster._dir.join(&format!("n{i}"));
            let log = std::fs::File::create(cluster._dir.join(&format!("n{i}.log"))).unwrap();
            let child = Command::new("etcd")
                .args([
                    "--name",
                    &format!("n{i}"),
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
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
        let etcd = quiesce::group::etcd::Etcd::new(&cluster.endpoints, Duration::from_secs(2));
        let start = Instant::now();
        while etcd.put("/quiesce-test/ping", "1", 0).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd cluster did not come up"
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
