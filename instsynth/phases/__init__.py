"""The paper's three phases as plain functions over numpy arrays (no Ray, no models)."""
