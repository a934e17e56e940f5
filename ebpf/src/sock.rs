//! Connections to services set up at `connect()`: a cgroup connect4 program, as Cilium's
//! socket-level load balancing, chooses the backend when a socket connects to a service
//! frontend and connects it to the backend instead. No packet of such a connection is
//! ever translated or tracked: the socket talks to the backend directly, and its kernel
//! picks the source port for the backend's address (where a VIP's one address would make
//! thousands of recent connections compete for ports). It serves the sockets of the
//! node's network namespace (any protocol that connects) and TCP sockets of this node's
//! pods (their namespaces' cookies are in `POD_NETNS`). The program is attached to a
//! cgroup, which spans namespaces, so it leaves every other socket alone; a pod's UDP and
//! whatever does not go through `connect()` keeps its veth's per-packet translation.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use berth_ebpf_common::{CtEntry, IPPROTO_TCP, Reason};

use crate::{
    lb::{self, Flow, Spread},
    maps::{POD_NETNS, account, config, count},
};

/// Verdicts of a cgroup sock_addr program.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn berth_connect4(ctx: SockAddrContext) -> i32 {
    match connect4(&ctx) {
        None => ALLOW,
        Some(reason) => {
            count(reason);
            if reason.is_drop() { REJECT } else { ALLOW }
        }
    }
}

/// Rewrites the address a node or pod socket connects to when it is a service frontend;
/// None for every other connect (passed uncounted: every socket of the machine meets it).
fn connect4(ctx: &SockAddrContext) -> Option<Reason> {
    let config = config()?;
    // SAFETY: the helper reads the program's own context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: fields of the program's own context, which the verifier lets connect4 read.
    let (addr, port, proto) = unsafe {
        let sock = &*ctx.sock_addr;
        (sock.user_ip4, sock.user_port, sock.protocol)
    };
    let node = config.netns_cookie != 0 && cookie == config.netns_cookie;
    let client = if node {
        config.node_addr
    } else {
        // A pod's UDP stays with the per-packet path: its replies may come from the
        // frontend's address to an unconnected socket (sendto), which only that path
        // translates back, and a UDP flow there moves on when its backend fails.
        let pod = POD_NETNS.get_ptr(cookie)?;
        if u32::from(IPPROTO_TCP) != proto {
            return None;
        }
        // SAFETY: a pointer into the map, read at once.
        unsafe { (*pod).addr }
    };
    // The port is in network order in the low 16 bits.
    let flow = Flow {
        src_addr: client,
        dst_addr: addr,
        src_port: 0,
        dst_port: port as u16,
        proto: proto as u8,
        opens_connection: true,
        tcp_flags: 0,
        hairpins: false,
    };
    let service = lb::service(&flow)?;
    // A service without backends refuses the node's connect (EPERM), as kube-proxy
    // rejects it. A pod's is left to its veth's per-packet path, as before this program
    // served pods: its SYN is dropped there and retransmitted, so a client that connects
    // just before the first backend is programmed still gets through.
    let Some((backend_id, backend)) = lb::choose_with_affinity(&service, &flow, Spread::RoundRobin)
    else {
        return node.then_some(Reason::DropNoBackend);
    };
    // SAFETY: fields connect4 may write: the address and port the socket connects to.
    unsafe {
        (*ctx.sock_addr).user_ip4 = backend.addr;
        (*ctx.sock_addr).user_port = u32::from(backend.port);
    }
    let entry = CtEntry {
        backend_id,
        service_id: service.id,
        ..CtEntry::default()
    };
    // Also this CPU's round-robin turn for the service.
    account(&entry, 0, true);
    Some(Reason::SocketTranslated)
}
