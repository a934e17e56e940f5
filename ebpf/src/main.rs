//! Berth's datapath: TC programs on pod veths (east-west), an XDP program on the node's
//! external interface (north-south), and TC programs on the underlay interface that carry
//! pod traffic to nodes on other links inside IPIP. Map layouts live in
//! berth-ebpf-common.
#![no_std]
#![no_main]

mod csum;
mod ip;
mod lb;
mod maps;
mod nat;
mod packet;
mod policy;
mod route;
mod sock;
mod tc;
mod tunnel;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; no loop is ever executed.
    loop {}
}

// GPL: bpf_fib_lookup and the ring buffer used for logs are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
