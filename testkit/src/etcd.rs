//! Real etcd members (Debian's etcd-server package, `cargo xtask setup` installs it) for
//! the store and high-availability tests: loopback only, a data directory of their own,
//! stopped by pid and removed when dropped, also when the test fails.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One etcd member of a cluster this test started.
pub struct EtcdMember {
    name: String,
    data_dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    initial_cluster: String,
    /// The network namespace it runs in; None: this process's.
    netns: Option<String>,
    child: Option<Child>,
}

/// A cluster of `members.len()` members on loopback.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    root: PathBuf,
}

fn free_port() -> SocketAddr {
    // The port is free once the listener is dropped; etcd binds it right after.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

impl EtcdCluster {
    /// Starts `size` members and waits until each answers on its client port.
    pub fn start(size: usize) -> Self {
        Self::start_in(None, size)
    }

    /// The same, in network namespace `netns` (its loopback), for control planes that run
    /// there.
    pub fn start_in(netns: Option<&str>, size: usize) -> Self {
        let root = std::env::temp_dir().join(crate::unique_name("etcd"));
        std::fs::create_dir_all(&root).expect("etcd data root");
        let addresses: Vec<(String, SocketAddr, SocketAddr)> = (0..size)
            .map(|i| (format!("m{i}"), free_port(), free_port()))
            .collect();
        let initial_cluster = addresses
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members: addresses
                .into_iter()
                .map(|(name, client, peer)| EtcdMember {
                    data_dir: root.join(&name),
                    name,
                    client,
                    peer,
                    initial_cluster: initial_cluster.clone(),
                    netns: netns.map(str::to_owned),
                    child: None,
                })
                .collect(),
            root,
        };
        for member in &mut cluster.members {
            member.start();
        }
        for member in &cluster.members {
            member.wait_until_serving();
        }
        cluster
    }

    /// `host:port` of every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// `etcd://a,b,c`, as `--store` takes it.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl EtcdMember {
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// Starts the member (again, with its data, if it was killed).
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "etcd member {} already runs",
            self.name
        );
        let log = std::fs::File::create(self.data_dir.with_extension("log")).expect("etcd log");
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "etcd"]);
                command
            }
            None => Command::new("etcd"),
        };
        let child = command
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "berth-test"])
            // Quick elections, and a minimum lease TTL of 1 s (etcd derives it from the
            // election timeout) for the leader-election tests.
            .args(["--heartbeat-interval", "100", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "etcd from the etcd-server package is needed (`cargo xtask setup` installs it)",
            );
        self.child = Some(child);
    }

    /// SIGKILL, like a crashed machine; the data stays for `start`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (up to a minute: the bound only stops a broken etcd from hanging the test)
    /// until the client port accepts connections.
    pub fn wait_until_serving(&self) {
        let started = Instant::now();
        let client = self.client;
        let serving = || {
            let connect =
                move || TcpStream::connect_timeout(&client, Duration::from_millis(200)).is_ok();
            match &self.netns {
                Some(netns) => berth_net::in_netns(netns, connect).unwrap_or(false),
                None => connect(),
            }
        };
        while !serving() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "etcd member {} did not open {} (log: {})",
                self.name,
                self.client,
                self.data_dir.with_extension("log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
