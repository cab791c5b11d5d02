"""`make bench`: side-by-side benchmarks, one JSON each plus SUMMARY.md (see run_all)."""
