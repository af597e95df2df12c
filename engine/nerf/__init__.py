"""Stage 1 of generate: the NeRF (density + albedo hash grid, occupancy grid, learned background,
volume renderer) and its regularisers."""
