//! The stock `nexus` binary: the command line for the reference domain.

fn main() -> anyhow::Result<()> {
    nexus::cli::main(nexus_domain::domain())
}
