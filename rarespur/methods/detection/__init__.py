"""Finding a shortcut without being told (docs/science.md#detection-and-xbl): perturbation scan, carriers, grading, XBL
correction."""
