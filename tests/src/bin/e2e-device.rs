fn main() -> anyhow::Result<()> {
    gaussedge_device::cli::main()
}
