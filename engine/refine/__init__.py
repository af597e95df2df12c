"""Stage 2 of generate and geometry edits: the extracted mesh refined through rasterised renders."""
