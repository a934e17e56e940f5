//! Running the datapath's programs on hand-built frames (BPF_PROG_TEST_RUN).

use aya::{
    Ebpf,
    programs::{Program, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};

/// Runs the TC or XDP program `name` once on `frame`: its return code and the frame it
/// put out.
pub fn test_run(ebpf: &mut Ebpf, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 512];
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    };
    let program = ebpf.program(name).expect("program exists");
    let result = if matches!(program, Program::Xdp(_)) {
        let xdp: &Xdp = program.try_into().expect("xdp program");
        xdp.test_run(options)
    } else {
        let tc: &SchedClassifier = program.try_into().expect("tc program");
        tc.test_run(options)
    }
    .unwrap_or_else(|error| {
        panic!(
            "BPF_PROG_TEST_RUN of {name} on {} bytes: {error}",
            frame.len()
        )
    });
    let (return_value, size) = (result.return_value, result.data_size_out as usize);
    out.truncate(size);
    (return_value, out)
}
