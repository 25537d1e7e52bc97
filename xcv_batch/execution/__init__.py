"""Running the methods near the device's limits: precision, batch sizing, feeding, cores, and the worker that turns a shard into results."""
