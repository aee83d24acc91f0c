"""Pure measurements: tensors in, records out. No Lightning imports here."""
