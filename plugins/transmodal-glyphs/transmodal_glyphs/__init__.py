"""transmodal-glyphs: digits and letters rendered from real font families, in four domains with real shifts."""
