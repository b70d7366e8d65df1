import VMMHarness
print("vmm-harness: under construction")
