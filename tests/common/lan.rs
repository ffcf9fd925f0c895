//! A network between throwaway machines: a bridge in a network namespace of the test's own,
//! and one veth pair per machine (its end named `lan0` inside the machine, with the address
//! given). No interface of the host is touched; dropping the `Lan` deletes the namespace, its
//! bridge and every veth with it.

use std::process::Command;

use super::machine::Machine;
use super::text;

pub struct Lan {
    /// The namespace holding the bridge `br0`.
    pub netns: String,
}

pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&o.stderr)
    );
}

impl Lan {
    /// Connects `machines` on one bridge; machine i gets `addresses[i]` (CIDR) on `lan0`.
    pub fn connect(tag: &str, machines: &[(&Machine, &str)]) -> Lan {
        let netns = format!("dtm-{tag}-{}", std::process::id());
        ip(&["netns", "add", &netns]);
        let lan = Lan { netns };
        let ns = lan.netns.as_str();
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", ns, "link", "set", "br0", "up"]);
        // Its own addresses (a server on the bridge, see `pebble`) are reached through lo.
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        for (i, (m, addr)) in machines.iter().enumerate() {
            let leader = text(
                &Command::new("bash")
                    .arg(
                        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                            .join("tests/machine/machine.sh"),
                    )
                    .args(["leader", &m.name])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .trim()
            .to_string();
            let port = format!("p{i}");
            ip(&[
                "-n", ns, "link", "add", &port, "type", "veth", "peer", "name", "lan0", "netns",
                &leader,
            ]);
            ip(&["-n", ns, "link", "set", &port, "master", "br0", "up"]);
            m.ok(&format!(
                "ip addr add {addr} dev lan0 && ip link set lan0 up"
            ));
        }
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}
