"""Where results go and how they come back: the output schema, the sink protocol, the Zarr + Parquet store, the reader and the checks of OUT."""
