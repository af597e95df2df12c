"""What the pipelines share: the optimisation loop, prompt encoding, the outputs every job
writes (bake, export, corner UVs, previews), the edit sources, and stage 2's shape terms.
A pipeline (engine/pipelines/*.py) imports from here, never from another pipeline."""
