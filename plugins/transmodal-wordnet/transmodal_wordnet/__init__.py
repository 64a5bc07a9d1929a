"""transmodal-wordnet: WordNet's definitions and usage sentences as a real text domain shift."""
