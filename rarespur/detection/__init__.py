"""Finding a shortcut without being told (SPEC 3): perturbation scan, carriers, grading, XBL correction."""
