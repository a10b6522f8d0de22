"""Host benchmarks: latency, throughput, memory and accuracy per artifact."""
