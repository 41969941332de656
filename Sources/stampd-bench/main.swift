// Load client for stampd and nginx + nchan: see BENCHMARKS.md.
print("stampd-bench: not written yet")
