//! The `ticketing` binary: Nexus's whole command line (`serve`, `graph`, `policy`, `schema`,
//! `projections`, `dlq`, `bench`) for the ticketing domain.

fn main() -> anyhow::Result<()> {
    nexus::cli::main(ticketing::domain())
}
