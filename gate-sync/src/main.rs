fn main() {
    eprintln!("gate-sync is not built yet; see ARCHITECTURE.md");
    std::process::exit(2);
}
