fn main() {
    eprintln!("husk-vmm: not built yet");
    std::process::exit(1);
}
