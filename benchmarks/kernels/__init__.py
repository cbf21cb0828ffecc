"""What the hardware and the kernels under each backend can do: peaks, GEMMs, operators."""
