"""Running a job on a device: explain_batch (methods and metrics on one batch, no I/O), precision, batch sizing, feeding, cores, and the worker that turns a shard into results."""
