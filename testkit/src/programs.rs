//! Running the datapath's programs on hand-built frames (BPF_PROG_TEST_RUN).

use aya::{
    Ebpf,
    programs::{Program, ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};

/// Runs the TC or XDP program `name` once on `frame`: its return code and the frame it
/// put out.
pub fn test_run(ebpf: &mut Ebpf, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    try_test_run(ebpf, name, frame).unwrap_or_else(|error| {
        panic!(
            "BPF_PROG_TEST_RUN of {name} on {} bytes: {error}",
            frame.len()
        )
    })
}

/// [`test_run`], with the kernel's refusal of a frame (too short for the program type,
/// for example) as an error instead of a panic: for tests that feed arbitrary bytes.
pub fn try_test_run(
    ebpf: &mut Ebpf,
    name: &str,
    frame: &[u8],
) -> Result<(u32, Vec<u8>), ProgramError> {
    run(ebpf, name, frame, None)
}

/// [`test_run`] of a TC program as if `frame` crossed the interface `ifindex` (of this
/// thread's namespace): the program sees it as the packet's device.
pub fn test_run_on(ebpf: &mut Ebpf, name: &str, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    run(ebpf, name, frame, Some(ifindex)).unwrap_or_else(|error| {
        panic!("BPF_PROG_TEST_RUN of {name} on interface {ifindex}: {error}")
    })
}

/// Where `struct __sk_buff` holds `ifindex`: the context passed in ends there, as the
/// kernel takes a shorter context and requires the fields it does not set to be zero.
const SKB_IFINDEX_END: usize = 44;

fn run(
    ebpf: &mut Ebpf,
    name: &str,
    frame: &[u8],
    ifindex: Option<u32>,
) -> Result<(u32, Vec<u8>), ProgramError> {
    let mut out = vec![0u8; frame.len() + 512];
    let context = ifindex.map(|ifindex| {
        let mut skb = [0u8; SKB_IFINDEX_END];
        skb[SKB_IFINDEX_END - 4..].copy_from_slice(&ifindex.to_ne_bytes());
        skb
    });
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: context.as_ref().map(|skb| skb.as_slice()),
        ..TestRunOptions::default()
    };
    let program = ebpf.program(name).expect("program exists");
    let result = if matches!(program, Program::Xdp(_)) {
        let xdp: &Xdp = program.try_into().expect("xdp program");
        xdp.test_run(options)
    } else {
        let tc: &SchedClassifier = program.try_into().expect("tc program");
        tc.test_run(options)
    }?;
    let (return_value, size) = (result.return_value, result.data_size_out as usize);
    out.truncate(size);
    Ok((return_value, out))
}
