"""Per-family vision helpers: frame preprocessing and video prompt layout, exactly as the
family's transformers processor does them (one module per family, e.g. :mod:`.internvl`)."""
