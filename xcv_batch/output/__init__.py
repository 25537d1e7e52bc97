"""Where results go and how they come back: the output schema, the sink protocol, the Parquet row ledger, the map
formats (Zarr built in), the reader and the checks of OUT."""
