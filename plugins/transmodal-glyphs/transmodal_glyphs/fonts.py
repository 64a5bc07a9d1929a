"""The font families of each domain, located inside their installed PyPI packages (no download, no system fonts)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transmodal.errors import DataError

# domain -> (package, font file) pairs. The families are disjoint between domains: a domain's shift is its
# typefaces as much as its rendering conditions.
DOMAIN_FONTS: dict[str, list[tuple[str, str]]] = {
    # Printed forms and labels: humanist and geometric sans-serif families.
    "print": [
        ("font_source_sans_pro", "SourceSansPro-Regular.ttf"),
        ("font_source_sans_pro", "SourceSansPro-Bold.ttf"),
        ("font_lato", "Lato-Regular.ttf"),
        ("font_lato", "Lato-Bold.ttf"),
        ("font_manrope", "Manrope-Regular.ttf"),
        ("font_manrope", "Manrope-Bold.ttf"),
        ("font_hanken_grotesk", "HankenGrotesk-Regular.otf"),
        ("font_hanken_grotesk", "HankenGrotesk-SemiBold.otf"),
    ],
    # Old scanned documents: book serif families, upright and italic.
    "scan": [
        ("font_source_serif_pro", "SourceSerifPro-Regular.ttf"),
        ("font_source_serif_pro", "SourceSerifPro-Semibold.ttf"),
        ("font_source_serif_pro", "SourceSerifPro-It.ttf"),
        ("font_caladea", "Caladea-Regular.ttf"),
        ("font_caladea", "Caladea-Bold.ttf"),
        ("font_caladea", "Caladea-Italic.ttf"),
    ],
    # Notes on ruled paper: hand-drawn families.
    "handwritten": [
        ("font_amatic_sc", "AmaticSC-Regular.ttf"),
        ("font_amatic_sc", "AmaticSC-Bold.ttf"),
        ("font_intuitive", "Intuitive.ttf"),
    ],
    # House numbers and signs photographed: condensed, rounded and heavy display families.
    "signs": [
        ("font_fjallaone", "FjallaOne-Regular.ttf"),
        ("font_fredoka_one", "FredokaOne-Regular.ttf"),
        ("font_rhd", "RedHatDisplay-Black.ttf"),
        ("font_rhd", "RedHatDisplay-BoldItalic.ttf"),
    ],
}


def font_paths(domain: str) -> list[Path]:
    """The font files of ``domain``; a missing font package is named with the command that installs it."""
    paths = []
    for package, filename in DOMAIN_FONTS[domain]:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"glyphs: the font package {package.replace('_', '-')} is not installed; "
                            f"pip install {package.replace('_', '-')} (or reinstall transmodal-glyphs)")
        path = Path(next(iter(spec.submodule_search_locations))) / "files" / filename
        if not path.is_file():
            raise DataError(f"glyphs: {filename} is missing from the installed package {package.replace('_', '-')} "
                            f"({path}); reinstall it")
        paths.append(path)
    return paths
