"""Pure batching functions shared by every model family: length sorting, padding, packing, scattering."""
