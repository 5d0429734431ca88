"""Official dataset formats shared by the converters (data_prep) and the benchmarks (pipeline.eval)."""
