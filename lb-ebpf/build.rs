//! Link options for the eBPF objects.

fn main() {
    // bpf-linker asks LLVM to expand `memcpy` "in order" by default, which makes LLVM
    // turn every `memset` and `memmove` (zeroing a struct, copying an address out of
    // a header) into a call to a byte-at-a-time loop: about a third of an
    // established packet's time went there. Without it LLVM writes them out as
    // loads and stores of the widest size the alignment allows.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
