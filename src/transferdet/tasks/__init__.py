"""One module per CLI task: ``run(cfg, run_dir) -> metrics``, a thin layer over the library."""
