"""The worker side of a run: read, decode, encode and write, as plain functions of Arrow tables (and the
encoder's class), and the contract between them and the driver (embedding.stages.contract)."""
