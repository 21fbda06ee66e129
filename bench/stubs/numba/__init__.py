"""Stand-in for numba on the GPU image: Axolotl imports it for multipack (sample_packing), which anytune leaves off."""
def njit(*a, **k):
    if a and callable(a[0]) and not k:
        return a[0]
    return lambda f: f
