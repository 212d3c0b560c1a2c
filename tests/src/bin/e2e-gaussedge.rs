fn main() -> anyhow::Result<()> {
    gaussedge_host::cli::main()
}
