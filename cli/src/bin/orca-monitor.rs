//! `orca-monitor DIR`: the per-container monitor the kubelet starts (see
//! `orca_kubelet::runtime::monitor`). A binary of its own so each monitor
//! stays small.

fn main() {
    std::process::exit(orca_kubelet::runtime::monitor::main());
}
